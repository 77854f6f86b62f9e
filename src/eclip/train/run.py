"""A training job from a recipe: read and validate the catalog, split it, build the model, train.

The CLI's ``eclip train`` comes through here, also under ``torchrun`` (every rank runs it; rank 0
reports and writes). With ``data.shards`` the listings are streamed from prepared shards instead.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from eclip.atomic import clean_stale_temps, write_text_atomic
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.load import load_catalog
from eclip.catalog.schema import Listing
from eclip.catalog.splits import Splits, split_listings
from eclip.config import to_dict, use_threads
from eclip.model import DualEncoder, load_model, model_from_config, train_tokenizer
from eclip.model.load import unused_by_start
from eclip.train.distributed import DistEnv, barrier, init_distributed, rank_log, shutdown
from eclip.train.recipe import Recipe
from eclip.train.sources import shard_listings
from eclip.train.trainer import TrainResult, train


def build_model(recipe: Recipe, train_listings: list[Listing]) -> DualEncoder:
    """The towers before alignment; a from-scratch text tower gets a tokenizer trained on the catalog."""
    config = dataclasses.replace(recipe.model, text_composer=dict(recipe.data.text))
    tokenizer = None
    if config.text_tower == "scratch":
        composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
        tokenizer = train_tokenizer([composer.compose(x) for x in train_listings],
                                    config.scratch_vocab_size)
    return model_from_config(config, tokenizer)  # model.init_from: that checkpoint


INIT_DIR = "init"  # OUTPUT_DIR/init: the model before training


def initial_model(recipe: Recipe, train_listings: list[Listing], env: DistEnv, out_dir: Path, *,
                  resume: bool = False) -> DualEncoder:
    """The model before training, seeded by ``train.seed`` and the same on every rank.

    Rank 0 builds it (a scratch text tower trains its tokenizer) and saves it to OUTPUT_DIR/init,
    the baseline for ``eclip eval --models init=OUTPUT_DIR/init eclip=OUTPUT_DIR/model``; in a job
    of several ranks every rank loads that copy. A resumed run keeps (and loads) an init/ that is
    already there: it is the model the run started from."""
    init_dir = out_dir / INIT_DIR
    if resume and (init_dir / "config.json").is_file():
        return load_model(init_dir)
    barrier()  # every rank has seen the old init/ before rank 0 may write a new one
    torch.manual_seed(recipe.train.seed)
    model = None
    if env.is_main:
        model = build_model(recipe, train_listings)
        model.save_pretrained(init_dir)
    barrier()
    if not env.distributed:
        return model
    return load_model(init_dir)  # every rank the same copy


def run_training(recipe: Recipe, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> TrainResult:
    """Read and split the catalog, build (and save to OUTPUT_DIR/init) the initial model, train it.

    With ``train.epochs=0`` or ``train.max_steps=0`` no step is taken: the initial model is saved
    as the trained one (OUTPUT_DIR/model), a baseline for ``eclip eval`` on the user's catalog."""
    env = init_distributed(recipe.train.device)
    log = rank_log(env, log)
    threads = use_threads(recipe.train.threads)
    log(f"torch threads: {threads} per process (train.threads"
        f"{'' if recipe.train.threads else ': unset, so ECLIP_THREADS or the free cores'})")
    out_dir = Path(recipe.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if env.is_main:  # what a run killed here left half written (init/, model/, reports)
        clean_stale_temps(out_dir)
    try:
        if recipe.data.shards:
            splits = _shard_splits(recipe, log)
        else:
            splits = _catalog_splits(recipe, out_dir, env, log)
        if unused := unused_by_start(recipe.model):  # e.g. a from-scratch recipe + --init-from
            log(f"model.init_from={recipe.model.init_from}: the checkpoint decides "
                f"{', '.join('model.' + name for name in unused)}; the recipe's values are not used")
        model = initial_model(recipe, splits.train, env, out_dir, resume=resume)
        if recipe.train.no_steps:
            return save_initial(recipe, model, out_dir, env, log)
        return train(recipe, model, splits.train, splits.val, resume=resume, log=log, env=env)
    finally:
        shutdown()


def save_initial(recipe: Recipe, model: DualEncoder, out_dir: Path, env: DistEnv,
                 log: Callable[[str], None]) -> TrainResult:
    """A run of 0 steps: the initial model saved as the trained one (and the recipe beside it)."""
    cfg = recipe.train
    setting = "train.epochs=0" if cfg.epochs == 0 else "train.max_steps=0"
    model_dir = Path(cfg.model_dir) if cfg.model_dir else out_dir / "model"
    if env.is_main:
        write_text_atomic(out_dir / "recipe.json", json.dumps(to_dict(recipe), indent=2))
        model.save_pretrained(model_dir)
    barrier()
    log(f"0 steps ({setting}): the model is the initial one; saved {model_dir} (the same weights "
        f"as {out_dir / INIT_DIR})")
    return TrainResult(model=model, model_dir=model_dir, steps=0, rank=env.rank)


def _catalog_splits(recipe: Recipe, out_dir: Path, env: DistEnv, log: Callable[[str], None]) -> Splits:
    read = load_catalog(recipe.data, report_dir=out_dir if env.is_main else None,
                        progress=recipe.train.progress and env.is_main, log=log)
    splits = split_listings(read.listings, recipe.data)
    if splits.note:
        log(splits.note)
    log(f"{len(splits.train)} training and {len(splits.val)} validation listings")
    return splits


def _shard_splits(recipe: Recipe, log: Callable[[str], None]) -> Splits:
    """Training data stream from the shards; the listings are read here only where a scratch text
    tower needs them for its tokenizer. Validation is not run (evaluate the saved model instead)."""
    needs_text = recipe.model.text_tower == "scratch"
    listings = shard_listings(recipe.data.shards, recipe.data.train_split) if needs_text else []
    log(f"streaming {recipe.data.shards} (split {recipe.data.train_split!r}); no validation during "
        "training from shards")
    return Splits(listings, [], [])

