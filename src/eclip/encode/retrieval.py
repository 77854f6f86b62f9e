"""Retrieval metrics of vectors grouped by catalog: the one home of each (training's validation,
the fusion weight's choice and the evaluation's tasks use them).

- :func:`recall_at_k`: cross-modal, a hit is any gallery listing of the query's product (its
  catalog id, or the listing itself when it has none), its own photo included;
- :func:`same_group_retrieval`: within one set, every listing with a catalog mate queries the others
  (itself left out): R@k, MRR and mAP, ties broken by item index (a stable sort).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

HIT_RULE = ("a hit is any gallery listing of the query's catalog (the listing itself included); "
            "listings without a catalog id match only themselves")


def _as_codes(query_groups: Sequence[Hashable], gallery_groups: Sequence[Hashable]):
    codes: dict[Hashable, int] = {}
    q = np.array([codes.setdefault(g, len(codes)) for g in query_groups], dtype=np.int64)
    g = np.array([codes.setdefault(x, len(codes)) for x in gallery_groups], dtype=np.int64)
    return q, g


def recall_at_k(query: np.ndarray, gallery: np.ndarray, query_groups: Sequence[Hashable],
                gallery_groups: Sequence[Hashable], ks: Sequence[int] = (1, 5, 10), *,
                chunk: int = 1024) -> dict[int, float]:
    """Fraction of queries with at least one same-group gallery item among their top-k by dot product."""
    q_codes, g_codes = _as_codes(query_groups, gallery_groups)
    kmax = min(max(ks), len(gallery))
    hits = {k: 0 for k in ks}
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ gallery.T
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)
        match = g_codes[top] == q_codes[start:start + chunk, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(axis=1).sum())
    return {k: hits[k] / max(len(query), 1) for k in ks}


def same_group_retrieval(vectors, groups: Sequence[Hashable],
                         ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Every item with another item of its group queries all other items (itself left out).

    Returns ``R@k`` (a group mate within the top k), ``MRR`` (1 / rank of the first group mate) and
    ``mAP`` (mean over queries of the average precision of the full ranking). Scores are dot
    products; ``vectors`` may be a dense array or a scipy sparse matrix with unit rows. The ranking
    is by score, ties broken by item index (a stable sort). Queries run in chunks of at most ~8M
    scores, so memory stays bounded. Only the ranks of a query's group mates are needed, and each is
    counted (the items scored above it, and the tied ones before it) instead of sorting the row:
    the scores themselves grow as N^2, the rest as N x group size.
    """
    chunk = max(1, min(1024, 2 ** 23 // max(len(groups), 1)))
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    sizes = np.bincount(codes)
    queries = np.flatnonzero(sizes[codes] > 1)
    by_code = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    hits = {k: 0.0 for k in ks}
    mrr = average_precision = 0.0
    for start in range(0, len(queries), chunk):
        rows = queries[start:start + chunk]
        sims = vectors[rows] @ vectors.T
        sims = sims.toarray() if hasattr(sims, "toarray") else np.asarray(sims)
        sims[np.arange(len(rows)), rows] = -np.inf
        ranks = _mate_ranks(sims, rows, codes, by_code, starts)  # [rows, mates], inf-padded
        first = ranks[:, 0]
        mrr += float((1.0 / first).sum())
        for k in ks:
            hits[k] += float((first <= k).sum())
        found = np.isfinite(ranks)
        precision_at_hit = np.where(found, np.cumsum(found, axis=1) / ranks, 0.0)
        average_precision += float((precision_at_hit.sum(axis=1) / found.sum(axis=1)).sum())
    n = max(len(queries), 1)
    out = {f"R@{k}": hits[k] / n for k in ks}
    out.update({"MRR": mrr / n, "mAP": average_precision / n})
    return out


def _mate_ranks(sims: np.ndarray, rows: np.ndarray, codes: np.ndarray, by_code: np.ndarray,
                starts: np.ndarray) -> np.ndarray:
    """1-based ranks, ascending, of each query's group mates in its row of ``sims`` (self at -inf),
    as a stable descending sort would place them; rows with fewer mates are padded with inf."""
    mates = [by_code[starts[c]:starts[c + 1]] for c in codes[rows]]
    mates = [m[m != q] for m, q in zip(mates, rows)]
    count = np.array([len(m) for m in mates])
    ranks = np.full((len(rows), int(count.max())), np.inf)
    index = np.arange(sims.shape[1])
    for t in range(ranks.shape[1]):
        live = np.flatnonzero(count > t)
        j = np.array([mates[r][t] for r in live], dtype=np.int64)
        block = sims if len(live) == len(rows) else sims[live]
        score = block[np.arange(len(live)), j][:, None]
        above = (block > score).sum(axis=1)
        tied = (block == score).sum(axis=1) > 1  # another item with the same score: by index
        if tied.any():
            some = np.flatnonzero(tied)
            above[some] += ((block[some] == score[some]) & (index[None, :] < j[some, None])).sum(1)
        ranks[live, t] = 1 + above
    return np.sort(ranks, axis=1)
