"""Filtered vector search with the cached selections of ``search/filters.py`` (issue 20): a search
in a category (and below it), by the adult flag, or both, returns the unfiltered search's results
that pass the filter, in the same order with the same scores, on every kind of path (the bitmap
selector, the direct scan of a small set), and still after an update and a delete write a new
generation. An IVF kind whose probed lists hold too few of a filter's listings probes more.
Each filter is computed once per generation."""

from __future__ import annotations

import numpy as np
import pytest

import eclip.search.faiss_store as faiss_store
from eclip.catalog.schema import Listing
from eclip.encode import Embeddings, fuse
from eclip.encode.identity import model_sha256
from eclip.encode.listings import write_embeddings
from eclip.search import SearchIndex, VectorSettings, write_index
from eclip.search.build import index_from_embeddings
from eclip.search.store_types import Where
from eclip.search.write import delete_from_index

N, DIM = 1500, 32
LEAVES = ("Food > Tea", "Food > Coffee", "Food", "Home > Lamps", "Home", "Toys")
FILTERS = [("Food", None), ("Food > Tea", None), ("Home", False), (None, False), (None, True),
           ("Toys", True), ("Nothing", None)]


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _catalog(seed: int, start: int, n: int):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((30, DIM))
    group = rng.integers(0, 30, n)
    image = _unit(centres[group] + 0.7 * rng.standard_normal((n, DIM)))
    text = _unit(centres[group] + 0.7 * rng.standard_normal((n, DIM)))
    listings = [Listing(f"p{start + i:05d}", f"item {start + i}", [],
                        category=LEAVES[int(rng.integers(0, len(LEAVES)))],
                        adult=None if i % 13 == 0 else bool(rng.random() < 0.15))
                for i in range(n)]
    return listings, Embeddings([x.product_id for x in listings], image, text,
                                fuse(image, text, 0.5), 0.5)


def _keeps(hit, category, adult) -> bool:
    own = hit.listing.category or ""
    if category is not None and not (own == category or own.startswith(category + " > ")):
        return False
    if adult is not None and (hit.listing.adult is True) != adult:
        return False
    return True


def _check(index: SearchIndex, queries: np.ndarray) -> int:
    """Filtered = unfiltered then filtered; where an IVF kind's lists probed for the query hold
    fewer than 10 of the filter's listings, the filtered search probes more lists and still
    returns 10 (or all the filter keeps), each kept by the filter, best first. How many did."""
    short = 0
    for q in queries:
        for against in ("image", "both"):
            vector = index.lift(q, against) if against == "both" else q
            everything = index.search(vector, len(index), against=against)
            for category, adult in FILTERS:
                got = index.search(vector, 10, against=against, category=category, adult=adult)
                want = [h for h in everything if _keeps(h, category, adult)][:10]
                kept = len(index.filters.get(Where(category=category, adult=adult)) or [])
                if len(want) < min(10, kept):  # the probed lists held too few: probed wider
                    short += 1
                    assert len(got) == min(10, kept)
                    assert all(_keeps(h, category, adult) for h in got)
                    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
                    continue
                assert [h.listing.vid for h in got] == [h.listing.vid for h in want], \
                    (category, adult)
                np.testing.assert_allclose([h.score for h in got], [h.score for h in want],
                                           rtol=0, atol=1e-6)
    return short


# "bitmap": every filter through the cached FAISS selector; "scan": every filter's vectors scanned
# directly (exactly: so only the exact kind's unfiltered search ranks them the same way)
@pytest.mark.parametrize("kind, path", [("exact", "bitmap"), ("ivf_sq8", "bitmap"),
                                        ("exact", "scan")])
def test_filtered_search_is_the_unfiltered_search_filtered(kind, path, tiny_model_dir, tmp_path,
                                                           monkeypatch):
    monkeypatch.setattr(faiss_store, "SUBSET_SCAN_MAX", 0 if path == "bitmap" else 10**9)
    listings, emb = _catalog(1, 0, N)
    out = tmp_path / "index"
    settings = VectorSettings(kind=kind, nlist=8, recall_queries=50)
    write_index(out, tiny_model_dir, listings, emb, settings=settings, thumbnails=False,
                progress=False)
    queries = _unit(np.random.default_rng(9).standard_normal((3, DIM)))
    index = SearchIndex.open(out)
    short = _check(index, queries)
    assert index.filters.computed == len(FILTERS)  # once per filter, not once per query
    assert (short > 0) == (kind != "exact")  # the IVF run took the wider probe too

    # a new generation: 300 listings replaced (new categories, flags, vectors), 200 added (vids
    # above every earlier one), then 250 deleted (holes in the vids)
    changed, changed_emb = _catalog(2, 1200, 500)
    parts = tmp_path / "update.parquet"
    write_embeddings(changed_emb, parts, model_sha256=model_sha256(tiny_model_dir))
    index_from_embeddings(out, parts, changed, update=True, thumbnails=False, progress=False)
    delete_from_index(out, [f"p{i:05d}" for i in range(0, N + 200, 6)])
    after = SearchIndex.open(out)
    assert after.generation == "g000003" and len(after) == N + 200 - len(range(0, N + 200, 6))
    assert after.filters.computed == 0
    _check(after, queries)


def test_the_cache_keeps_the_most_recently_used_within_its_budget():
    from eclip.search.filters import FilterCache

    calls = []
    shift = {"a": 0, "b": 1, "c": 2}

    def vids_of(where):
        calls.append(where.category)
        return np.arange(shift[where.category], 800, 3, dtype=np.int64)

    size = FilterCache(vids_of, 800).get(Where(category="a")).nbytes
    calls.clear()
    cache = FilterCache(vids_of, 800, max_bytes=2 * size)  # room for two selections
    for name in ("a", "b", "a", "c", "a", "b"):
        selection = cache.get(Where(category=name))
        members = set(selection.vids.tolist())
        assert [bool(selection.selector.is_member(v)) for v in range(805)] == \
            [v in members for v in range(805)]
    # "c" pushed out "b", the least recently used; "a", used again, stayed
    assert calls == ["a", "b", "c", "b"] and cache.computed == 4


def test_a_large_selection_keeps_a_bitmap_only():
    from eclip.search.filters import KEEP_VIDS, Selection

    vids = np.arange(5, 3 * KEEP_VIDS, 2, dtype=np.int64)  # more than KEEP_VIDS
    selection = Selection(vids, 3 * KEEP_VIDS + 1)
    assert len(selection) == len(vids) and selection.nbytes == len(selection.bitmap)
    np.testing.assert_array_equal(selection.vids, vids)  # recomputed from the bitmap
    assert [bool(selection.selector.is_member(v)) for v in (3, 5, 6, 7, 3 * KEEP_VIDS + 9)] == \
        [False, True, False, True, False]
