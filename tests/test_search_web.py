"""The web page end to end in headless Chromium (Playwright): type, upload, browse "more like this".

Needs Debian's chromium at /usr/bin/chromium (``apt-get install chromium``; CI installs it). Outside
CI the test is skipped when it is missing; in CI (``CI=true``) a missing browser fails the test.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from eclip.search.api import create_app
from eclip.search.server import background_server

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the browser test")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tiny_index):
    with background_server(create_app(tiny_index)) as url:
        yield url


def _cards(page) -> list[dict]:
    return page.eval_on_selector_all("#results .card", """cards => cards.map(card => ({
        id: card.dataset.productId,
        title: card.querySelector('.title').textContent,
        category: card.querySelector('.category').textContent,
        score: card.querySelector('.score').textContent,
        same: !card.querySelector('.badge').hidden,
        imageLoaded: card.querySelector('img') !== null
            && card.querySelector('img').complete && card.querySelector('img').naturalWidth > 0,
    }))""")


def _open_page(browser, site):
    """The search page, loaded (its status line counts the listings), and the list its script
    errors are collected in."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(site)
    page.wait_for_function("() => document.getElementById('status').textContent"
                           ".includes('listings')")
    return page, errors


def test_search_upload_and_more_like_this(browser, site, listings, tmp_path):
    page, errors = _open_page(browser, site)
    assert f"{len(listings)} listings" in page.text_content("#status")

    # 1. type a query: a grid of results with photos, titles, categories and scores
    page.fill("#query", listings[0].title)
    page.press("#query", "Enter")
    page.wait_for_selector("#results .card")
    page.wait_for_function("""() => [...document.querySelectorAll('#results .card img')]
                              .every(img => img.complete && img.naturalWidth > 0)""")
    cards = _cards(page)
    assert len(cards) == min(24, len(listings))
    assert all(c["title"] and c["category"] and c["imageLoaded"] for c in cards)
    scores = [float(re.search(r"[-\d.]+$", c["score"]).group()) for c in cards]
    assert scores == sorted(scores, reverse=True)
    assert "results for" in page.text_content("#summary")

    # 2. upload a listing's photo, matched against photos: that listing comes first
    single = next(x for x in listings if len(x.images) == 1)
    page.select_option("#against", "image")
    page.set_input_files("#photo", single.images[0])
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".includes('results for photo')")
    cards = _cards(page)
    assert cards[0]["id"] == single.product_id and cards[0]["score"].endswith("1.000")
    page.wait_for_selector("#classification:not([hidden]) li")
    assert "adult probability" in page.text_content("#classification")

    # 3. "more like this": the product's other listings first, flagged, the product itself absent
    catalog_of = {x.product_id: x.catalog_id for x in listings}
    size = Counter(x.catalog_id for x in listings if x.catalog_id)
    target = next(c for c in cards if size.get(catalog_of[c["id"]], 0) >= 2)
    page.click(f"#results .card[data-product-id='{target['id']}'] .more")
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".startsWith('More like')")
    assert page.text_content("#summary") == f"More like: {target['title']}"
    cards = _cards(page)
    flags = [c["same"] for c in cards]
    assert flags[0] and flags == sorted(flags, reverse=True)
    assert sum(flags) == min(size[catalog_of[target["id"]]] - 1, len(cards))
    assert target["id"] not in {c["id"] for c in cards}

    # 4. a file that is not a photo: the page says why
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    page.set_input_files("#photo", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "not a usable photo" in page.text_content("#error")
    assert errors == []
    page.close()



def test_mode_selector_asks_the_api_for_that_mode(browser, site, listings):
    import httpx

    page, errors = _open_page(browser, site)
    query = listings[3].title
    for mode in ("lexical", "vector", "hybrid"):
        expected = httpx.post(f"{site}/search/text", json={"query": query, "k": 24, "mode": mode}
                              ).json()["results"]
        page.select_option("#mode", mode)
        page.fill("#query", query)
        page.press("#query", "Enter")
        page.wait_for_function(f"() => document.getElementById('summary').textContent"
                               f".includes('({mode},')")
        assert [c["id"] for c in _cards(page)] == [r["product_id"] for r in expected]
    # changing the mode re-runs the query on the page
    page.select_option("#mode", "lexical")
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".includes('(lexical,')")
    assert errors == []
    page.close()


def test_hide_adult_checkbox_reruns_the_query_without_adult_listings(browser, site, listings):
    import httpx

    page, errors = _open_page(browser, site)
    adult_ids = [x.product_id for x in listings if x.adult]
    query = next(x for x in listings if x.adult).title
    shown = ("ids => [...document.querySelectorAll('#results .card')]"
             ".some(card => ids.includes(card.dataset.productId))")
    assert not page.is_checked("#hide-adult")  # unchecked by default: no filter
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_function(shown, arg=adult_ids)  # the adult listing the query names is shown
    # checking the box re-runs the query with adult=false: what the API answers, no adult one
    expected = httpx.post(f"{site}/search/text", json={"query": query, "k": 24, "adult": False}
                          ).json()["results"]
    page.check("#hide-adult")
    page.wait_for_function(f"ids => !({shown})(ids)", arg=adult_ids)
    assert [c["id"] for c in _cards(page)] == [r["product_id"] for r in expected]
    # "more like this" keeps hiding them: what /similar answers with adult=false
    first = _cards(page)[0]["id"]
    similar = httpx.get(f"{site}/similar/{first}", params={"k": 24, "adult": "false"}).json()
    page.click(f"#results .card[data-product-id='{first}'] .more")
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".startsWith('More like')")
    assert [c["id"] for c in _cards(page)] == [r["product_id"] for r in similar["results"]]
    # back to the query, then unchecking re-runs it without the filter
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".includes('results for')")
    assert not page.evaluate(shown, adult_ids)
    unfiltered = httpx.post(f"{site}/search/text", json={"query": query, "k": 24}).json()
    page.uncheck("#hide-adult")
    page.wait_for_function(shown, arg=adult_ids)
    assert [c["id"] for c in _cards(page)] == [r["product_id"] for r in unfiltered["results"]]
    # after a photo search the box re-runs the photo search
    adult = next(x for x in listings if x.adult)
    page.select_option("#against", "image")
    page.set_input_files("#photo", adult.images[0])
    page.wait_for_function("() => document.getElementById('summary').textContent"
                           ".includes('results for photo')")
    assert adult.product_id in {c["id"] for c in _cards(page)}
    page.check("#hide-adult")
    page.wait_for_function(f"ids => !({shown})(ids)", arg=adult_ids)
    assert errors == []
    page.close()


def test_docs_page_renders_with_the_network_blocked(browser, site):
    context = browser.new_context()
    blocked: list[str] = []

    def only_local(route):
        if route.request.url.startswith(site):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{site}/docs")
    page.wait_for_selector(".opblock")  # Swagger UI drew the operations from /openapi.json
    text = page.text_content("body")
    assert "/search/text" in text and "/similar/{product_id}" in text
    assert blocked == []  # nothing was asked of any other host
    context.close()
