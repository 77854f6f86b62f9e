"""Compressed FAISS kinds (issue 20, part 2): each builds, reaches its recall, finds duplicates,
and `auto` picks one under a memory budget."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from eclip.errors import ConfigError
from eclip.search.compressed import (COMPRESSED_KINDS, bytes_per_vector, choose_kinds,
                                     new_index, parse_bytes)
from eclip.search.vectors import (VectorIndex, VectorSettings, exact_top_scores, recall_by_ids)


@pytest.fixture(scope="module")
def data():
    """4,000 clustered unit vectors of 32 dimensions, ids spaced out and ascending."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((40, 32))
    x = centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.arange(4000, dtype=np.int64) * 3 + 7


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "ivf_pq" else k
                                  for k in COMPRESSED_KINDS])
def test_each_kind_builds_reports_recall_and_finds_exact_duplicates(kind, data, tmp_path):
    x, ids = data
    # 4-bit PQ codes: 16 centroids per sub-quantizer train in seconds (8 bits: a minute here)
    # coarse codes lose order among near neighbours: PQ re-ranks more candidates
    settings = VectorSettings(kind=kind, nlist=32, pq_m=8, pq_bits=4,
                              rerank=16 if kind == "ivf_pq" else 4, recall_queries=200)
    index = VectorIndex.build(x, ids, settings)
    assert index.kind == kind and index.stats.recall_at_10 >= 0.95
    assert index.stats.param is not None and index.stats.recall_queries == 200
    # saved and loaded (as a generation is served), the re-ranking vectors attached again
    index.save(str(tmp_path / "i.faiss"))
    index = VectorIndex.load(str(tmp_path / "i.faiss"), index.stats)
    index.attach(x, ids)
    rows = np.arange(0, 4000, 97)
    scores, found = index.search(x[rows], 10)
    assert (found[:, 0] == ids[rows]).all()  # a listing's own vector comes first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # re-ranked: exact scores
    # re-ranked scores are the exact inner products of the ids returned, best first
    exact = np.einsum("qkd,qd->qk", x[np.searchsorted(ids, found)], x[rows])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    # an id filter keeps only the ids allowed
    allowed = ids[::5]
    _, kept = index.search(x[rows], 10, allowed=allowed)
    assert np.isin(kept[kept >= 0], allowed).all() and (kept >= 0).sum() > 0


def test_recall_by_ids_counts_ties_and_misses(data):
    x, ids = data
    q = x[:5]
    truth = exact_top_scores(x, q, 10)
    perfect = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert recall_by_ids(truth, ids[perfect], q, x, ids) == 1.0
    half = ids[perfect].copy()
    half[:, 5:] = -1
    assert recall_by_ids(truth, half, q, x, ids) == pytest.approx(0.5)


def test_auto_picks_a_compressed_kind_under_a_small_budget(data):
    n, dim = 10_000_000, 256
    three = [dim] * 3
    assert choose_kinds(1000, three, 2**30) == ("exact",) * 3
    assert choose_kinds(n, three, 8 * 2**30) == ("ivf_sq8",) * 3  # float32 would need 29 GiB
    assert choose_kinds(n, three, 2 * 2**30) == ("ivf_pq",) * 3
    assert choose_kinds(1000, three, 2**30, exact_max=500) == ("ivf",) * 3
    assert bytes_per_vector("ivf_pq", dim) == 32 + 8
    with pytest.raises(ConfigError, match="max-memory"):
        choose_kinds(n, three, 2**20)
    assert parse_bytes("12GiB") == 12 * 2**30 and parse_bytes("1.5g") == int(1.5 * 2**30)
    assert parse_bytes("500MB") == 500 * 2**20 and parse_bytes("4096") == 4096
    with pytest.raises(ConfigError, match="not a size"):
        parse_bytes("lots")
    # through VectorSettings: 4,000 x 32-d in three spaces is 1.6 MB as float32; 400 kB fits SQ8
    x, ids = data
    settings = VectorSettings(kind="auto", exact_max=1000, max_memory=500_000, nlist=32,
                              recall_queries=100)
    assert settings.resolve_kinds(len(x), [32] * 3) == ("ivf_sq8",) * 3
    # one index alone has the whole budget: 4,000 x (64 + 8) bytes as IVF-fp16 fits it
    assert settings.resolve_kind(len(x), 32) == "ivf_fp16"
    assert VectorIndex.build(x, ids, settings, kind="ivf_sq8").kind == "ivf_sq8"


