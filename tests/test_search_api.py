"""The search API over HTTP semantics (FastAPI TestClient): answers, validation, limits, files."""

from __future__ import annotations

import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from eclip.search import SearchIndex, build_index, delete_from_index
from eclip.search.api import create_app
from eclip.search.evaluate import recall_through_api
from eclip.search.heads import vote_categories


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def index_dir(request, tiny_model_dir, listings, tmp_path_factory):
    """The same index with its vectors in each store: FAISS files, Milvus Lite (milvus.db)."""
    from eclip.search.store_types import StoreSpec

    if request.param == "milvus":
        milvus = pytest.importorskip("eclip.search.milvus")
        pytest.importorskip("milvus_lite")
        request.addfinalizer(milvus.close_all)  # its Milvus Lite servers stop with the fixture
    if request.param == "faiss":
        return request.getfixturevalue("tiny_index")
    out = tmp_path_factory.mktemp(f"search_api_{request.param}") / "index"
    build_index(tiny_model_dir, listings, out, progress=False, store=StoreSpec(request.param))
    return out


@pytest.fixture(scope="module")
def client(index_dir):
    return TestClient(create_app(index_dir, max_upload_bytes=200_000))


def _png(size=(40, 30), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_schema(client, listings):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["listings"] == len(listings)
    assert health["generation"] == "g000001" and "exact" in health["vectors"]["product"]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/search/text", "/search/image", "/similar/{product_id}", "/classify", "/health"):
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and "eclip product search" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_text_search_answers_ranked_results_with_links(client, listings):
    response = client.post("/search/text", json={"query": listings[0].title, "k": 7})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 7
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = results[0]
    assert set(first) >= {"product_id", "title", "category", "score", "image_url"}
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size[0] > 0


def test_category_filter_through_the_api(client, listings):
    top = listings[0].top_category
    results = client.post("/search/text", json={"query": "x", "k": 100, "category": top}
                          ).json()["results"]
    assert results and all(r["category"].startswith(top + " > ") for r in results)
    assert len(results) == sum(x.top_category == top for x in listings)


def test_photo_search_finds_the_listing_of_the_photo(client, listings):
    single = next(x for x in listings if len(x.images) == 1)
    with open(single.images[0], "rb") as handle:
        response = client.post("/search/image", files={"file": ("photo.jpg", handle)},
                               data={"k": "3", "against": "image"})
    assert response.status_code == 200
    top = response.json()["results"][0]
    assert top["product_id"] == single.product_id and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_similar_and_its_errors(client, listings):
    item = listings[0]
    body = client.get(f"/similar/{item.product_id}", params={"k": 5}).json()
    assert body["product"]["product_id"] == item.product_id
    flags = [r["same_catalog"] for r in body["results"]]
    assert flags == sorted(flags, reverse=True) and len(flags) == 5
    assert item.product_id not in {r["product_id"] for r in body["results"]}
    assert client.get("/similar/nope").status_code == 404
    assert client.get("/similar/p1", params={"k": 1000}).status_code == 422


@pytest.mark.parametrize("path", ["/images/..%2F..%2F..%2Fetc%2Fpasswd", "/images/../../etc/passwd",
                                  "/images/%2Fetc%2Fpasswd", "/static/..%2F..%2Fsearch%2Findex.py",
                                  "/images/p000000?n=99", "/similar/..%2Fg000001%2Finfo.json"])
def test_no_request_reads_files_outside_the_index(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert b"root:" not in response.content and b"import" not in response.content


def test_malformed_bodies_get_clear_4xx(client):
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}),
         "malformed JSON"),
        (dict(json={"k": 3}), "query: Field required"),
        (dict(json={"query": "   "}), "query: String should have at least 1 character"),
        (dict(json={"query": "x", "k": 0}), "k: Input should be greater than or equal to 1"),
        (dict(json={"query": "x", "against": "smell"}), "against: Input should be"),
        (dict(json={"query": "x", "extra": 1}), "extra: Extra inputs are not permitted"),
        (dict(json=["query"]), "send a JSON object"),
    ]
    for kwargs, message in cases:
        response = client.post("/search/text", **kwargs)
        assert response.status_code == 422, kwargs
        assert message in response.json()["detail"], response.json()


