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

from eclip.encode.retrieval import same_group_retrieval

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


def resolve_fusion_weight(model=None, image=None, text=None, groups=None) -> tuple[float, str]:
    """The weight a model fuses with, and where it comes from; the one place that decides it.

    The model's own (``model.config.fusion_weight``, set when it was trained): ``"the model's"``;
    else, given validation vectors (``image``, ``text`` of listings in ``groups``), the one
    :func:`choose_fusion_weight` picks on them: ``"chosen on val"``; else :data:`FUSION_WEIGHT`:
    ``"default"``. Training passes no model (it chooses the weight it then stores in the model),
    the evaluation a model and its validation rows, ``embed_listings`` and search a model only."""
    own = getattr(getattr(model, "config", None), "fusion_weight", None)
    if own is not None:
        return float(own), "the model's"
    if image is not None and groups is not None and len(groups):
        return choose_fusion_weight(image, text, groups), "chosen on val"
    return FUSION_WEIGHT, "default"


def model_fusion_weight(model) -> float:
    """The weight ``model`` fuses with: its own, else :data:`FUSION_WEIGHT`."""
    return resolve_fusion_weight(model)[0]


def same_catalog_mrr(vectors: np.ndarray, groups) -> float:
    """Mean reciprocal rank of the first other listing of the same catalog, over listings that
    have one (the listing itself left out of its ranking; ties by item index, as the evaluation's
    :func:`~eclip.encode.retrieval.same_group_retrieval`); 0.0 when none has."""
    return same_group_retrieval(vectors, groups, ks=())["MRR"]


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
