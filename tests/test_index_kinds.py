"""Every vector index kind through `eclip index` → `eclip serve`: the served top-10 against the
flat (exact) index's, filters included, and `auto` choosing a compressed kind under a budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from eclip.catalog.schema import Listing
from eclip.encode import Embeddings, fuse
from eclip.errors import ConfigError
from eclip.search import SearchIndex, VectorSettings, write_index
from eclip.search.api import create_app
from vectors import clustered_unit_vectors

N, DIM, CATEGORIES = 3000, 32, ("Food", "Fashion", "Home")
QUERIES = list(range(0, N, 60))  # 50 listings asked for their neighbours
KINDS = ["ivf", "hnsw", "ivf_fp16", "ivf_sq8", "ivf_sq4",
         pytest.param("ivf_pq", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def catalog():
    """3,000 listings in 3 categories, vectors clustered like catalogs (60 products)."""
    group, image, text = clustered_unit_vectors(3, N, DIM, products=60)
    listings = [Listing(f"p{i:05d}", f"item {i}", [], category=CATEGORIES[i % 3],
                        adult=bool(i % 7 == 0)) for i in range(N)]
    emb = Embeddings([x.product_id for x in listings], image, text, fuse(image, text, 0.5), 0.5)
    return listings, emb


def _write(tmp_path, tiny_model_dir, catalog, name, settings):
    listings, emb = catalog
    out = tmp_path / name
    write_index(out, tiny_model_dir, listings, emb, settings=settings, progress=False,
                thumbnails=False)
    return out


@pytest.fixture(scope="module")
def flat(tmp_path_factory, tiny_model_dir, catalog):
    out = _write(tmp_path_factory.mktemp("kinds"), tiny_model_dir, catalog, "flat",
                 VectorSettings(kind="flat"))
    return out, _served(out)


def _served(out) -> dict[int, list[str]]:
    """Each query listing's 10 nearest others, through the API (/similar: vector search only,
    as no listing has a catalog id)."""
    client = TestClient(create_app(out, warm=False))
    answers = {}
    for i in QUERIES:
        response = client.get(f"/similar/p{i:05d}", params={"k": 10})
        assert response.status_code == 200
        answers[i] = [r["product_id"] for r in response.json()["results"]]
    return answers


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_served_with_the_flat_top10(kind, flat, catalog, tiny_model_dir, tmp_path):
    flat_dir, truth = flat
    settings = VectorSettings(kind=kind, nlist=16, pq_m=8, pq_bits=4, recall_queries=200,
                              rerank=16 if kind == "ivf_pq" else None)
    out = _write(tmp_path, tiny_model_dir, catalog, kind, settings)
    info = json.loads(next(out.glob("g*/info.json")).read_text())
    for space in ("image", "text", "product"):
        stats = info["vectors"][space]
        assert stats["kind"] == kind and stats["recall_at_10"] >= 0.95  # measured at build
    served = _served(out)
    overlap = np.mean([len(set(served[i]) & set(truth[i])) / 10 for i in QUERIES])
    assert overlap >= 0.9, overlap
    # the service describes the kind it opened, and filters still hold
    health = TestClient(create_app(out, warm=False)).get("/health").json()
    assert kind.split("_")[-1].upper().replace("PQ", "PQ") in health["vectors"]["product"].upper()
    index, exact = SearchIndex.open(out), SearchIndex.open(flat_dir)
    query = index.vector(index.listing("p00042").vid)
    hits = index.search(query, 10, category="Fashion", adult=False)
    expected = exact.search(query, 10, category="Fashion", adult=False)
    assert all(h.listing.category == "Fashion" and not h.listing.adult for h in hits)
    assert len({h.listing.product_id for h in hits} & {h.listing.product_id for h in expected}) >= 8


def test_auto_picks_a_compressed_kind_under_a_small_budget(catalog, tiny_model_dir, tmp_path):
    # float32 image + text + fused (32 + 32 + 64 dimensions) of 3,000 listings: 1.6 MB; IVF-fp16
    # for the image, SQ8 for the text and the fused space: 0.55 MB (compressed in turn, the
    # largest first)
    settings = VectorSettings(kind="auto", exact_max=1000, max_memory=600_000, nlist=16,
                              recall_queries=200)
    out = _write(tmp_path, tiny_model_dir, catalog, "auto", settings)
    info = SearchIndex.open(out).info
    assert {s: v.kind for s, v in info.vectors.items()} == {
        "image": "ivf_fp16", "text": "ivf_sq8", "product": "ivf_sq8"}
    assert sum(N * v.bytes_per_vector for v in info.vectors.values()) <= 600_000
    assert all(s.recall_at_10 >= 0.95 for s in info.vectors.values())
    roomy = VectorSettings(kind="auto", exact_max=1000, max_memory=10**9)
    assert roomy.resolve_kind(N, DIM) == "ivf"
    with pytest.raises(ConfigError, match="max-memory"):
        VectorSettings(kind="auto", max_memory=1000).resolve_kind(N, DIM)


def test_an_update_of_a_compressed_index_keeps_its_kind(catalog, tiny_model_dir, tmp_path):
    from eclip.search import delete_from_index

    out = _write(tmp_path, tiny_model_dir, catalog, "hnsw",
                 VectorSettings(kind="hnsw", recall_queries=100))
    info = delete_from_index(out, ["p00001", "p00002"])  # HNSW cannot remove: rebuilt
    assert info.listings == N - 2 and info.vectors["product"].kind == "hnsw"
    index = SearchIndex.open(out)
    found = index.search(index.vector(index.listing("p00003").vid), 5)
    assert found[0].listing.product_id == "p00003"
    assert not {"p00001", "p00002"} & {h.listing.product_id for h in found}


@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8", "ivf_pq"])
def test_an_hnsw_coarse_quantizer_probes_as_many_lists_as_asked(kind):
    """Found at 10 M listings (nlist 8,192): an HNSW quantizer searched at its default width
    returned about 600 of 4,096 lists, so a larger nprobe could not raise recall. The search
    parameters now widen the quantizer's search with nprobe."""
    import faiss

    from eclip.search.compressed import new_index, search_params

    _, x, _ = clustered_unit_vectors(3, 4000, 32, products=50)
    nlist = 128
    built = {}
    for name, start in (("flat", 10_000), ("hnsw", 64)):  # the quantizer: flat below `start`
        index, quantizer, alive = new_index(kind, 32, nlist, hnsw_quantizer_from=start, pq_m=8,
                                            pq_bits=8, hnsw_m=16, seed=0)
        assert quantizer == name
        index.train(x)
        index.add(x)
        built[name] = (index, alive)
    queries = x[:100]
    for name, (index, _) in built.items():
        params, _alive = search_params(kind, nlist, None)  # every list
        _, every = index.search(queries, 10, params=params)
        reference = built["flat"][0].search(queries, 10, params=search_params(kind, nlist,
                                                                                None)[0])[1]
        assert (every == reference).mean() >= 0.99, name  # all lists probed: the same answers
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(built["hnsw"][0]).quantizer)
    assert quantizer.hnsw.efSearch >= 64  # adding assigned lists with a wide enough search