def test_auto_compresses_the_largest_space_first():
    # 10 M listings, image and text 256-d, the fused space 512-d: SQ8 everywhere is 9.8 GiB
    n, dims = 10_000_000, [256, 256, 512]
    need = lambda kinds: sum(n * bytes_per_vector(k, d) for k, d in zip(kinds, dims))  # noqa: E731
    assert need(("ivf_sq8",) * 3) > 8 * 2**30
    chosen = choose_kinds(n, dims, 8 * 2**30)
    assert chosen == ("ivf_sq8", "ivf_sq8", "ivf_sq4") and need(chosen) <= 8 * 2**30
    # less room: the others follow, one at a time, before any goes two kinds down
    assert choose_kinds(n, dims, 7 * 2**30) == ("ivf_sq8", "ivf_sq4", "ivf_sq4")
    # with more room the fused space is the first to be compressed and the last to leave float32
    roomy = choose_kinds(n, dims, 30 * 2**30)
    assert roomy == ("ivf", "ivf", "ivf_fp16")
    # every choice fits its budget
    for budget in (3, 5, 7, 9, 12, 20, 40):
        kinds = choose_kinds(n, dims, budget * 2**30)
        assert need(kinds) <= budget * 2**30
    # the kinds offered are respected (a store that has no IVF-fp16)
    assert "ivf_fp16" not in choose_kinds(n, dims, 20 * 2**30,
                                          kinds=("ivf", "ivf_sq8", "ivf_pq"))


    assert VectorSettings(kind="flat").resolve_kind(10**8, 32) == "exact"


def test_milvus_auto_chooses_per_field_among_what_it_builds():
    from eclip.search.milvus import milvus_kinds

    n, dims = 10_000_000, [256, 256, 512]
    budget = VectorSettings(kind="auto", max_memory=6 * 2**30)
    assert milvus_kinds(budget, n, dims, lite=False) == ("ivf_sq8", "ivf_sq8", "ivf_pq")
    # Milvus Lite builds no IVF_PQ: SQ8 everywhere (9.8 GiB) does not fit 6 GiB, and says so
    with pytest.raises(ConfigError, match="max-memory"):
        milvus_kinds(budget, n, dims, lite=True)
    roomy = VectorSettings(kind="auto", max_memory=12 * 2**30)
    assert milvus_kinds(roomy, n, dims, lite=True) == ("ivf_sq8",) * 3
    # no IVF of fp16 vectors in Milvus: where FAISS would take it, Milvus takes the next kind
    assert "ivf_fp16" in choose_kinds(n, dims, 20 * 2**30)
    assert "ivf_fp16" not in milvus_kinds(VectorSettings(kind="auto", max_memory=20 * 2**30),
                                          n, dims, lite=False)


def test_pq_without_polysemous_training_answers_as_faiss_default():
    # FAISS's default also reorders the codebooks for Hamming filtering (about 100 CPU s per
    # 512-d index); eclip skips it: the same centroids, so the same ids and scores
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    answers = []
    for polysemous in (False, True):
        index, _, alive = new_index("ivf_pq", 16, 8, hnsw_quantizer_from=10**6, pq_m=2,
                                    pq_bits=6, hnsw_m=32, seed=0)
        alive[-1].niter = alive[-1].niter_pq_0 = 1  # the OPQ rotation: one round (quicker)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        assert not ivf.do_polysemous_training
        ivf.do_polysemous_training = polysemous
        index.train(x)
        index.add(x)
        ivf.nprobe = 4
        answers.append(index.search(x[:100], 10))
    np.testing.assert_array_equal(answers[0][1], answers[1][1])
    np.testing.assert_array_equal(answers[0][0], answers[1][0])
