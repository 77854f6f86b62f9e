"""Compressed FAISS kinds (issue 20, part 2): each builds, reaches its recall, finds duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from eclip.errors import ConfigError
from eclip.search.compressed import (COMPRESSED_KINDS, CompressedIndex, CompressedSettings,
                                     bytes_per_vector, choose_kind, recall_by_ids)
from eclip.search.vectors import exact_top_scores


@pytest.fixture(scope="module")
def data():
    """4,000 clustered unit vectors of 32 dimensions, ids spaced out and ascending."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((40, 32))
    x = centres[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.arange(4000, dtype=np.int64) * 3 + 7


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "ivfpq" else k
                                  for k in COMPRESSED_KINDS])
def test_each_kind_builds_reports_recall_and_finds_exact_duplicates(kind, data):
    x, ids = data
    # 4-bit PQ codes: 16 centroids per sub-quantizer train in seconds (8 bits: a minute here)
    # coarse codes lose order among near neighbours: PQ re-ranks more candidates
    settings = CompressedSettings(kind=kind, nlist=32, pq_m=8, pq_bits=4,
                                  rerank=16 if kind == "ivfpq" else 4, recall_queries=200)
    index = CompressedIndex.build(x, ids, settings)
    recall = index.tune(x, ids)
    assert recall == index.recall_at_10 and recall >= 0.95 and index.param is not None
    rows = np.arange(0, 4000, 97)
    scores, found = index.search(x[rows], 10, vectors=x, ids=ids)
    assert (found[:, 0] == ids[rows]).all()  # a listing's own vector comes first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # re-ranked: exact scores
    # re-ranked scores are the exact inner products of the ids returned, best first
    exact = np.einsum("qkd,qd->qk", x[np.searchsorted(ids, found)], x[rows])
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_recall_by_ids_counts_ties_and_misses(data):
    x, ids = data
    q = x[:5]
    truth = exact_top_scores(x, q, 10)
    perfect = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert recall_by_ids(truth, ids[perfect], q, x, ids) == 1.0
    half = ids[perfect].copy()
    half[:, 5:] = -1
    assert recall_by_ids(truth, half, q, x, ids) == pytest.approx(0.5)


def test_auto_picks_a_compressed_kind_under_a_small_budget():
    n, dim = 10_000_000, 256
    assert choose_kind(1000, dim, 2**30) == "exact"
    assert choose_kind(n, dim, 12 * 2**30) == "sq8"  # float32 would need 29 GiB
    assert choose_kind(n, dim, 2 * 2**30) == "ivfpq"
    assert bytes_per_vector("ivfpq", dim) == 32 + 8
    with pytest.raises(ConfigError, match="max-memory"):
        choose_kind(n, dim, 2**20)
