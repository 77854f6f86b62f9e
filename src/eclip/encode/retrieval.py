"""Cross-modal retrieval metrics where a hit is any gallery listing of the query's product.

A listing's product is its catalog id, or the listing itself when it has none; so a text query finds
a hit when any photo of the same catalog (its own photo included) is ranked within the top k.
"""

from __future__ import annotations

from typing import Hashable, Sequence

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
