"""What an evaluation runs on: the listings split by catalog, and which tasks their labels allow.

Probes train on ``train``, thresholds and hyper-parameters are chosen on ``val``, and every number in
the report is measured on ``test``. No catalog is in two splits.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from eclip.catalog.schema import Listing

SPLITS = ("train", "val", "test")
TASKS = ("category", "attribute", "matching", "clustering", "adult")
MIN_LABELLED = 2  # a split needs at least this many labelled listings for a task to run


def _bucket(group_id: str) -> float:
    """A stable number in [0, 1) per catalog (the same on every machine and Python run)."""
    return zlib.crc32(group_id.encode("utf-8")) % 100_000 / 100_000


@dataclass
class EvalSplits:
    """The listings and, per listing, its split; ``source`` says where the splits came from."""

    listings: list[Listing]
    split: np.ndarray  # "train" / "val" / "test" per listing
    source: str

    def index(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.split == name)

    def counts(self) -> dict[str, int]:
        return {name: int((self.split == name).sum()) for name in SPLITS}


def eval_splits(listings: list[Listing],
                fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> EvalSplits:
    """Train / val / test by catalog.

    A listing whose ``split`` field is train, val or test keeps it. The others are placed by a hash
    of their catalog id (``fractions`` of catalogs, deterministically). When the file gives train
    listings but no val listings, val is carved from the train catalogs the same way (the val share
    of ``fractions`` relative to train + val).
    """
    train_f, val_f, _ = fractions
    given = [x.split if x.split in SPLITS else None for x in listings]
    split = []
    for listing, name in zip(listings, given):
        if name is None:
            b = _bucket(listing.group_id)
            name = "train" if b < train_f else "val" if b < train_f + val_f else "test"
        split.append(name)
    source = "the catalog's split column" if all(given) else (
        "the catalog's split column, the rest by a hash of the catalog id" if any(given)
        else "a hash of the catalog id")
    if "val" not in split and "train" in split:
        share = val_f / max(train_f + val_f, 1e-9)
        split = ["val" if s == "train" and _bucket("val:" + x.group_id) < share else s
                 for x, s in zip(listings, split)]
        source += "; val carved from train catalogs"
    return EvalSplits(list(listings), np.array(split, dtype=object), source)


def _labelled(splits: EvalSplits, has) -> dict[str, int]:
    return {name: sum(1 for i in splits.index(name) if has(splits.listings[i])) for name in SPLITS}


def _missing(field: str, counts: dict[str, int], what: str) -> str | None:
    short = [name for name in SPLITS if counts[name] < MIN_LABELLED]
    if not short:
        return None
    if sum(counts.values()) == 0:
        return f"missing field '{field}': no listing has {what}"
    return (f"field '{field}': too few listings with {what} in the "
            f"{' and '.join(short)} split(s) ({', '.join(f'{k} {v}' for k, v in counts.items())})")


def task_availability(splits: EvalSplits) -> dict[str, str | None]:
    """Per task, ``None`` when it can run, else why not (the field that is missing or too thin)."""
    out: dict[str, str | None] = {}
    out["category"] = _missing("category", _labelled(splits, lambda x: bool(x.category)),
                               "a category")
    out["attribute"] = _missing("attributes", _labelled(splits, lambda x: bool(x.attributes)),
                                "attributes")
    sizes = Counter(x.catalog_id for x in splits.listings if x.catalog_id)
    shared = _labelled(splits, lambda x: bool(x.catalog_id) and sizes[x.catalog_id] > 1)
    reason = _missing("catalog_id", shared, "a catalog id shared with another listing")
    out["matching"] = out["clustering"] = reason
    positives = _labelled(splits, lambda x: x.adult is True)
    negatives = _labelled(splits, lambda x: x.adult is False)
    reason = _missing("adult", positives, "adult=true")
    out["adult"] = reason or _missing("adult", negatives, "adult=false")
    return out
