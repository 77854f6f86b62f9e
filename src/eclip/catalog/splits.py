"""Splitting listings by catalog: no product is in two splits.

A catalog's place is decided by a stable hash of its catalog id (:func:`catalog_bucket`, the same
on every machine and Python run); a listing without a catalog id is a product of its own. Training
splits train / val (:func:`split_listings`), the evaluation train / val / test (:func:`eval_splits`);
both keep a ``split`` column where the catalog file has one.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from eclip.catalog.config import DataConfig
from eclip.catalog.schema import Listing
from eclip.errors import CatalogError

SPLITS = ("train", "val", "test")
VAL_SALT = "val:"  # the draw that carves val catalogs out of train ones (training and evaluation)


def catalog_bucket(group_id: str, salt: str = "") -> float:
    """A stable number in [0, 1) per catalog (``Listing.group_id``); ``salt`` draws another one."""
    return zlib.crc32((salt + group_id).encode("utf-8")) % 100_000 / 100_000


@dataclass
class Splits:
    train: list[Listing]
    val: list[Listing]
    test: list[Listing]
    note: str | None = None  # how val was made, where the split column did not give it


def split_listings(listings: list[Listing], data: DataConfig) -> Splits:
    """Training's splits: the catalog's ``split`` column when it has one, else ``data.val_fraction``
    of the catalogs held out as val by a stable hash.

    A split column without ``data.val_split`` rows (only train and test, say) gets its val carved
    from the train catalogs the same way (``data.val_fraction`` of them, by the hash ``eval``
    carves with), so that validation is never silently off; ``note`` says what was done."""
    if any(x.split for x in listings):
        pick = lambda name: [x for x in listings if x.split == name]  # noqa: E731
        splits = Splits(pick(data.train_split), pick(data.val_split), pick("test"))
        if splits.val or not splits.train:
            return splits
        return _carve_val(splits, data)
    train_rows, val_rows = [], []
    for x in listings:
        (val_rows if catalog_bucket(x.group_id) < data.val_fraction else train_rows).append(x)
    return Splits(train_rows, val_rows, [], note=(
        f"no split column: {len(val_rows)} listings of "
        f"{len({x.group_id for x in val_rows})} catalogs held out by catalog as validation "
        f"(data.val_fraction={data.val_fraction})"))


def _carve_val(splits: Splits, data: DataConfig) -> Splits:
    """Val carved by catalog from the train rows of a split column that has none."""
    lacking = f"the split column has no '{data.val_split}' rows"
    if data.val_fraction <= 0:
        return replace(splits, note=f"{lacking} and data.val_fraction=0: no validation during "
                                    f"training")
    train_rows, val_rows = [], []
    for x in splits.train:
        held = catalog_bucket(x.group_id, VAL_SALT) < data.val_fraction
        (val_rows if held else train_rows).append(x)
    if not val_rows:
        return replace(splits, note=f"{lacking}, and data.val_fraction={data.val_fraction} of its "
                                    f"{len({x.group_id for x in splits.train})} train catalogs "
                                    f"holds none: no validation during training")
    return Splits(train_rows, val_rows, splits.test, note=(
        f"{lacking}: {len(val_rows)} listings of {len({x.group_id for x in val_rows})} "
        f"'{data.train_split}' catalogs held out by catalog as validation "
        f"(data.val_fraction={data.val_fraction})"))


def assign_splits(listings: list[Listing], data: DataConfig) -> tuple[list[Listing], str | None]:
    """The listings with their training split written into ``split`` (as ``eclip prepare`` stores
    them), and a message saying what was done (None when nothing was).

    A catalog with a ``split`` column keeps it. Without one, :func:`split_listings` holds out
    ``data.val_fraction`` of the catalogs as ``data.val_split``; the others become
    ``data.train_split`` (train listings first, then val)."""
    if any(x.split for x in listings):
        return list(listings), None
    splits = split_listings(listings, data)
    assigned = ([replace(x, split=data.train_split) for x in splits.train]
                + [replace(x, split=data.val_split) for x in splits.val])
    return assigned, splits.note


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


HELD_OUT_SPLITS = ("val", "test")  # the evaluation's held-out listings


def only_splits(listings: list[Listing], names: list[str]) -> list[Listing]:
    """The listings whose split is one of ``names`` (e.g. an index of the training listings only);
    a CatalogError when none is."""
    kept = [x for x in listings if x.split in names]
    if not kept:
        raise CatalogError(f"no listing has split {', '.join(names)}")
    return kept


def held_out_warning(listings: list[Listing]) -> str | None:
    """A warning when ``listings`` include held-out (val / test) ones: a search index of them answers
    for them, so evaluating the service on them measures memory, not generalisation."""
    held_out = Counter(x.split for x in listings if x.split in HELD_OUT_SPLITS)
    if not held_out:
        return None
    return ("warning: " + ", ".join(f"{n} listings of split '{name}'"
                                    for name, n in sorted(held_out.items()))
            + " are indexed: evaluating on them measures memory, not generalisation (search and "
            "/classify answer with the listing itself); index only the training listings with "
            "--split train to evaluate on the others")


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
            b = catalog_bucket(listing.group_id)
            name = "train" if b < train_f else "val" if b < train_f + val_f else "test"
        split.append(name)
    source = "the catalog's split column" if all(given) else (
        "the catalog's split column, the rest by a hash of the catalog id" if any(given)
        else "a hash of the catalog id")
    if "val" not in split and "train" in split:
        share = val_f / max(train_f + val_f, 1e-9)
        split = ["val" if s == "train" and catalog_bucket(x.group_id, VAL_SALT) < share else s
                 for x, s in zip(listings, split)]
        source += "; val carved from train catalogs"
    return EvalSplits(list(listings), np.array(split, dtype=object), source)
