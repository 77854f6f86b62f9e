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

FUSION_WEIGHT = 0.5  # the image's share of a fused similarity


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
