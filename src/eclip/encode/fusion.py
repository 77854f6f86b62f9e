"""The one rule that fuses a listing's image and text vectors into its "both" vector.

``fuse(image, text, w) = [sqrt(w) * image ; sqrt(1 - w) * text]`` for unit rows: a unit row whose
dot product with another fused row is ``w * image similarity + (1 - w) * text similarity``. It is
what the evaluation's "both" columns measure, what ``eclip embed`` writes as ``product_embedding``
and what the search index serves as "both", with the weight ``FUSION_WEIGHT``.

Why this rule and not the normalised sum ``(image + text) / |image + text|``: it is defined for
every model (a baseline's tower features have different sizes per modality, which cannot be
added); its similarity has no cross terms (the image of one listing against the title of another),
so it does not reward a model for being better aligned across modalities than within them; and a
query of one modality still searches it (:func:`fuse_query`). The two rules side by side on the
demo's held-out catalogs: ``benchmarks/fusion_rule.py``, figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import numpy as np

FUSION_WEIGHT = 0.5  # the image's share of a fused similarity, where a model has none of its own
FUSION_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)  # the weights :func:`choose_fusion_weight` tries


def unit_rows(x) -> np.ndarray:
    """``x`` as float32 with every row scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x / max(float(np.linalg.norm(x)), 1e-12)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fuse(image, text, weight: float = FUSION_WEIGHT) -> np.ndarray:
    """``[sqrt(w) image; sqrt(1 - w) text]`` of unit rows (or one unit vector each)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    image, text = np.asarray(image, dtype=np.float32), np.asarray(text, dtype=np.float32)
    return np.concatenate([np.sqrt(weight) * image, np.sqrt(1.0 - weight) * text],
                          axis=-1).astype(np.float32)


def fuse_query(vector, weight: float = FUSION_WEIGHT) -> np.ndarray:
    """A joint-space query of one modality (a title or a photo) in the fused space: its dot product
    with a fused listing is ``w * <q, image> + (1 - w) * <q, text>``; it stays a unit vector."""
    return fuse(vector, vector, weight)


def model_fusion_weight(model) -> float:
    """The weight ``model`` fuses with: its own (``model.fusion_weight``, chosen on validation
    catalogs when it was trained), else :data:`FUSION_WEIGHT`."""
    weight = getattr(getattr(model, "config", None), "fusion_weight", None)
    return FUSION_WEIGHT if weight is None else float(weight)


def same_catalog_mrr(vectors: np.ndarray, groups) -> float:
    """Mean reciprocal rank of the first other listing of the same catalog, over listings that
    have one (the listing itself left out of its ranking); 0.0 when none has."""
    codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    queries = np.flatnonzero(np.bincount(codes)[codes] > 1)
    if not len(queries):
        return 0.0
    total = 0.0
    for start in range(0, len(queries), 512):
        rows = queries[start:start + 512]
        scores = vectors[rows] @ vectors.T
        scores[np.arange(len(rows)), rows] = -np.inf
        mate = codes[None, :] == codes[rows][:, None]
        mate[np.arange(len(rows)), rows] = False
        best_mate = np.where(mate, scores, -np.inf).max(axis=1)
        total += float((1.0 / (1 + (scores > best_mate[:, None]).sum(axis=1))).sum())
    return total / len(queries)


def choose_fusion_weight(image: np.ndarray, text: np.ndarray, groups,
                         grid: tuple[float, ...] = FUSION_GRID) -> float:
    """The weight of ``grid`` whose fused vectors rank listings of one catalog highest (same-
    catalog MRR, the similarity that matching, clustering and "similar listings" use) on the given
    validation listings; of equally good weights the one nearest 0.5. Without any catalog with two
    listings there is nothing to measure: :data:`FUSION_WEIGHT`."""
    scores = [same_catalog_mrr(fuse(image, text, w), groups) for w in grid]
    if max(scores) <= 0.0:
        return FUSION_WEIGHT
    best = [w for w, value in zip(grid, scores) if value >= max(scores) - 1e-12]
    return float(min(best, key=lambda w: abs(w - 0.5)))
