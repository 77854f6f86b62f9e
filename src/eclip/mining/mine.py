"""Catalogs mined from a model's vectors: which listings are the same product.

:func:`mine_catalogs` embeds the listings with a model (the one a run starts from, or a trained
one), finds mutual nearest neighbours inside each category block, keeps the pairs whose image and
text similarities both pass the thresholds (:mod:`eclip.mining.thresholds`: a label-free rule, or
calibrated on the given ids), and cuts capped groups from them (:mod:`eclip.mining.graph`). Every
listing of a group of two or more gets the group's catalog id:

- a group holding a listing with a given id passes that id to its other members (a group never
  holds two different given ids);
- any other group gets a new id ``mined:<first product id>``, which cannot collide with a given id
  unless the catalog itself uses that prefix;
- ``sources[i]`` says where listing i's id came from: ``given``, ``mined`` or None (no id: a
  product of its own).

Where the listings carry true ids that mining did not use (``catalog_source=mined`` on a catalog
that has them, or the demo with its ids hidden), the result scores the mined groups against them:
pairwise precision, recall and F1, and the precision-recall curve over the null quantiles.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from eclip.catalog.config import MiningConfig
from eclip.catalog.schema import Listing
from eclip.encode.listings import embed_listings
from eclip.errors import ConfigError
from eclip.mining.graph import Candidates, blocks_of, capped_groups, group_pairs, mutual_candidates
from eclip.mining.thresholds import (QUANTILE_GRID, NullSample, Thresholds, calibrate, from_null,
                                     null_sample, pair_scores)

MINED_PREFIX = "mined:"
SOURCES = ("given", "mined", "given+mined")


@dataclass
class MiningResult:
    listings: list[Listing]  # the input listings with the catalog ids mining gives them
    sources: list[str | None]  # per listing: "given", "mined" or None (no catalog id)
    thresholds: Thresholds
    report: dict[str, Any] = field(default_factory=dict)


def hide_catalog_ids(listings: Sequence[Listing], keep_fraction: float = 0.0) -> list[Listing]:
    """Copies of ``listings`` with the catalog ids of all but ``keep_fraction`` of the catalogs
    removed (which catalogs keep theirs: a stable hash of the id), to measure mining where the
    true ids are known."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ConfigError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")

    def kept(catalog_id: str | None) -> bool:
        return bool(catalog_id) and zlib.crc32(catalog_id.encode("utf-8")) % 10_000 < keep_fraction * 10_000

    return [dataclasses.replace(x, catalog_id=x.catalog_id if kept(x.catalog_id) else None)
            for x in listings]


def _true_pairs(truth: Sequence[str | None]) -> set[tuple[int, int]]:
    numbers: dict[str, int] = {}
    groups = np.array([numbers.setdefault(t, len(numbers)) if t else -(i + 1)
                       for i, t in enumerate(truth)], dtype=np.int64)
    return group_pairs(groups)


def _assign(listings: Sequence[Listing], groups: np.ndarray, given: Sequence[str | None]
            ) -> tuple[list[Listing], list[str | None]]:
    members: dict[int, list[int]] = {}
    for row, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(row)
    ids: list[str | None] = list(given)
    sources: list[str | None] = ["given" if g else None for g in given]
    for rows in members.values():
        if len(rows) < 2:
            continue
        labels = {given[r] for r in rows if given[r]}
        group_id = labels.pop() if labels else MINED_PREFIX + listings[rows[0]].product_id
        for r in rows:
            if not given[r]:
                ids[r], sources[r] = group_id, "mined"
    out = [dataclasses.replace(x, catalog_id=ids[i]) for i, x in enumerate(listings)]
    return out, sources


def _pr_curve(n: int, candidates: Candidates, null: NullSample, config: MiningConfig,
              given: Sequence[str | None], truth_pairs: set[tuple[int, int]]) -> list[dict]:
    """Pairwise precision and recall of the capped groups at every null quantile of the grid."""
    curve = []
    for q in QUANTILE_GRID:
        t = from_null(null, q)
        mask = candidates.passing(t.image, t.text)
        groups = capped_groups(n, candidates.left[mask], candidates.right[mask],
                               candidates.image[mask] + candidates.text[mask],
                               config.max_group_size, given)
        scores = pair_scores(group_pairs(groups), truth_pairs)
        curve.append({"quantile": q, "image_threshold": t.image, "text_threshold": t.text,
                      **{k: scores[k] for k in ("precision", "recall", "f1", "predicted_pairs")}})
    return curve


