"""The neighbour graph of listings and the capped groups cut from it.

Candidates are the *mutual* nearest neighbours of each other in the joint space (``j`` among the
``k`` nearest of ``i`` and ``i`` among the ``k`` nearest of ``j``), searched inside a block (the
listings of one category path, where the catalog has categories). An edge is a candidate pair whose
image similarity and text similarity both pass their thresholds (:mod:`eclip.mining.thresholds`).
Groups are grown from the edges in order of decreasing similarity, and a merge that would make a
group larger than ``max_group_size`` or put two different given catalogs together is refused, so no
giant component forms and a given catalog is never merged with another: precision first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Candidates:
    """Mutual-neighbour pairs ``(left[e], right[e])``, ``left < right``, with both similarities."""

    left: np.ndarray  # int64 [E]
    right: np.ndarray  # int64 [E]
    image: np.ndarray  # float32 [E]: cosine of the two listings' image vectors
    text: np.ndarray  # float32 [E]

    def __len__(self) -> int:
        return len(self.left)

    def passing(self, image_threshold: float, text_threshold: float) -> np.ndarray:
        """The candidates whose image and text similarities both pass (a boolean mask)."""
        return (self.image >= image_threshold) & (self.text >= text_threshold)


def blocks_of(keys: Sequence[str | None]) -> list[np.ndarray]:
    """Row indices grouped by block key, in order of first appearance; ``None`` is a block too."""
    index: dict[str | None, list[int]] = {}
    for row, key in enumerate(keys):
        index.setdefault(key, []).append(row)
    return [np.asarray(rows, dtype=np.int64) for rows in index.values()]


def knn(vectors: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest rows of every row by inner product (itself excluded): ``[N, min(k, N-1)]``."""
    n = len(vectors)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k + 1)
    out = np.empty((n, k), dtype=np.int64)
    for row in range(n):  # drop the row itself wherever ties placed it
        others = found[row][found[row] != row]
        out[row] = others[:k]
    return out


def mutual_candidates(joint: np.ndarray, image: np.ndarray, text: np.ndarray,
                      blocks: list[np.ndarray], k: int) -> Candidates:
    """Mutual ``k``-nearest-neighbour pairs of ``joint`` (unit rows) inside each block."""
    lefts, rights = [], []
    for rows in blocks:
        if len(rows) < 2:
            continue
        near = rows[knn(joint[rows], k)]  # global row numbers, [len(rows), k']
        src = np.repeat(rows, near.shape[1])
        dst = near.reshape(-1)
        pairs = set(zip(src.tolist(), dst.tolist()))
        mutual = [(a, b) for a, b in pairs if a < b and (b, a) in pairs]
        if mutual:
            a, b = np.asarray(mutual, dtype=np.int64).T
            lefts.append(a)
            rights.append(b)
    left = np.concatenate(lefts) if lefts else np.zeros(0, np.int64)
    right = np.concatenate(rights) if rights else np.zeros(0, np.int64)
    order = np.lexsort((right, left))
    left, right = left[order], right[order]
    return Candidates(left, right, np.einsum("ij,ij->i", image[left], image[right]),
                      np.einsum("ij,ij->i", text[left], text[right]))


def capped_groups(n: int, left: np.ndarray, right: np.ndarray, score: np.ndarray,
                  max_group_size: int, given: Sequence[str | None] | None = None) -> np.ndarray:
    """A group number per row from the edges ``(left, right)``, joined in decreasing ``score``.

    The rows of one ``given`` catalog id start as one group, whatever their edges, so the rules
    see whole catalogs: a join is refused when the merged group would hold more than
    ``max_group_size`` rows (a given catalog that large already takes no other row), or rows of two
    different given ids. Rows that join nothing are groups of one. Group numbers follow the
    smallest row of each group (row order), so the result does not depend on the order the edges
    came in beyond their scores."""
    parent = np.arange(n)
    size = np.ones(n, dtype=np.int64)
    label: list[str | None] = list(given) if given is not None else [None] * n

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        keep, gone = (a, b) if a < b else (b, a)
        parent[gone] = keep
        size[keep] += size[gone]
        label[keep] = label[keep] if label[keep] is not None else label[gone]

    first: dict[str, int] = {}
    for row, catalog_id in enumerate(list(label)):
        if catalog_id is not None:
            if catalog_id in first:
                join(root(first[catalog_id]), root(row))
            else:
                first[catalog_id] = row
    for e in np.lexsort((right, left, -score)):
        a, b = root(int(left[e])), root(int(right[e]))
        if a == b or size[a] + size[b] > max_group_size:
            continue
        if label[a] is not None and label[b] is not None and label[a] != label[b]:
            continue
        join(a, b)
    roots = np.array([root(x) for x in range(n)], dtype=np.int64)
    _, groups = np.unique(roots, return_inverse=True)  # roots are each group's smallest row
    return groups.astype(np.int64)


def group_pairs(groups: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of rows ``(i, j)``, ``i < j``, that share a group."""
    members: dict[int, list[int]] = {}
    for row, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(row)
    return {(a, b) for rows in members.values() if len(rows) > 1
            for i, a in enumerate(rows) for b in rows[i + 1:]}
