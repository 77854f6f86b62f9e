"""Synthetic embeddings for the index tests: unit vectors clustered like the listings of catalogs."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(seed: int, n: int, dim: int, products: int, noise: float = 0.6):
    """``(group, image, text)``: each of ``n`` listings belongs to one of ``products`` random
    centres (``group``), and its image and text vectors are that centre plus Gaussian noise, made
    unit length (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((products, dim))
    group = rng.integers(0, products, n)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    image = unit(centres[group] + noise * rng.standard_normal((n, dim)))
    text = unit(centres[group] + noise * rng.standard_normal((n, dim)))
    return group, image, text