def test_uploads_that_are_not_photos_are_refused(client):
    answers = {
        "text": client.post("/search/image", files={"file": ("a.jpg", b"hello, not a photo")}),
        "truncated": client.post("/search/image", files={"file": ("a.png", _png()[:60])}),
        "empty": client.post("/search/image", files={"file": ("a.png", b"")}),
        "missing": client.post("/search/image", data={"k": "3"}),
    }
    assert answers["text"].status_code == 415
    assert "not a usable photo: not an image file" in answers["text"].json()["detail"]
    assert answers["truncated"].status_code == 422
    assert "truncated" in answers["truncated"].json()["detail"]
    assert answers["empty"].status_code == 422 and "empty" in answers["empty"].json()["detail"]
    assert answers["missing"].status_code == 422 and "file" in answers["missing"].json()["detail"]
    assert "/tmp" not in answers["text"].json()["detail"]  # no server paths in messages


def test_oversize_bodies_get_413_announced_or_not(client):
    big = b"\xff\xd8" + b"x" * 300_000
    assert client.post("/search/image", files={"file": ("big.jpg", big)}).status_code == 413

    def chunks():  # no Content-Length: the guard counts while reading
        for _ in range(10):
            yield b"y" * 65_536

    response = client.post("/search/image", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=zz"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]
    response = client.post("/search/text", content=b"{" + b" " * 70_000 + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_classify_by_title_photo_or_both(client, listings):
    single = listings[0]
    photo = open(single.images[0], "rb").read()
    by_title = client.post("/classify", data={"title": single.title, "top": "3"}).json()
    by_photo = client.post("/classify", files={"file": ("p.jpg", photo)}).json()
    both = client.post("/classify", data={"title": single.title},
                       files={"file": ("p.jpg", photo)}).json()
    assert (by_title["input"], by_photo["input"], both["input"]) == ("text", "image", "both")
    assert len(by_title["categories"]) == 3
    for body in (by_title, by_photo, both):
        scores = [c["score"] for c in body["categories"]]
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-9
        assert 0.0 < body["adult_probability"] < 1.0
    none = client.post("/classify", data={"title": "  "})
    assert none.status_code == 422 and "title, a photo" in none.json()["detail"]


def test_recall_through_the_api_equals_the_index_ranking(client, index_dir, listings):
    """R@10 measured over HTTP is the one the stored vectors give (no loss in the API layer)."""
    test = [x for x in listings if x.split == "test"]
    assert test
    (text,) = recall_through_api(client, test, listings, k=10, modes=(("text", "text"),))
    assert text.errors == 0 and text.queries == len(test)
    index = SearchIndex.open(index_dir)
    vectors = np.asarray(index.vectors["text"])
    groups = {x.product_id: x.group_id for x in listings}
    by_vid = index.store.fetch(index.vids.tolist())
    hits = 0
    for x in test:  # the query listing itself is left out of what is scored
        ranked = [by_vid[int(index.vids[i])].product_id
                  for i in np.argsort(-(vectors @ index.encode_text(x.title)))]
        top = [p for p in ranked if p != x.product_id][:10]
        hits += any(groups[p] == x.group_id for p in top)
    assert text.recall == pytest.approx(hits / len(test))


def test_the_api_evaluation_leaves_the_query_listing_out(client, index_dir, listings):
    """An index that holds the queries must not answer for them (issue 14, item 8)."""
    from eclip.search.evaluate import classify_through_api

    queries = [x for x in listings if x.split == "test"][:3]

    class Echo:  # a service that answers each query (in order) with the query listing itself first
        order = iter(queries)

        def post(self, path, json=None, data=None, files=None):
            query = next(self.order)
            results = [{"product_id": query.product_id, "catalog_id": query.catalog_id}] + [
                {"product_id": x.product_id, "catalog_id": x.catalog_id}
                for x in listings if x.group_id != query.group_id][:3]
            return SimpleNamespace(status_code=200, json=lambda: {"results": results})

    (text,) = recall_through_api(Echo(), queries, listings, k=10, modes=(("text", "text"),))
    assert text.recall == 0.0 and text.recall_others == 0.0  # itself is no hit

    single = listings[0]
    vote = client.post("/classify", data={"title": single.title, "top": "20"}).json()
    left_out = client.post("/classify", data={"title": single.title, "top": "20",
                                              "exclude": single.product_id}).json()
    # the vote of the 20 nearest titles, and of the 20 nearest once the listing itself is gone:
    # the same neighbours but the listing, and one more
    index = SearchIndex.open(index_dir)
    try:
        hits = index.search(index.encode_text(single.title), 21, against="text")
        scale = float(index.model.logit_scale().detach())
    finally:
        index.close()
    assert single.product_id in [h.listing.product_id for h in hits[:20]]

    def expected(neighbours):
        return [{"category": c, "score": pytest.approx(v, abs=1e-6)} for c, v in vote_categories(
            np.asarray([h.score for h in neighbours]), [h.listing.category for h in neighbours],
            scale, 20)]

    assert vote["categories"] == expected(hits[:20])
    assert left_out["categories"] == expected(
        [h for h in hits if h.listing.product_id != single.product_id][:20])
    assert left_out["categories"] != vote["categories"]
    assert client.post("/classify", data={"title": single.title,
                                          "exclude": "no-such-id"}).status_code == 200
    (by_text, _, _) = classify_through_api(client, queries)
    assert by_text.errors == 0 and by_text.queries == len(queries)


def test_the_service_follows_a_new_generation(index_dir, listings, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    client = TestClient(create_app(copy, check_every=0.0, warm=False))
    gone = listings[4].product_id
    assert client.get(f"/similar/{gone}").status_code == 200
    delete_from_index(copy, [gone])
    assert client.get("/health").json()["generation"] == "g000002"
    assert client.get(f"/similar/{gone}").status_code == 404
    assert client.get(f"/images/{gone}").status_code == 404


# ------------------------------------------------------------ catalog and adult filters (issue 13)
@pytest.fixture(scope="module")
def reference(index_dir):
    """The index opened beside the service, to compute what a filtered search must answer."""
    index = SearchIndex.open(index_dir)
    yield index
    index.close()


def _keeps(listing, *, catalog_id=None, adult=None) -> bool:
    """What the filters keep, written out by hand (adult=False keeps unknown flags)."""
    if catalog_id is not None and listing.catalog_id != catalog_id:
        return False
    if adult is not None and bool(listing.adult) != adult:
        return False
    return True


def _brute_force(index, vector, k, against, **filters) -> list[tuple[str, float]]:
    """Every stored vector scored with numpy, the filter applied afterwards: (product_id, score)."""
    from eclip.search.index import AGAINST

    scores = np.asarray(index.vectors[AGAINST[against]]) @ vector
    by_vid = index.store.fetch(index.vids.tolist())
    ranked = [(by_vid[int(index.vids[i])], float(scores[i])) for i in np.argsort(-scores)]
    return [(x.product_id, s) for x, s in ranked if _keeps(x, **filters)][:k]


def _assert_same_ranking(results, expected):
    """Equal scores rank by rank, each as the brute force scores it (ties may swap)."""
    assert [r["score"] for r in results] == pytest.approx([s for _, s in expected], abs=1e-4)
    score_of = dict(expected)
    for r in results:
        assert r["product_id"] in score_of and score_of[r["product_id"]] == pytest.approx(
            r["score"], abs=1e-4)


def _filter_id(filters: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in filters.items())


FILTERS = [{"adult": False}, {"adult": True}, {"catalog_id": "c00008"},
           {"catalog_id": "c00005", "adult": False}]


@pytest.mark.parametrize("filters", FILTERS, ids=_filter_id)
def test_vector_text_search_filters_equal_a_brute_force(client, reference, listings, filters):
    query = listings[32].title
    body = client.post("/search/text", json={"query": query, "k": 100, "mode": "vector",
                                             "against": "both", **filters}).json()
    results = body["results"]
    by_pid = {x.product_id: x for x in listings}
    assert results and all(_keeps(by_pid[r["product_id"]], **filters) for r in results)
    assert len(results) == min(100, sum(_keeps(x, **filters) for x in listings))
    vector = reference.lift(reference.encode_text(query), "both")
    _assert_same_ranking(results, _brute_force(reference, vector, 100, "both", **filters))


@pytest.mark.parametrize("mode", ["lexical", "hybrid"])
@pytest.mark.parametrize("filters", FILTERS, ids=_filter_id)
def test_lexical_and_hybrid_filters_equal_the_index_search(client, reference, listings, mode,
                                                            filters):
    from eclip.search import hybrid

    query = f"{listings[32].title} {listings[0].title} drink pen"
    results = client.post("/search/text", json={"query": query, "k": 20, "mode": mode,
                                                **filters}).json()["results"]
    by_pid = {x.product_id: x for x in listings}
    assert results and all(_keeps(by_pid[r["product_id"]], **filters) for r in results)
    # the lexical list filtered in SQL == the unfiltered list filtered afterwards
    everything = reference.store.lexical_search(query, len(listings))
    stored = reference.store.fetch(v for v, _ in everything)
    words = [v for v, _ in everything if _keeps(stored[v], **filters)]
    assert [v for v, _ in reference.store.lexical_search(query, 1000, **filters)] == words
    if mode == "lexical":
        expected = words[:20]
    else:  # RRF of the two filtered lists, as the index ranks them
        vids = [h.listing.vid for h in reference.search(
            reference.encode_text(query), hybrid.DEPTH, against="text", **filters)]
        expected = [v for v, _ in hybrid.rrf([vids, words[:hybrid.DEPTH]], k=hybrid.RRF_K,
                                             weights=hybrid.WEIGHTS)][:20]
    vid_of = reference.store.vids_of([r["product_id"] for r in results])
    assert [vid_of[r["product_id"]] for r in results] == expected


def test_photo_search_filters(client, reference, listings):
    adult = next(x for x in listings if x.adult and x.catalog_id)
    photo = open(adult.images[0], "rb").read()
    answers = {}
    for name, data in {"none": {}, "safe": {"adult": "false"}, "only": {"adult": "true"},
                       "catalog": {"catalog_id": adult.catalog_id},
                       "empty": {"adult": "", "catalog_id": ""}}.items():
        response = client.post("/search/image", files={"file": ("p.jpg", photo)},
                               data={"k": "100", "against": "image", **data})
        assert response.status_code == 200, response.text
        answers[name] = response.json()["results"]
    ids = {name: [r["product_id"] for r in results] for name, results in answers.items()}
    assert adult.product_id in ids["none"] and ids["empty"] == ids["none"]  # "" = no filter
    assert adult.product_id not in ids["safe"]
    assert all(r["adult"] is not True for r in answers["safe"])
    assert all(r["adult"] is True for r in answers["only"])
    assert len(ids["only"]) == sum(bool(x.adult) for x in listings)
    assert len(ids["safe"]) == min(100, len(listings) - len(ids["only"]))
    assert {r["catalog_id"] for r in answers["catalog"]} == {adult.catalog_id}
    from eclip.catalog.images import load_image

    vector = reference.encode_image(load_image(adult.images[0]))
    _assert_same_ranking(answers["safe"], _brute_force(reference, vector, 100, "image",
                                                       adult=False))
    _assert_same_ranking(answers["catalog"], _brute_force(reference, vector, 100, "image",
                                                          catalog_id=adult.catalog_id))


def test_similar_hides_or_keeps_adult_listings(client, listings):
    adult = next(x for x in listings if x.adult and x.catalog_id)
    n_adult = sum(bool(x.adult) for x in listings)
    plain = client.get(f"/similar/{adult.product_id}", params={"k": 100}).json()["results"]
    safe = client.get(f"/similar/{adult.product_id}", params={"k": 100, "adult": "false"}
                      ).json()
    only = client.get(f"/similar/{adult.product_id}", params={"k": 100, "adult": "true"}).json()
    assert safe["product"]["product_id"] == adult.product_id  # the product itself is answered
    assert len(plain) == min(100, len(listings) - 1)
    kept = [r for r in plain if r["adult"] is not True]  # the same ranking, adult ones left out
    assert kept == safe["results"][:len(kept)]
    assert all(r["adult"] is not True for r in safe["results"])
    assert len(safe["results"]) == min(100, len(listings) - n_adult)
    # only adult: its catalog's other (adult) listings first, then the other adult listings
    assert len(only["results"]) == n_adult - 1 and all(r["adult"] for r in only["results"])
    same = [r["same_catalog"] for r in only["results"]]
    mates = sum(x.catalog_id == adult.catalog_id and x.adult for x in listings) - 1
    assert same == [True] * mates + [False] * (n_adult - 1 - mates)


@pytest.mark.parametrize("request_kwargs, field", [
    (dict(json={"query": "x", "adult": "maybe"}), "adult"),
    (dict(json={"query": "x", "adult": [False]}), "adult"),
    (dict(json={"query": "x", "catalog_id": ""}), "catalog_id"),
    (dict(json={"query": "x", "catalog_id": 5}), "catalog_id"),
    (dict(json={"query": "x", "catalog_id": "c" * 501}), "catalog_id"),
])
def test_bad_filter_values_in_json_are_422_naming_the_field(client, request_kwargs, field):
    response = client.post("/search/text", **request_kwargs)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert response.json()["detail"].startswith(f"invalid request: {field}: ")


def test_bad_filter_values_in_forms_and_queries_are_422_naming_the_field(client, listings):
    photo = open(listings[0].images[0], "rb").read()
    for data, field in (({"adult": "maybe"}, "adult"), ({"catalog_id": "c" * 501}, "catalog_id")):
        response = client.post("/search/image", files={"file": ("p.jpg", photo)}, data=data)
        assert response.status_code == 422, data
        assert [e["field"] for e in response.json()["errors"]] == [field]
    response = client.get(f"/similar/{listings[0].product_id}", params={"adult": "maybe"})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["adult"]


def test_results_show_the_cleaned_title_and_keep_the_raw_one(client, listings):
    from eclip.catalog.text import basic_normalize
    from eclip.search.api import _listing_out
    from eclip.search.metadata import StoredListing

    raw = "Hanbit&nbsp;Orange &quot;tanabata tree&quot; ＮＩＫＥ"
    stored = StoredListing(1, "p", raw, None, None, None, {}, None, None, None, ())
    shown = _listing_out(stored)
    assert shown["title"] == 'Hanbit Orange "tanabata tree" NIKE' and shown["raw_title"] == raw
    by_id = {x.product_id: x.title for x in listings}
    results = client.post("/search/text", json={"query": listings[0].title, "k": 10}).json()["results"]
    assert results and all(r["raw_title"] == by_id[r["product_id"]]
                           and r["title"] == basic_normalize(r["raw_title"]) for r in results)


def test_uploads_are_decoded_under_the_index_max_pixels(tiny_model_dir, listings, tmp_path):
    """An index built with data.max_pixels=2000 decodes uploads under that limit: a photo above it
    is reduced and answered, one too large to decode at all is a 422 naming the limit."""
    from eclip.catalog.images import DECODE_FACTOR

    out = tmp_path / "small"
    info = build_index(tiny_model_dir, listings[:8], out, progress=False, thumbnails=False,
                       max_pixels=2000)
    assert info.max_pixels == 2000 and SearchIndex.open(out).info.max_pixels == 2000
    small = TestClient(create_app(out, warm=False))
    reduced = small.post("/search/image", files={"file": ("a.png", _png((60, 60)), "image/png")})
    assert reduced.status_code == 200 and len(reduced.json()["results"]) == 8
    side = int((DECODE_FACTOR * 2000) ** 0.5) + 10  # decoding it takes over 4 x max_pixels
    for path, extra in (("/search/image", {}), ("/classify", {"data": {"title": "a pen"}})):
        refused = small.post(path, files={"file": ("big.png", _png((side, side)), "image/png")},
                             **extra)
        assert refused.status_code == 422, path
        assert "too large" in refused.json()["detail"] and "max_pixels=2000" in \
            refused.json()["detail"]
    # a larger service cap does not lift the index's own limit
    loose = TestClient(create_app(out, warm=False, max_upload_pixels=10**8))
    assert loose.post("/search/image", files={"file": ("big.png", _png((side, side)),
                                                         "image/png")}).status_code == 422


@pytest.fixture(scope="module")
def faiss_client(tiny_index):
    from fastapi.testclient import TestClient

    from eclip.search.api import create_app

    return TestClient(create_app(tiny_index))


def test_a_deeply_nested_body_is_422(faiss_client):
    for depth in (20_000, 2_000):
        body = '{"query": "pen", "k": ' + "[" * depth + "]" * depth + "}"
        answer = faiss_client.post("/search/text", content=body,
                             headers={"content-type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert "nested too deeply" in answer.json()["detail"]
        assert answer.json()["errors"][0]["field"] == "body"


def test_a_json_body_without_a_content_type_is_accepted(faiss_client):
    body = json.dumps({"query": "a pen", "k": 2}).encode()
    answer = faiss_client.post("/search/text", content=body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 2
    answer = faiss_client.post("/search/text", content=body, headers={"content-type": "text/plain"})
    assert answer.status_code == 422
    assert "sent as text/plain, not as JSON" in answer.json()["detail"]
    assert "Content-Type: application/json" in answer.json()["detail"]
    answer = faiss_client.post("/search/text", content=b"[1, 2]",
                         headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "send a JSON object" in answer.json()["detail"]


def test_the_body_limit_still_holds_for_json_endpoints(faiss_client):
    answer = faiss_client.post("/search/text", content=b'{"query": "' + b"x" * 70_000 + b'"}',
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413
