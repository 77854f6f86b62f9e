"""``eclip index --embeddings`` (issue 20, part 1): an index from the vectors ``eclip embed`` wrote.

The index built from stored vectors answers as the one that embeds (same listings, same scores);
vectors of another model are refused, for a build and for an update; an index without thumbnails
serves; and the scale-out pipeline ``embed --engine ray`` -> ``index --embeddings`` -> serve gives
the embedding build's top-10.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from eclip.cli import main
from eclip.errors import ConfigError
from eclip.encode import embed_listings, write_embeddings
from eclip.encode.identity import model_sha256
from eclip.encode.listings import read_embeddings
from eclip.model import load_model
from eclip.search import SearchIndex, SearchIndexError, build_index
from eclip.search.api import create_app
from eclip.search.build import index_from_embeddings


@pytest.fixture(scope="module")
def embedded(tiny_model_dir, listings, tmp_path_factory):
    """The catalog's vectors as the local engine of ``eclip embed`` writes them."""
    out = tmp_path_factory.mktemp("stored") / "emb.parquet"
    emb = embed_listings(load_model(tiny_model_dir), listings, progress=False)
    write_embeddings(emb, out, listings, model_sha256=model_sha256(tiny_model_dir))
    return out


@pytest.fixture(scope="module")
def other_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with one weight changed: another model, the same architecture."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("other") / "model"
    shutil.copytree(tiny_model_dir, out)
    weights = load_file(out / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, out / "model.safetensors")
    return out


def _top(index: SearchIndex, queries: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
    return [[(h.listing.product_id, h.score) for h in index.search_text(q, k, against=against)]
            for q in queries for against in ("text", "image", "both")]


def _same_answers(a: SearchIndex, b: SearchIndex, queries: list[str]) -> None:
    left, right = _top(a, queries), _top(b, queries)
    for one, two in zip(left, right):
        assert [pid for pid, _ in one] == [pid for pid, _ in two]
        np.testing.assert_allclose([s for _, s in one], [s for _, s in two], rtol=0, atol=1e-5)


def test_the_model_identity_travels_with_the_vectors(embedded, tiny_model_dir, other_model):
    emb, _ = read_embeddings(embedded)
    assert emb.model_sha256 == model_sha256(tiny_model_dir) != model_sha256(other_model)


def test_an_index_from_stored_vectors_answers_as_the_one_that_embeds(
        embedded, tiny_index, tiny_model_dir, listings, tmp_path, monkeypatch):
    import eclip.search.write as index_module

    def no_model(*_a, **_k):
        raise AssertionError("a build from stored vectors ran the model")

    monkeypatch.setattr(index_module, "embed_listings", no_model)
    out = tmp_path / "index"
    result = index_from_embeddings(out, embedded, listings, model_dir=tiny_model_dir,
                                   progress=False)
    assert result.info.listings == len(listings) and not result.without_vectors
    assert result.info.model_sha256 == model_sha256(tiny_model_dir)
    monkeypatch.undo()
    queries = [listings[i].title for i in (0, 17, 55)] + ["red cotton shirt"]
    _same_answers(SearchIndex.open(out), SearchIndex.open(tiny_index), queries)
    stored = json.loads((out / "g000001" / "info.json").read_text())
    assert stored["model_sha256"] == model_sha256(tiny_model_dir) and stored["thumbnails"]


def test_updates_from_stored_vectors_and_listings_without_vectors_are_counted(
        embedded, tiny_index, tiny_model_dir, listings, tmp_path):
    emb, _ = read_embeddings(embedded)
    first = tmp_path / "first.parquet"
    half = len(listings) // 2
    write_embeddings(emb.__class__(emb.product_ids[:half], emb.image[:half], emb.text[:half],
                                   emb.product[:half], emb.fusion_weight),
                     first, model_sha256=emb.model_sha256)
    out = tmp_path / "index"
    built = index_from_embeddings(out, first, listings, model_dir=tiny_model_dir,
                                  thumbnails=False, progress=False)
    assert built.info.listings == half and len(built.without_vectors) == len(listings) - half
    assert "had no stored vector" in built.summary()
    updated = index_from_embeddings(out, embedded, listings, update=True, thumbnails=False,
                                    progress=False)
    assert updated.info.listings == len(listings) and updated.info.added == len(listings) - half
    _same_answers(SearchIndex.open(out), SearchIndex.open(tiny_index),
                  [listings[3].title, listings[90].title])


def test_vectors_of_another_model_are_refused(embedded, tiny_model_dir, other_model, listings,
                                              tmp_path):
    with pytest.raises(SearchIndexError, match="another model"):
        index_from_embeddings(tmp_path / "a", embedded, listings, model_dir=other_model,
                              progress=False)
    assert not (tmp_path / "a" / "CURRENT").exists()
    # an index of the other model refuses these vectors on update, with or without --model
    other_index = tmp_path / "b"
    build_index(other_model, listings[:10], other_index, progress=False)
    for model in (None, tiny_model_dir):
        with pytest.raises(SearchIndexError, match="another model"):
            index_from_embeddings(other_index, embedded, listings, model_dir=model, update=True,
                                  progress=False)
    assert SearchIndex.open(other_index).generation == "g000001"


def test_vectors_without_a_recorded_model_are_refused(embedded, tiny_model_dir, listings,
                                                       tmp_path):
    emb, _ = read_embeddings(embedded)
    emb.model_sha256 = None
    old = tmp_path / "old.parquet"
    write_embeddings(emb, old, listings)
    with pytest.raises(SearchIndexError, match="does not record which model"):
        index_from_embeddings(tmp_path / "i", old, listings, model_dir=tiny_model_dir,
                              progress=False)


def test_an_index_without_thumbnails_serves(embedded, tiny_catalog, tiny_model_dir, listings,
                                            tmp_path):
    out = tmp_path / "index"
    assert main(["index", "--embeddings", str(embedded), "--model", str(tiny_model_dir),
                 "--catalog", str(tiny_catalog), "--no-thumbnails",
                 "--out", str(out), "--quiet"]) == 0
    assert not (out / "images").exists() or not any((out / "images").rglob("*.jpg"))
    client = TestClient(create_app(out, warm=False))
    results = client.post("/search/text", json={"query": listings[0].title, "k": 5}).json()
    assert len(results["results"]) == 5
    first = results["results"][0]
    if first.get("image_url"):
        assert client.get(first["image_url"]).status_code == 404
    assert client.get("/").status_code == 200


def test_embed_stores_half_precision_without_the_fused_vectors_and_indexes_from_them(
        embedded, tiny_catalog, tiny_model_dir, tmp_path):
    from eclip.encode.listings import StoredEmbeddings
    from eclip.engines.jobs import embed_catalog

    half = tmp_path / "half.parquet"
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(tiny_catalog),
                 "--out", str(half), "--dtype", "float16", "--no-fused", "--quiet"]) == 0
    (full, _), stored = read_embeddings(embedded), StoredEmbeddings(half)
    assert not stored.stores_fused and half.stat().st_size < 0.45 * embedded.stat().st_size
    assert stored.model_sha256 == model_sha256(tiny_model_dir)
    rows = [block for _, block in stored.blocks(10_000)]
    image = np.concatenate([b.image for b in rows])
    product = np.concatenate([b.product for b in rows])
    np.testing.assert_allclose(image, full.image, rtol=0, atol=1e-3)  # float16's rounding
    np.testing.assert_allclose(product, full.product, rtol=0, atol=1e-3)  # computed on read
    out = tmp_path / "index"
    assert main(["index", "--embeddings", str(half), "--model", str(tiny_model_dir),
                 "--catalog", str(tiny_catalog), "--no-thumbnails", "--out", str(out),
                 "--quiet"]) == 0
    assert len(SearchIndex.open(out)) == len(full.product_ids)
    with pytest.raises(ConfigError, match="float32 or float16"):  # before the model runs
        embed_catalog(tmp_path / "no_model", None, tmp_path / "x.parquet", dtype="int8")


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.distributed
def test_ray_embed_then_index_from_embeddings_then_serve_gives_the_embedding_builds_top10(
        tiny_catalog, tiny_model_dir, tiny_index, listings, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        assert main(["embed", "--engine", "ray", "--model", str(tiny_model_dir), "--catalog",
                     str(tiny_catalog), "--out", str(tmp_path / "parts"), "--block-size", "50",
                     "--quiet"]) == 0
    finally:
        ray.shutdown()
    manifest = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert manifest["model_sha256"] == model_sha256(tiny_model_dir)
    out = tmp_path / "index"
    assert main(["index", "--embeddings", str(tmp_path / "parts"), "--model",
                 str(tiny_model_dir), "--catalog", str(tiny_catalog), "--out", str(out),
                 "--quiet"]) == 0
    served = TestClient(create_app(out, warm=False))
    reference = TestClient(create_app(tiny_index, warm=False))
    for query in (listings[0].title, listings[42].title, "blue"):
        for mode in ("text", "image", "both"):
            body = {"query": query, "k": 10, "against": mode}
            a = served.post("/search/text", json=body).json()["results"]
            b = reference.post("/search/text", json=body).json()["results"]
            assert [r["product_id"] for r in a] == [r["product_id"] for r in b]
            np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b],
                                       rtol=0, atol=1e-5)


