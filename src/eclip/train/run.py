"""A training job from a recipe: read and validate the catalog, split it, build the model, train.

The CLI's ``eclip train`` and the demo both come through here.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.readers import CatalogRead, read_catalog
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError
from eclip.model import DualEncoder, DualEncoderConfig, train_tokenizer
from eclip.train.recipe import Recipe
from eclip.train.trainer import TrainResult, train


@dataclass
class Splits:
    train: list[Listing]
    val: list[Listing]
    test: list[Listing]


def split_listings(listings: list[Listing], recipe: Recipe) -> Splits:
    """Use the catalog's ``split`` column when it has one, else hold out catalogs by a stable hash."""
    data = recipe.data
    if any(x.split for x in listings):
        pick = lambda name: [x for x in listings if x.split == name]  # noqa: E731
        return Splits(pick(data.train_split), pick(data.val_split), pick("test"))
    train_rows, val_rows = [], []
    for x in listings:
        bucket = zlib.crc32(x.group_id.encode("utf-8")) % 10_000 / 10_000
        (val_rows if bucket < data.val_fraction else train_rows).append(x)
    return Splits(train_rows, val_rows, [])


def load_catalog(recipe: Recipe, *, progress: bool = True) -> CatalogRead:
    data = recipe.data
    if not data.catalog:
        raise ConfigError("no catalog given: pass --catalog FILE or set data.catalog in the recipe")
    return read_catalog(data.catalog, image_root=data.image_root, column_map=data.column_map or None,
                        strict=data.strict, progress=progress)


def build_model(recipe: Recipe, train_listings: list[Listing]) -> DualEncoder:
    """The towers before alignment; a from-scratch text tower gets a tokenizer trained on the catalog."""
    config = DualEncoderConfig.from_dict({**recipe.model, "text_composer": dict(recipe.data.text)})
    tokenizer = None
    if config.text_tower == "scratch":
        composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
        tokenizer = train_tokenizer([composer.compose(x) for x in train_listings],
                                    config.scratch_vocab_size)
    return DualEncoder.build(config, tokenizer=tokenizer)


def run_training(recipe: Recipe, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> TrainResult:
    read = load_catalog(recipe, progress=recipe.train.progress)
    out_dir = Path(recipe.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    read.write_report(out_dir / "bad_rows.json")
    log(read.summary())
    if read.issues:
        log(f"bad-row report: {out_dir / 'bad_rows.json'}")
    splits = split_listings(read.listings, recipe)
    log(f"{len(splits.train)} training and {len(splits.val)} validation listings")
    model = build_model(recipe, splits.train)
    return train(recipe, model, splits.train, splits.val, resume=resume, log=log)
