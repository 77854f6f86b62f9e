"""Lexical and hybrid search: FTS5 terms for Korean and English, hostile queries, reciprocal-rank
fusion by hand, the lexical index kept in step with writes, and the API's ``mode`` field."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from fastapi.testclient import TestClient

from eclip.catalog.readers import read_catalog
from eclip.catalog.schema import Listing
from eclip.search import SearchIndex, build_index, delete_from_index, update_index
from eclip.search import hybrid, lexical
from eclip.search.api import create_app
from eclip.search.metadata import MetadataStore

HOSTILE = ['"', '""', "*", "a*", "NEAR(", "NEAR(a b", "AND", "OR", "NOT", "a AND", "(", ")",
           "-", "^", ":", "title:", "{title}: x", "'", "\\", "\x00", "   ", "", "🙂", "&amp;",
           '"unterminated', "col:val*", "a OR OR b", "가", "가방\"*"]


def _listing(pid: str, title: str, *, brand=None, category=None, catalog=None) -> Listing:
    return Listing(product_id=pid, title=title, images=[], brand=brand, category=category,
                   catalog_id=catalog)


KOREAN = [
    _listing("k1", "나이키 에어맥스 운동화", brand="나이키", category="Fashion > Shoes"),
    _listing("k2", "나이키에어맥스270 블랙", brand="Nike", category="Fashion > Shoes"),
    _listing("k3", "가죽 가방 브라운", category="Fashion > Bags"),
    _listing("k4", "Nike Air Max 270 Running Shoes", brand="Nike", category="Fashion > Shoes"),
    _listing("k5", "Café crème mug", category="Home > Kitchen"),
    _listing("k6", "무선 이어폰", category="Electronics > Audio"),
]


def _store(tmp_path, listings, tokenizer=lexical.DEFAULT_TOKENIZER) -> MetadataStore:
    store = MetadataStore.create(tmp_path / f"{tokenizer}.sqlite", lexical_tokenizer=tokenizer)
    store.upsert(store.assign_vids([x.product_id for x in listings]), listings,
                 [[] for _ in listings])
    store.commit()
    return store


def _found(store: MetadataStore, query: str, **kwargs) -> list[str]:
    pairs = store.lexical_search(query, 10, **kwargs)
    listings = store.fetch(v for v, _ in pairs)
    return [listings[v].product_id for v, _ in pairs]


# ----------------------------------------------------------------------------- tokenising
def test_bigram_terms_cut_korean_runs_and_keep_latin_words():
    assert lexical.bigram_terms("나이키 에어맥스") == ["나이", "이키", "에어", "어맥", "맥스"]
    assert lexical.bigram_terms("가방") == ["가방"] and lexical.bigram_terms("나") == ["나"]
    # a Korean run glued to Latin letters or digits is still cut at the script change
    assert lexical.bigram_terms("에어맥스270") == ["에어", "어맥", "맥스", "270"]
    assert lexical.bigram_terms("CAFÉ Crème, AJ1-85") == ["cafe", "creme", "aj1", "85"]
    assert lexical.bigram_terms("&quot;Ｎｉｋｅ&quot;") == ["nike"]  # HTML entity, full width
    assert lexical.bigram_terms(None) == [] and lexical.bigram_terms("!!! ★") == []


def test_korean_substring_and_two_syllable_words_are_found(tmp_path):
    store = _store(tmp_path, KOREAN)
    # 에어맥스 inside a title with spaces, and glued into a compound without any
    assert set(_found(store, "에어맥스")) == {"k1", "k2"}
    assert _found(store, "가방") == ["k3"]  # a two-syllable word (trigram cannot look it up)
    assert _found(store, "이어폰") == ["k6"]
    # English: case and accents do not matter; more shared words rank higher
    assert _found(store, "NIKE air max")[0] == "k4"
    assert _found(store, "cafe creme") == ["k5"]
    # brand and category are indexed too
    assert set(_found(store, "nike")) == {"k2", "k4"}
    assert set(_found(store, "bags")) == {"k3"}
    assert _found(store, "zzzz") == []


def test_english_words_are_stemmed_and_korean_bigrams_stay(tmp_path):
    store = _store(tmp_path, [_listing("s1", "Leather shoe for running"),
                              _listing("s2", "Cotton socks"), *KOREAN])
    assert set(_found(store, "shoes")) == {"s1", "k1", "k2", "k4"}  # k1, k2: "Fashion > Shoes"
    assert set(_found(store, "shoe")) == {"s1", "k1", "k2", "k4"}  # stemmed on both sides
    assert set(_found(store, "runs")) == {"s1", "k4"}  # running, Running -> run; runs -> run
    assert _found(store, "sock") == ["s2"]
    assert set(_found(store, "에어맥스")) == {"k1", "k2"} and _found(store, "가방") == ["k3"]
    unstemmed = _store(tmp_path, [_listing("s1", "Leather shoe")], "unicode61")
    assert _found(unstemmed, "shoes") == []  # what stemming changes


def test_stock_tokenizers_show_why_bigram_is_the_default(tmp_path):
    unicode61 = _store(tmp_path, KOREAN, "unicode61")
    trigram = _store(tmp_path, KOREAN, "trigram")
    assert _found(unicode61, "에어맥스") == ["k1"]  # misses the compound 나이키에어맥스270
    assert set(_found(trigram, "에어맥스")) == {"k1", "k2"}
    assert _found(trigram, "가방") == []  # under three characters: no trigram to look up
    assert _found(unicode61, "가방") == ["k3"]


@pytest.mark.parametrize("tokenizer", lexical.TOKENIZERS)
def test_hostile_queries_never_raise(tmp_path, tokenizer):
    store = _store(tmp_path, KOREAN, tokenizer)
    for query in HOSTILE:
        found = store.lexical_search(query, 5)  # no sqlite3.OperationalError (FTS5 syntax)
        assert isinstance(found, list)
    assert store.lexical_search("", 5) == [] and store.lexical_search("NEAR(", 5) == []
    # the words of FTS5's syntax are searched as words
    (tmp_path / "odd").mkdir()
    odd = _store(tmp_path / "odd", [_listing("n1", "NEAR AND OR NOT pen")], tokenizer)
    assert _found(odd, "near") == ["n1"] and _found(odd, 'NOT "pen"') == ["n1"]


def test_unknown_tokenizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown lexical tokenizer 'icu'"):
        MetadataStore.create(tmp_path / "x.sqlite", lexical_tokenizer="icu")


# ----------------------------------------------------------------------------------- fusion
def test_rrf_on_a_hand_computed_case():
    # list A: 1, 2, 3; list B: 3, 1, 4   (k = 60)
    fused = dict(hybrid.rrf([[1, 2, 3], [3, 1, 4]], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62) and fused[4] == pytest.approx(1 / 63)
    assert [i for i, _ in hybrid.rrf([[1, 2, 3], [3, 1, 4]], k=60)] == [1, 3, 2, 4]
    # weights scale each list's votes; a tie goes to the better best rank, then the earlier list
    weighted = hybrid.rrf([[1, 2], [2, 1]], k=0, weights=[2.0, 1.0])
    assert weighted == [(1, pytest.approx(2 / 1 + 1 / 2)), (2, pytest.approx(2 / 2 + 1 / 1))]
    assert [i for i, _ in hybrid.rrf([[5], [7]], k=60)] == [5, 7]
    assert hybrid.rrf([[], []]) == []
    with pytest.raises(ValueError, match="2 rankings but 1 weights"):
        hybrid.rrf([[1], [2]], weights=[1.0])
    with pytest.raises(ValueError, match="depth"):
        hybrid.Fusion(depth=0)


# ----------------------------------------------------------------------------- store writes
def test_lexical_index_follows_upsert_and_delete(tmp_path):
    store = _store(tmp_path, KOREAN)
    vid = store.vids_of(["k3"])["k3"]
    store.upsert([vid], [_listing("k3", "캔버스 토트백", category="Fashion > Bags")], [[]])
    store.delete(store.assign_vids(["k6"]))
    store.commit()
    assert _found(store, "가방") == [] and _found(store, "토트백") == ["k3"]
    assert _found(store, "이어폰") == []
    count = store._conn.execute(f"SELECT COUNT(*) FROM {lexical.TABLE}").fetchone()[0]
    assert count == store.count() == len(KOREAN) - 1


def test_a_store_without_lexical_index_gets_one_when_copied(tmp_path):
    store = _store(tmp_path, KOREAN)
    store._conn.execute(f"DROP TABLE {lexical.TABLE}")
    store._conn.execute("DELETE FROM meta WHERE key = 'lexical_tokenizer'")
    store.commit()
    store.close()
    old = MetadataStore(tmp_path / "bigram.sqlite")
    assert old.lexical_tokenizer is None
    with pytest.raises(LookupError, match="no lexical index"):
        old.lexical_search("가방", 5)
    copied = MetadataStore.copy(tmp_path / "bigram.sqlite", tmp_path / "copy.sqlite")
    assert copied.lexical_tokenizer == "bigram" and _found(copied, "가방") == ["k3"]


# ------------------------------------------------------------------------ index and service
@pytest.fixture(scope="module")
def listings(tiny_catalog):
    base = read_catalog(tiny_catalog).listings
    photo = base[0].images
    extra = [dataclasses.replace(x, images=photo, catalog_id=None) for x in KOREAN[:3]]
    return base[:40] + extra


@pytest.fixture(scope="module")
def index_dir(tiny_model_dir, listings, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid") / "index"
    build_index(tiny_model_dir, listings, out, progress=False)
    return out


@pytest.fixture(scope="module")
def client(index_dir):
    return TestClient(create_app(index_dir))


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["product_id"] for r in response.json()["results"]]


def test_modes_through_the_api(client, index_dir, listings):
    index = SearchIndex.open(index_dir)
    query = listings[5].title
    vector = [h.listing.product_id for h in index.search_text(query, 10)]
    assert _ids(client.post("/search/text", json={"query": query, "mode": "vector"})) == vector
    lexical_ids = _ids(client.post("/search/text", json={"query": "에어맥스", "mode": "lexical"}))
    assert set(lexical_ids) == {"k1", "k2"}
    # hybrid = RRF of the two lists as the index and the store rank them
    depth = hybrid.DEPTH
    words = [v for v, _ in index.store.lexical_search(query, depth)]
    vids = [h.listing.vid for h in index.search_text(query, depth)]
    expected = [vid for vid, _ in hybrid.rrf([vids, words], k=hybrid.RRF_K,
                                               weights=hybrid.WEIGHTS)][:10]
    answer = client.post("/search/text", json={"query": query, "mode": "hybrid"}).json()
    by_pid = index.store.vids_of([r["product_id"] for r in answer["results"]])
    assert [by_pid[r["product_id"]] for r in answer["results"]] == expected
    assert answer["mode"] == "hybrid"
    default = client.post("/search/text", json={"query": query}).json()
    assert default["mode"] == hybrid.DEFAULT_MODE
    index.close()


def test_bad_mode_is_a_422_naming_the_field(client):
    response = client.post("/search/text", json={"query": "pen", "mode": "fuzzy"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "mode"


@pytest.mark.parametrize("mode", hybrid.MODES)
def test_category_filter_applies_in_every_mode(client, listings, mode):
    top = listings[0].top_category
    results = client.post("/search/text", json={"query": listings[0].title, "k": 100,
                                                "category": top, "mode": mode}).json()["results"]
    assert results and all(r["category"].startswith(top + " > ") for r in results)
    outside = client.post("/search/text", json={"query": "에어맥스", "mode": mode,
                                                "category": top}).json()["results"]
    assert {"k1", "k2"}.isdisjoint(r["product_id"] for r in outside)


@pytest.mark.parametrize("query", HOSTILE[:12] + ["가방\"*", "NEAR(가방"])
def test_hostile_queries_through_the_api(client, query):
    response = client.post("/search/text", json={"query": query or "x", "mode": "hybrid"})
    assert response.status_code in (200, 422)  # 422 only for a query that strips to nothing
    if not query.strip():
        assert response.status_code == 422
    else:
        assert response.status_code == 200


def test_writes_keep_the_lexical_index_in_step(tiny_model_dir, listings, tmp_path):
    out = tmp_path / "index"
    build_index(tiny_model_dir, listings[:6], out, progress=False)
    renamed = dataclasses.replace(listings[2], title="무선 이어폰 화이트")
    added = dataclasses.replace(listings[6], title="캠핑 의자 접이식")
    update_index(out, [renamed, added], progress=False)
    delete_from_index(out, [listings[3].product_id])
    index = SearchIndex.open(out)
    found = hybrid.search_text(index, "이어폰", 5, mode="lexical")
    assert [h.listing.product_id for h in found] == [listings[2].product_id]
    assert [h.listing.product_id for h in hybrid.search_text(index, "의자", 5, mode="lexical")] \
        == [listings[6].product_id]
    old_words = listings[3].title
    assert listings[3].product_id not in {
        h.listing.product_id for h in hybrid.search_text(index, old_words, 10, mode="lexical")}
    rows = index.store._query(f"SELECT rowid FROM {lexical.TABLE} ORDER BY rowid")
    assert [r[0] for r in rows] == sorted(index.vids.tolist())  # one row per listing, same ids
    index.close()


def test_an_index_without_lexical_table_serves_vector_by_default(tiny_model_dir, listings,
                                                                   tmp_path):
    out = tmp_path / "index"
    build_index(tiny_model_dir, listings[:6], out, progress=False)
    db = next(out.glob("g*/listings.sqlite"))
    conn = sqlite3.connect(db)
    conn.execute(f"DROP TABLE {lexical.TABLE}")
    conn.execute("DELETE FROM meta WHERE key = 'lexical_tokenizer'")
    conn.commit()
    conn.close()
    client = TestClient(create_app(out))
    answer = client.post("/search/text", json={"query": listings[0].title})
    assert answer.status_code == 200 and answer.json()["mode"] == "vector"
    refused = client.post("/search/text", json={"query": "pen", "mode": "lexical"})
    assert refused.status_code == 409 and "no lexical index" in refused.json()["detail"]


def test_docs_page_links_only_its_own_assets(client):
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    links = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls = re.findall(r"""url: *["']([^"']+)["']""", page.text)
    assert links and all(link.startswith("/") for link in links + urls), links + urls
    for link in links:
        assert client.get(link).status_code == 200, link
    assert client.get("/redoc").status_code == 404  # no second page that needs a CDN


# ------------------------------------------------------------- catalog and adult filters in SQL
FLAGGED = [dataclasses.replace(KOREAN[0], catalog_id="c1", adult=True),
           dataclasses.replace(KOREAN[1], catalog_id="c1", adult=False),
           dataclasses.replace(KOREAN[3], catalog_id="c2"),  # adult flag unknown
           dataclasses.replace(KOREAN[2], catalog_id="c2", adult=False)]


def test_lexical_search_filters_catalog_and_adult_in_sql(tmp_path):
    store = _store(tmp_path, FLAGGED)
    assert set(_found(store, "nike 에어맥스")) == {"k1", "k2", "k4"}
    assert set(_found(store, "nike 에어맥스", catalog_id="c1")) == {"k1", "k2"}
    assert _found(store, "nike 에어맥스", catalog_id="c2") == ["k4"]
    assert _found(store, "nike 에어맥스", catalog_id="c9") == []
    # adult=False hides the flagged listing and keeps the one whose flag is unknown
    assert set(_found(store, "nike 에어맥스", adult=False)) == {"k2", "k4"}
    assert _found(store, "nike 에어맥스", adult=True) == ["k1"]
    assert _found(store, "nike 에어맥스", catalog_id="c1", adult=False) == ["k2"]
    assert _found(store, "nike 에어맥스", category="Fashion > Bags", catalog_id="c2") == []
    assert _found(store, "가방", category="Fashion", catalog_id="c2", adult=False) == ["k3"]
    # a filter only removes rows: the rest keep their scores and order
    everything = store.lexical_search("nike 에어맥스 가방", 10)
    flags = {v: x.adult for v, x in store.fetch(v for v, _ in everything).items()}
    assert store.lexical_search("nike 에어맥스 가방", 10, adult=False) == [
        (v, s) for v, s in everything if flags[v] is not True]
    for query in HOSTILE:  # filters never turn a hostile query into an SQL error
        assert isinstance(store.lexical_search(query, 5, catalog_id="c1", adult=False), list)
    assert lexical.search_sql(False).count("JOIN") == 0  # no filter: the FTS table alone


@pytest.mark.parametrize("mode", hybrid.MODES)
def test_unknown_adult_flags_are_kept_by_safe_search(client, index_dir, mode):
    """The Korean listings of the index carry no adult flag: adult=false keeps them, true hides."""
    def ask(**filters):
        return _ids(client.post("/search/text", json={"query": "에어맥스 가방", "k": 50,
                                                      "mode": mode, **filters}))

    plain, safe, only = ask(), ask(adult=False), ask(adult=True)
    index = SearchIndex.open(index_dir)
    flags = {x.product_id: x.adult for x in index.store.fetch(index.vids.tolist()).values()}
    index.close()
    assert {"k1", "k2", "k3"} <= set(safe)
    assert {"k1", "k2", "k3"}.isdisjoint(only) and all(flags[p] is True for p in only)
    assert all(flags[p] is not True for p in safe)
    if mode == "lexical":  # one ranked list: filtering only leaves the flagged listings out
        kept = [p for p in plain if flags[p] is not True]
        assert kept == safe[:len(kept)]