def test_a_bulk_load_of_stored_vectors_into_milvus_answers_as_the_embedding_build(
        embedded, tiny_index, tiny_model_dir, listings, tmp_path, monkeypatch):
    """`eclip index --store milvus --kind hnsw --embeddings PATH`: the vectors inserted in
    batches (a small batch here, so that there are several), HNSW in Milvus Lite, the same top-10
    (ids) as the exact embedding build."""
    milvus = pytest.importorskip("eclip.search.milvus")
    pytest.importorskip("milvus_lite")
    from eclip.search.store_types import StoreSpec
    from eclip.search.vectors import VectorSettings

    monkeypatch.setattr(milvus, "INSERT_BATCH", 16)
    out = tmp_path / "milvus_index"
    try:
        result = index_from_embeddings(out, embedded, listings, model_dir=tiny_model_dir,
                                       store=StoreSpec("milvus"), thumbnails=False,
                                       settings=VectorSettings(kind="hnsw", recall_queries=50),
                                       progress=False)
        assert result.info.store["kind"] == "milvus"
        assert {s.kind for s in result.info.vectors.values()} == {"hnsw"}
        served, exact = SearchIndex.open(out), SearchIndex.open(tiny_index)
        assert served.vector_store.count() == len(listings)
        queries = [listings[i].title for i in (0, 17, 55)] + ["red cotton shirt"]
        for one, two in zip(_top(served, queries), _top(exact, queries)):
            assert len({pid for pid, _ in one} & {pid for pid, _ in two}) >= 9
    finally:
        milvus.close_all()
