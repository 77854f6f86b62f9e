"""How similar two listings must be, in image and in text, to be called the same product.

**The rule without labels (``null_quantile``).** The *null* is how close a product that is certainly
a different one comes: for each listing, its nearest neighbour in another block (another category
path: not the same product, yet the closest such listing in the joint space). Where the catalog has
no categories (one block), it is the listing's ``max_group_size``-th nearest neighbour instead: no
group may hold more than ``max_group_size`` listings, so at most ``max_group_size - 1`` others are
the same product. For each modality the threshold is the ``q`` quantile of those similarities
(default 0.9: only one listing in ten has a certainly-different neighbour that close), measured on
up to ``null_sample`` listings. A candidate must pass both modalities' thresholds.

Why this null and not random pairs of one category: random same-category pairs include the
product's own listings (in a small category, often), which pushes their upper quantiles to the
duplicates' similarities; and they are easier than the look-alikes a nearest-neighbour graph
proposes. On the demo catalog (docs/BENCHMARKS.md) this rule gave pairwise precision 0.94 from
the untrained start model and from a trained one.

**Calibrated with given ids (``given+mined``).** Where some listings carry catalog ids, the
thresholds are the most permissive pair on a grid of null quantiles whose edges among those listings
reach ``target_precision`` (an edge is right when both ends share a given id); the rule above is the
fallback when no grid point reaches it or the given ids form too few pairs to measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from eclip.mining.graph import Candidates

# the null quantiles the calibration and the precision-recall curve try, loosest first
QUANTILE_GRID = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
MIN_CALIBRATION_EDGES = 20  # fewer labelled edges than this measure no precision


@dataclass
class Thresholds:
    image: float
    text: float
    rule: str  # how they were chosen, in words (for the report)
    image_quantile: float | None = None
    text_quantile: float | None = None

    def to_dict(self) -> dict:
        return {"image": round(float(self.image), 6), "text": round(float(self.text), 6),
                "rule": self.rule, "image_quantile": self.image_quantile,
                "text_quantile": self.text_quantile}


@dataclass
class NullSample:
    """Similarities of random same-block pairs, per modality (sorted, for quantiles)."""

    image: np.ndarray
    text: np.ndarray

    def threshold(self, modality: str, q: float) -> float:
        values = getattr(self, modality)
        return float(np.quantile(values, q)) if len(values) else 1.0


def _certainly_other(vectors: np.ndarray, rows: np.ndarray, block_of: np.ndarray,
                     max_group_size: int, depth: int) -> np.ndarray:
    """For each of ``rows``, the similarity in ``vectors`` of its nearest listing of another
    block, or, where there is one block, of its ``max_group_size``-th nearest (NaN: none found)."""
    n = len(vectors)
    single_block = len(np.unique(block_of)) == 1
    depth = min(n - 1, max(depth, max_group_size))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    sims, found = index.search(np.ascontiguousarray(vectors[rows], dtype=np.float32), depth + 1)
    out = np.full(len(rows), np.nan, np.float32)
    for at, (row, near, sim) in enumerate(zip(rows.tolist(), found, sims)):
        keep = (near != row) & (near >= 0)
        near, sim = near[keep], sim[keep]
        if single_block:
            if len(near) >= max_group_size:
                out[at] = sim[max_group_size - 1]
            continue
        other = np.flatnonzero(block_of[near] != block_of[row])
        if len(other):
            out[at] = sim[other[0]]
    return out


def null_sample(image: np.ndarray, text: np.ndarray, block_of: np.ndarray, size: int,
                max_group_size: int, seed: int, depth: int = 64) -> NullSample:
    """Per sampled listing (up to ``size`` of them) and per modality, the similarity of the closest
    listing that is certainly another product: its nearest neighbour of another block, or, where
    every listing is in one block, its ``max_group_size``-th nearest neighbour. ``depth``:
    neighbours looked through for one of another block (a listing with none there is left out)."""
    n = len(image)
    if n < 2:
        return NullSample(np.zeros(0, np.float32), np.zeros(0, np.float32))
    rng = np.random.default_rng([seed, 7])
    rows = np.sort(rng.choice(n, size=min(size, n), replace=False))
    image_null = _certainly_other(image, rows, block_of, max_group_size, depth)
    text_null = _certainly_other(text, rows, block_of, max_group_size, depth)
    return NullSample(np.sort(image_null[~np.isnan(image_null)]),
                      np.sort(text_null[~np.isnan(text_null)]))


def from_null(null: NullSample, q: float) -> Thresholds:
    return Thresholds(null.threshold("image", q), null.threshold("text", q),
                      f"the {q} quantile, per modality, of the similarity of each listing's nearest "
                      f"certainly-different listing ({len(null.image)} listings)", q, q)


def edge_precision(candidates: Candidates, mask: np.ndarray,
                   given: Sequence[str | None]) -> tuple[float | None, int, int]:
    """Among passing candidates whose two ends both carry a given id: the share that agree, the
    number that agree and the number measured (precision None when none is measured)."""
    left, right = candidates.left[mask], candidates.right[mask]
    labelled = [(given[a], given[b]) for a, b in zip(left.tolist(), right.tolist())
                if given[a] is not None and given[b] is not None]
    right_ones = sum(a == b for a, b in labelled)
    return (right_ones / len(labelled) if labelled else None), right_ones, len(labelled)


def calibrate(candidates: Candidates, null: NullSample, given: Sequence[str | None],
              target_precision: float, fallback_q: float) -> Thresholds:
    """The loosest grid point (most right edges among the labelled) whose labelled edges reach
    ``target_precision``; the null rule at ``fallback_q`` where none can be measured or reached."""
    best: tuple[int, float, float] | None = None
    measured_any = False
    for qi in QUANTILE_GRID:
        for qt in QUANTILE_GRID:
            t_img, t_txt = null.threshold("image", qi), null.threshold("text", qt)
            precision, right_ones, measured = edge_precision(
                candidates, candidates.passing(t_img, t_txt), given)
            if measured < MIN_CALIBRATION_EDGES:
                continue
            measured_any = True
            if precision >= target_precision and (best is None or right_ones > best[0]):
                best = (right_ones, qi, qt)
    if best is None:
        why = ("no labelled edges to measure" if not measured_any
               else f"no grid point reached precision {target_precision}")
        out = from_null(null, fallback_q)
        out.rule += f" (calibration on given ids: {why})"
        return out
    _, qi, qt = best
    return Thresholds(null.threshold("image", qi), null.threshold("text", qt),
                      f"calibrated on given catalog ids to pairwise precision >= {target_precision}: "
                      f"image at the {qi} and text at the {qt} null quantile", qi, qt)


def pair_scores(predicted: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    """Pairwise precision, recall and F1 of predicted same-product pairs against true ones."""
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "predicted_pairs": len(predicted),
            "true_pairs": len(truth), "right_pairs": hits}
