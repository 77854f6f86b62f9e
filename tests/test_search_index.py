"""The search index: exact results, filters, product matching, incremental writes, atomic swaps."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from eclip.catalog.images import load_image
from eclip.cli import main
from eclip.errors import EclipError
from eclip.search import (LiveIndex, SearchIndex, SearchIndexError, VectorSettings, build_index,
                          delete_from_index, update_index)
from eclip.search.vectors import VectorIndex, exact_top_scores, recall_against

from files import assert_one_line


@pytest.fixture
def index_copy(tiny_index, tmp_path):
    """A private copy of the built index, for tests that write to it."""
    out = tmp_path / "index"
    shutil.copytree(tiny_index, out)
    return out


def _generations(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("g"))


def test_build_is_self_contained_and_finds_a_listing_by_its_own_photo(tiny_index, listings):
    index = SearchIndex.open(tiny_index)
    assert index.generation == "g000001" and len(index) == len(listings)
    assert json.loads((tiny_index / "CURRENT").read_text())["generation"] == "g000001"
    assert (tiny_index / "g000001" / "model" / "model.safetensors").is_file()
    single = next(x for x in listings if len(x.images) == 1)
    stored = index.image_file(single.product_id, 0)
    assert stored is not None and stored.resolve().is_relative_to(tiny_index.resolve())
    hits = index.search_image(load_image(single.images[0]), 5)
    hits_image = index.search(index.encode_image(load_image(single.images[0])), 5, against="image")
    assert hits_image[0].listing.product_id == single.product_id
    assert hits_image[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_text_search_equals_brute_force_over_the_stored_vectors(tiny_index, listings):
    index = SearchIndex.open(tiny_index)
    text = index.encode_text(listings[7].title)
    for against, modality in (("text", "text"), ("image", "image"), ("both", "product")):
        query = index.lift(text, against)  # against "both": w * <q, image> + (1 - w) * <q, text>
        hits = index.search(query, 10, against=against)
        assert [h.score for h in hits] == pytest.approx(
            [h.score for h in index.search_text(listings[7].title, 10, against=against)], abs=1e-6)
        scores = dict(zip(index.vids.tolist(), np.asarray(index.vectors[modality]) @ query))
        # the ten best scores, each reported for the listing that has it (ties may swap places)
        assert [h.score for h in hits] == pytest.approx(sorted(scores.values())[::-1][:10],
                                                        abs=1e-5)
        assert [h.score for h in hits] == pytest.approx([scores[h.listing.vid] for h in hits],
                                                        abs=1e-5)
        assert len({h.listing.vid for h in hits}) == 10


def test_category_filter_keeps_the_category_and_those_below_it(tiny_index, listings):
    index = SearchIndex.open(tiny_index)
    top = listings[0].top_category
    inside = {x.product_id for x in listings if x.top_category == top}
    hits = index.search_text(listings[0].title, 50, category=top)
    assert hits and {h.listing.product_id for h in hits} <= inside
    assert len(hits) == min(50, len(inside))
    leaf = listings[0].category
    assert all(h.listing.category == leaf for h in index.search_text("x", 50, category=leaf))
    assert index.search_text("x", 5, category=top + " > no such leaf") == []
    assert index.search_text("x", 5, category=top[:-1]) == []  # a prefix of a name is no parent


def test_similar_lists_the_same_catalog_first_and_never_the_item(tiny_index, listings):
    index = SearchIndex.open(tiny_index)
    sizes = {}
    for x in listings:
        if x.catalog_id:
            sizes[x.catalog_id] = sizes.get(x.catalog_id, 0) + 1
    item = next(x for x in listings if sizes.get(x.catalog_id, 0) >= 3)
    found, hits = index.similar(item.product_id, 10)
    assert found.product_id == item.product_id
    flags = [h.same_catalog for h in hits]
    assert flags == sorted(flags, reverse=True)  # same-catalog listings first
    assert sum(flags) == sizes[item.catalog_id] - 1
    assert all(h.listing.catalog_id == item.catalog_id for h in hits if h.same_catalog)
    assert item.product_id not in {h.listing.product_id for h in hits}
    assert len(hits) == 10
    assert index.similar("no-such-id", 5) is None


def test_update_embeds_only_the_new_listings_and_keeps_ids(index_copy, listings, monkeypatch):
    import eclip.search.write as module

    before = SearchIndex.open(index_copy)
    changed = replace(listings[3], title="completely new title 12345")
    added = replace(listings[5], product_id="brand-new-listing")
    embedded = []
    real = module.embed_listings
    def recording(model, items, **kwargs):
        embedded.extend(items)
        return real(model, items, **kwargs)

    monkeypatch.setattr(module, "embed_listings", recording)
    info = update_index(index_copy, [changed, added], progress=False)
    assert [x.product_id for x in embedded] == [changed.product_id, added.product_id]
    assert (info.added, info.updated, info.listings) == (1, 1, len(listings) + 1)
    after = SearchIndex.open(index_copy)
    assert after.generation == "g000002"
    assert after.listing(changed.product_id).title == "completely new title 12345"
    assert after.listing(changed.product_id).vid == before.listing(changed.product_id).vid
    untouched = before.listing(listings[0].product_id).vid
    np.testing.assert_array_equal(after.vector(untouched), before.vector(untouched))
    hits = after.search(after.vector(after.listing("brand-new-listing").vid, "image"), 1,
                        against="image")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert _generations(index_copy) == ["g000001", "g000002"]


def test_delete_removes_listings_everywhere_and_prunes_old_generations(index_copy, listings):
    gone = listings[0]
    info = delete_from_index(index_copy, [gone.product_id, "not-there"])
    assert info.deleted == 1 and info.not_found == ["not-there"]
    info = delete_from_index(index_copy, [listings[1].product_id])
    index = SearchIndex.open(index_copy)
    assert len(index) == len(listings) - 2
    assert index.listing(gone.product_id) is None and index.similar(gone.product_id, 3) is None
    assert gone.product_id not in {h.listing.product_id
                                   for h in index.search_text(gone.title, len(listings))}
    assert _generations(index_copy) == ["g000002", "g000003"]  # the one before is kept, no older
    referenced = index.store.image_names() | SearchIndex(index_copy, index_copy / "g000002"
                                                         ).store.image_names()
    on_disk = {f"{p.parent.name}/{p.name}" for p in (index_copy / "images").glob("*/*")}
    assert on_disk == referenced


def test_a_failed_write_leaves_the_index_as_it_was(index_copy, listings, monkeypatch):
    import eclip.search.transaction as module

    def crash(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(module, "fit_adult_head", crash)  # late in the write, after the vectors
    with pytest.raises(RuntimeError, match="disk on fire"):
        delete_from_index(index_copy, [listings[0].product_id])
    assert not [p for p in index_copy.iterdir() if p.name.startswith(".tmp-")]
    index = SearchIndex.open(index_copy)
    assert index.generation == "g000001" and index.listing(listings[0].product_id) is not None
    monkeypatch.undo()
    assert delete_from_index(index_copy, [listings[0].product_id]).generation == "g000002"


def test_one_writer_at_a_time(index_copy, listings):
    with open(index_copy / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SearchIndexError, match="another eclip process"):
            delete_from_index(index_copy, [listings[0].product_id])


def test_live_index_follows_new_generations(index_copy, listings):
    live = LiveIndex(index_copy, check_every=0.0)
    assert live.get().generation == "g000001"
    delete_from_index(index_copy, [listings[2].product_id])
    assert live.get().generation == "g000002"
    assert live.get().listing(listings[2].product_id) is None


def test_refuses_folders_and_models_that_are_not_its_own(tiny_model_dir, listings, tmp_path,
                                                         tiny_index):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(SearchIndexError, match="holds other files"):
        build_index(tiny_model_dir, listings[:5], other, progress=False)
    with pytest.raises(SearchIndexError, match="not an eclip search index"):
        SearchIndex.open(tmp_path)
    fake_model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, fake_model)
    (fake_model / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(SearchIndexError, match="not the model the index was built with"):
        update_index(tiny_index, listings[:1], model_dir=fake_model, progress=False)


def test_adult_head_is_fitted_when_both_labels_exist(tiny_index, listings):
    index = SearchIndex.open(tiny_index)
    labels = {x.adult for x in listings if x.adult is not None}
    assert labels == {True, False}
    for modality in ("image", "text", "product"):
        head = index.adult_heads[modality]
        assert head is not None and head.n == sum(x.adult is not None for x in listings)
    result = index.classify(title=listings[0].title, top=3)
    assert result.modality == "text" and len(result.categories) <= 3
    assert 0.0 < result.adult_probability < 1.0
    assert sum(score for _, score in result.categories) <= 1.0 + 1e-9


# ------------------------------------------------------------------------ vectors (no model)
def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("hnsw_from", [10_000, 16])  # flat, then HNSW coarse quantizer
def test_ivf_reaches_the_target_recall_it_reports(hnsw_from):
    x = _clustered(4000, 32)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7
    settings = VectorSettings(kind="ivf", nlist=32, target_recall=0.9, recall_queries=200,
                              hnsw_quantizer_from=hnsw_from)
    index = VectorIndex.build(x, ids, settings)
    stats = index.stats
    assert stats.kind == "ivf" and stats.quantizer == ("hnsw" if hnsw_from == 16 else "flat")
    assert stats.recall_at_10 >= 0.9 and 1 <= stats.nprobe <= 32
    # the reported recall is what an independent measurement at that nprobe gives
    noise = np.random.default_rng(1).standard_normal((200, 32)).astype(np.float32)
    queries = x[:200] + 0.05 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top_scores(x, queries, 10)
    scores, found = index.search(queries, 10)
    assert recall_against(truth, scores, found) >= 0.85
    assert set(found.ravel()) <= set(ids)
    index.remove(ids[:100])
    _, found = index.search(x[:100], 10, nprobe=32)
    assert not set(found.ravel()) & set(ids[:100])


def test_auto_kind_switches_to_ivf_above_the_exact_limit():
    x = _clustered(3000, 16)
    ids = np.arange(3000)
    small = VectorIndex.build(x[:500], ids[:500], VectorSettings(exact_max=1000))
    large = VectorIndex.build(x, ids, VectorSettings(exact_max=1000, recall_queries=100))
    assert small.kind == "exact" and large.kind == "ivf" and large.stats.recall_at_10 is not None
    assert large.needs_retraining(3000 * 5, VectorSettings(exact_max=1000))
    assert not large.needs_retraining(3500, VectorSettings(exact_max=1000))
    assert small.needs_retraining(3000, VectorSettings(exact_max=1000))  # kind changes


INDEX_DAMAGE = {
    "CURRENT names a missing generation": ("CURRENT", '{"format": "eclip-search-index", '
                                                      '"version": 1, "generation": "g000009"}'),
    "CURRENT is garbage": ("CURRENT", "\x00\x01 not json"),
    "listings.sqlite is garbage": ("g000001/listings.sqlite", "garbage " * 500),
    "text.faiss is garbage": ("g000001/text.faiss", "garbage " * 50),
    "image.npy is garbage": ("g000001/image.npy", "garbage"),
    "info.json is garbage": ("g000001/info.json", "{"),
    "heads.json is missing": ("g000001/heads.json", None),
    "vids.npy is missing": ("g000001/vids.npy", None),
}


@pytest.mark.parametrize("case", list(INDEX_DAMAGE))
def test_serve_refuses_a_damaged_index_with_one_line(case, index_copy, tmp_path, capsys):
    from eclip.search.api import create_app

    index = index_copy
    name, content = INDEX_DAMAGE[case]
    if content is None:
        (index / name).unlink()
    else:
        (index / name).write_bytes(content.encode("utf-8"))
    with pytest.raises(EclipError) as err:
        create_app(index, warm=False)
    assert_one_line(err.value, str(index / name) if name != "CURRENT" else "CURRENT")
    assert main(["serve", "--index", str(index), "--port", "1"]) == 2
    captured = capsys.readouterr().err
    assert "Traceback" not in captured and len(captured.strip().splitlines()) == 1


def test_a_generation_that_disagrees_with_its_info_is_refused(index_copy, tmp_path):
    import numpy as np

    from eclip.search import SearchIndex

    index = index_copy
    vectors = np.load(index / "g000001" / "text.npy")
    np.save(index / "g000001" / "text.npy", vectors[:-3])  # a silent wrong row mapping otherwise
    with pytest.raises(EclipError) as err:
        SearchIndex.open(index)
    assert_one_line(err.value, "text.npy", "does not match")


def _new_generation(index: Path, name: str, damage: str | None) -> None:
    shutil.copytree(index / "g000001", index / name)
    if damage:
        (index / name / damage).write_bytes(b"garbage " * 100)
    (index / "CURRENT").write_text(json.dumps({"format": "eclip-search-index", "version": 1,
                                               "generation": name}), encoding="utf-8")


@pytest.mark.parametrize("damage", ["listings.sqlite", "product.faiss", "info.json"])
def test_a_live_server_keeps_the_last_good_generation(damage, index_copy, tmp_path, caplog):
    from fastapi.testclient import TestClient

    from eclip.search.api import create_app

    index = index_copy
    client = TestClient(create_app(index, check_every=0))
    query = {"query": "a pen", "k": 3, "against": "both"}
    assert client.post("/search/text", json=query).json()["generation"] == "g000001"
    _new_generation(index, "g000002", damage)
    with caplog.at_level(logging.WARNING, logger="eclip.search"):
        for _ in range(5):
            answer = client.post("/search/text", json=query)
            assert answer.status_code == 200 and answer.json()["generation"] == "g000001"
            assert client.get("/health").json()["generation"] == "g000001"
    warnings = [r for r in caplog.records if r.name == "eclip.search"]
    assert len(warnings) == 1 and "g000002" in warnings[0].getMessage()
    assert damage in warnings[0].getMessage()
    _new_generation(index, "g000003", None)  # a good one again: picked up
    assert client.post("/search/text", json=query).json()["generation"] == "g000003"


@pytest.mark.parametrize("row", [
    (7, "p7", "c1", "Tea 500g", "Brand", "Food > Tea", '{"size": "500g"}', 1, "ko", "train",
     '["a.jpg", "b.jpg"]'),
    (8, "p8", None, "Mug", None, None, "{}", None, None, None, "[]"),
    (9, "p9", None, "Cup", None, "Home", "{}", 0, "en", None, "[]"),
])
def test_a_stored_row_becomes_the_listing_the_constructor_makes(row):
    from dataclasses import asdict

    from eclip.search.metadata import StoredListing

    vid, pid, catalog, title, brand, category, attributes, adult, lang, split, images = row
    made = StoredListing(vid=vid, product_id=pid, title=title, catalog_id=catalog, brand=brand,
                         category=category, attributes=json.loads(attributes),
                         adult=None if adult is None else bool(adult), lang=lang, split=split,
                         images=tuple(json.loads(images)))
    fast = StoredListing._from_row(row)
    assert fast == made and asdict(fast) == asdict(made) and repr(fast) == repr(made)
    with pytest.raises(AttributeError):  # still frozen
        fast.title = "other"


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc only")
def test_a_served_index_maps_its_vectors_for_scattered_reads(tiny_index):
    # MADV_RANDOM shows as the "rr" flag of the mapping: a re-ranking's page fault then reads
    # its page, not the pages around it
    index = SearchIndex.open(tiny_index)
    try:
        flags = {}
        name = None
        for line in Path("/proc/self/smaps").read_text().splitlines():
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 6:
                name = fields[5]
            elif line.startswith("VmFlags:") and name and name.startswith(
                    str(index.generation_dir)):
                flags[Path(name).name] = fields[1:]
        assert "rr" in flags["image.npy"] and "rr" in flags["text.npy"]
    finally:
        index.close()