def choose_thresholds(config: MiningConfig, source: str, candidates: Candidates, null: NullSample,
                      given: Sequence[str | None]) -> Thresholds:
    if config.image_threshold is not None and config.text_threshold is not None:
        return Thresholds(config.image_threshold, config.text_threshold, "fixed (data.mining)")
    if source == "given+mined":
        return calibrate(candidates, null, given, config.target_precision, config.null_quantile)
    return from_null(null, config.null_quantile)


def mine_catalogs(model, listings: Sequence[Listing], config: MiningConfig | None = None, *,
                  source: str = "mined", truth: Sequence[str | None] | None = None,
                  image_cache=None, progress: bool = False,
                  log: Callable[[str], None] = print) -> MiningResult:
    """Group ``listings`` that are the same product, from ``model``'s vectors (see the module).

    ``source``: ``mined`` ignores the listings' catalog ids; ``given+mined`` keeps them, mines the
    rest and calibrates the thresholds on them. ``truth``: true catalog ids to score the groups
    against (default: the listings' own ids when ``source`` is ``mined`` and some are there)."""
    emb = embed_listings(model, list(listings), image_cache=image_cache, progress=progress,
                         desc="mining: embedding")
    return group_listings(emb.image, emb.text, emb.product, listings, config, source=source,
                          truth=truth, log=log)


def group_listings(image: np.ndarray, text: np.ndarray, joint: np.ndarray,
                   listings: Sequence[Listing], config: MiningConfig | None = None, *,
                   source: str = "mined", truth: Sequence[str | None] | None = None,
                   log: Callable[[str], None] = print) -> MiningResult:
    """:func:`mine_catalogs` on vectors already computed: unit rows of ``image`` and ``text``
    per listing, and ``joint`` (the fused vector) that the neighbour graph is searched in."""
    config = config or MiningConfig()
    if source not in ("mined", "given+mined"):
        raise ConfigError(f"mining source must be 'mined' or 'given+mined', got {source!r}")
    listings = list(listings)
    n = len(listings)
    given = [x.catalog_id or None for x in listings] if source == "given+mined" else [None] * n
    if truth is None and source == "mined" and any(x.catalog_id for x in listings):
        truth = [x.catalog_id for x in listings]
    keys = [x.category if config.block_by_category else None for x in listings]
    blocks = blocks_of(keys)
    candidates = mutual_candidates(joint, image, text, blocks, config.neighbours)
    block_of = np.empty(n, np.int64)
    for b, rows in enumerate(blocks):
        block_of[rows] = b
    null = null_sample(image, text, block_of, config.null_sample, config.max_group_size,
                       config.seed)
    thresholds = choose_thresholds(config, source, candidates, null, given)
    mask = candidates.passing(thresholds.image, thresholds.text)
    groups = capped_groups(n, candidates.left[mask], candidates.right[mask],
                           candidates.image[mask] + candidates.text[mask], config.max_group_size,
                           given)
    out, sources = _assign(listings, groups, given)
    sizes = Counter(Counter(x.catalog_id for x in out if x.catalog_id).values())
    report: dict[str, Any] = {
        "listings": n, "source": source, "blocks": len(blocks), "candidates": len(candidates),
        "edges": int(mask.sum()), "thresholds": thresholds.to_dict(),
        "catalogs": sum(sizes.values()), "listings_with_id": sum(1 for x in out if x.catalog_id),
        "mined_listings": sources.count("mined"), "given_listings": sources.count("given"),
        "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "config": dataclasses.asdict(config)}
    if truth is not None:
        truth_pairs = _true_pairs(truth)
        report["against_true_ids"] = pair_scores(group_pairs(groups), truth_pairs)
        report["pr_curve"] = _pr_curve(n, candidates, null, config, given, truth_pairs)
    log(summary(report))
    return MiningResult(out, sources, thresholds, report)


def summary(report: dict[str, Any]) -> str:
    """One paragraph of what mining found (and how right it was, where true ids were known)."""
    t = report["thresholds"]
    text = (f"mined catalogs: {report['catalogs']} catalogs of 2+ listings hold "
            f"{report['listings_with_id']} of {report['listings']} listings "
            f"({report['mined_listings']} ids mined, {report['given_listings']} given); "
            f"{report['edges']} of {report['candidates']} mutual-neighbour pairs passed image >= "
            f"{t['image']:.3f} and text >= {t['text']:.3f} ({t['rule']})")
    scores = report.get("against_true_ids")
    if scores:
        text += (f"; against the true ids: pairwise precision {scores['precision']:.3f}, recall "
                 f"{scores['recall']:.3f}, F1 {scores['f1']:.3f}")
    return text
