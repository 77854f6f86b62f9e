"""Training on mined catalogs (``data.catalog_source``: ``mined`` or ``given+mined``).

Before training, the model a run starts from mines the training listings' catalogs
(:func:`eclip.mining.mine_catalogs`); training then sees the mined ids as it would see given ones:
listings of one mined catalog are positives of each other, never negatives. With
``data.mining.rounds: N`` the trained model mines again and a fresh copy of the start model trains
on the new groups, N times in all; the last round is the run's model (the earlier ones are kept in
``OUTPUT_DIR/round<k>/``). Every round trains from the start model for the same steps, so rounds
change the catalogs and nothing else.

Rank 0 mines and sends the ids to the other ranks, so that every rank trains on the same catalogs
even where floating point differs between devices. The report of each round is
``OUTPUT_DIR/mining.json`` (``mining_round<k>.json`` for the earlier rounds).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from eclip.atomic import write_text_atomic
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError
from eclip.mining import mine_catalogs
from eclip.train.distributed import DistEnv
from eclip.train.recipe import Recipe


def mined_listings(recipe: Recipe, model, listings: list[Listing], env: DistEnv, *,
                   image_cache=None, report_name: str = "mining.json",
                   log: Callable[[str], None] = print) -> list[Listing]:
    """``listings`` with the catalog ids that ``recipe.data.catalog_source`` asks for, mined with
    ``model`` on rank 0 and the same on every rank."""
    ids = None
    if env.is_main:
        result = mine_catalogs(model, listings, recipe.data.mining,
                               source=recipe.data.catalog_source, image_cache=image_cache,
                               progress=recipe.train.progress, log=log)
        ids = [x.catalog_id for x in result.listings]
        out_dir = Path(recipe.train.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / report_name, json.dumps(result.report, indent=1) + "\n")
    if env.distributed and dist.is_initialized():
        box = [ids]
        dist.broadcast_object_list(box, src=0)
        ids = box[0]
    return [dataclasses.replace(x, catalog_id=ids[i]) for i, x in enumerate(listings)]


def train_on_mined_catalogs(recipe: Recipe, model, listings: list[Listing], env: DistEnv,
                            train_once: Callable, *, image_cache=None, resume: bool = False,
                            log: Callable[[str], None] = print):
    """``data.mining.rounds`` rounds of mining and training (see the module); ``train_once(recipe,
    model, listings)`` is one training run, its result has ``.model``."""
    rounds = recipe.data.mining.rounds
    if resume and rounds > 1:
        raise ConfigError("a run of several mining rounds (data.mining.rounds > 1) cannot be "
                          "resumed: start it again, or resume with data.mining.rounds=1")
    start = copy.deepcopy(model) if rounds > 1 else None
    miner = model
    result = None
    for k in range(rounds):
        last = k == rounds - 1
        log(f"mining round {k + 1}/{rounds}: catalogs from "
            f"{'the start model' if k == 0 else 'the model trained in round ' + str(k)}")
        ids_for = mined_listings(recipe, miner, listings, env, image_cache=image_cache, log=log,
                                 report_name="mining.json" if last else f"mining_round{k + 1}.json")
        run = recipe
        if not last:
            run = copy.deepcopy(recipe)
            where = Path(recipe.train.output_dir) / f"round{k + 1}"
            run.train.output_dir = str(where)
            run.train.model_dir = str(where / "model")
        result = train_once(run, model if last else copy.deepcopy(start), ids_for)
        miner = result.model
    return result
