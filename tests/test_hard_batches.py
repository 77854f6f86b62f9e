"""Hard-negative batches (``data.batching: hard``): batches grown from neighbourhoods of catalogs.

Constructed catalogs whose nearest catalogs are known (families of near centroids) check that a
batch is a family and keeps its catalogs' chunks whole; neighbourhoods switched off give exactly the
random batches; the similarity ceiling keeps near-duplicate catalogs apart; a resumed sampler plans
its epoch from the neighbourhoods of the interrupted one; 2 ranks (gloo) plan the same global
batches and get the same global losses as one process; a resumed training run with hard batches
equals the uninterrupted run; refreshed neighbourhoods with shards are a clear error (hard batches
from shards: tests/test_hard_shards.py).
"""

from __future__ import annotations

from functools import partial

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.errors import ConfigError
from eclip.model import load_model
from eclip.train.data import group_index
from eclip.train.loss import ContrastiveLoss
from eclip.train.neighbours import batch_order, catalog_centroids, nearest_catalogs
from eclip.train.recipe import load_recipe
from eclip.train.sampler import (CatalogBatchSampler, HardNegativeOrder, Neighbourhoods,
                                 RandomOrder, number_groups)
from eclip.train.sources import RankSlice
from eclip.train.trainer import train
from run_logs import assert_same_losses, logged_losses
from recipes import tiny_recipe
from ranks import run_ranks

FAMILIES, PER_FAMILY, ROWS_PER_CATALOG = 6, 4, 2


def families(noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Centroids of FAMILIES x PER_FAMILY catalogs, each family around its own direction (its
    catalogs are each other's nearest), numbered so that families interleave; rows: two per
    catalog, in shuffled order."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(32, FAMILIES)))[0].T  # orthonormal family directions
    count = FAMILIES * PER_FAMILY
    family_of = np.arange(count) % FAMILIES
    centroids = axes[family_of] + noise * rng.normal(size=(count, 32))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    rows = [c for c in range(count) for _ in range(ROWS_PER_CATALOG)]
    rng.shuffle(rows)
    return centroids.astype(np.float32), rows


def family_sampler(centroids, rows, seed=0, k=PER_FAMILY - 1, ceiling=None, **kwargs):
    # the sampler numbers catalogs by first appearance: map the table to those numbers
    numbers = number_groups(rows)
    order = np.empty(len(centroids), np.int64)
    order[numbers] = rows  # sampler number -> family catalog
    hoods = nearest_catalogs(centroids[order], k, ceiling=ceiling)
    batch = PER_FAMILY * ROWS_PER_CATALOG
    return CatalogBatchSampler(rows, batch, per_group=ROWS_PER_CATALOG, seed=seed,
                               order=HardNegativeOrder(hoods), **kwargs)


def test_a_hard_batch_is_a_family_of_near_catalogs_with_its_chunks_whole():
    centroids, rows = families()
    for seed in range(3):
        for epoch in range(2):
            batches = family_sampler(centroids, rows, seed=seed).batches(epoch)
            assert sorted(r for b in batches for r in b) == list(range(len(rows)))
            for batch in batches:
                catalogs = [rows[r] for r in batch]
                assert len({c % FAMILIES for c in catalogs}) == 1, catalogs  # one family
                assert all(catalogs.count(c) == ROWS_PER_CATALOG for c in catalogs)  # chunks whole
    # the random order on the same rows mixes families (what the hard order changes)
    random = CatalogBatchSampler(rows, PER_FAMILY * ROWS_PER_CATALOG, per_group=2).batches(0)
    assert any(len({rows[r] % FAMILIES for r in b}) > 1 for b in random)


def test_neighbours_of_the_same_category_come_first():
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(12, 8)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    categories = ["a" if c % 3 == 0 else "b" for c in range(12)]  # 4 in a, 8 in b
    hoods = nearest_catalogs(centroids, 5, categories=categories)
    sims = centroids @ centroids.T
    for c in range(12):
        same = [o for o in range(12) if o != c and categories[o] == categories[c]]
        same.sort(key=lambda o: -sims[c, o])
        expected = same[:5]
        if len(expected) < 5:  # then the nearest of the others
            others = sorted((o for o in range(12) if o != c and o not in same),
                            key=lambda o: -sims[c, o])
            expected += others[:5 - len(expected)]
        assert hoods.neighbours[c].tolist() == expected


@pytest.mark.parametrize("batch_size, per_group, drop_last", [(8, 2, False), (7, 3, True),
                                                               (5, 1, False), (16, 4, True)])
def test_switched_off_neighbourhoods_draw_exactly_the_random_batches(batch_size, per_group,
                                                                       drop_last):
    rng = np.random.default_rng(batch_size)
    ids = rng.integers(-2, 60, size=300).tolist()  # uneven catalogs, some rows without one
    off = DataConfig(batching="hard", hard_neighbours=0)  # no vectors needed: no model
    for seed in (0, 5):
        order = batch_order(off, None, [], ids)
        assert isinstance(order, HardNegativeOrder)
        hard = CatalogBatchSampler(ids, batch_size, per_group, seed=seed, drop_last=drop_last,
                                   order=order)
        plain = CatalogBatchSampler(ids, batch_size, per_group, seed=seed, drop_last=drop_last)
        for epoch in range(3):
            assert hard.batches(epoch) == plain.batches(epoch)
    assert isinstance(batch_order(DataConfig(), None, [], ids), RandomOrder)


def test_any_neighbourhoods_give_every_row_once_in_full_batches():
    rng = np.random.default_rng(7)
    for trial in range(40):
        rows = int(rng.integers(1, 200))
        ids = rng.integers(-3, rows // 2 + 1, size=rows).tolist()
        batch_size, per_group = int(rng.integers(1, 20)), int(rng.integers(1, 5))
        count = int(number_groups(ids).max()) + 1
        hoods = Neighbourhoods(rng.integers(-1, max(count, 1), size=(count, 4)),
                               rng.integers(-1, max(count, 1), size=(count, 2)))
        sampler = CatalogBatchSampler(ids, batch_size, per_group, seed=trial,
                                      order=HardNegativeOrder(hoods))
        for epoch in range(2):
            batches = sampler.batches(epoch)
            assert sorted(r for b in batches for r in b) == list(range(rows))
            assert all(len(b) == batch_size for b in batches[:-1])


def test_the_ceiling_keeps_near_duplicate_catalogs_apart():
    centroids, rows = families(noise=0.2)
    duplicates = [(0, FAMILIES), (1, 1 + FAMILIES)]  # same family: their batches would meet
    for a, b in duplicates:
        centroids[b] = centroids[a] + 0.01 * centroids[b]
        centroids[b] /= np.linalg.norm(centroids[b])
    sims = centroids @ centroids.T
    ceiling = 0.99
    assert all(sims[a, b] > ceiling for a, b in duplicates)
    assert sims[~np.eye(len(sims), dtype=bool)].max() > ceiling  # only the duplicate pairs
    assert (sims[~np.eye(len(sims), dtype=bool)] > ceiling).sum() == 2 * len(duplicates)

    def together(batches, a, b):
        return any({a, b} <= {rows[r] for r in batch} for batch in batches)

    met = 0
    for seed in range(4):
        for epoch in range(2):
            apart = family_sampler(centroids, rows, seed=seed, ceiling=ceiling).batches(epoch)
            # only the epoch's last batch may hold a pair: what is left over when all else is used
            assert not any(together(apart[:-1], a, b) for a, b in duplicates), (seed, epoch)
            near = family_sampler(centroids, rows, seed=seed).batches(epoch)
            met += sum(together(near, a, b) for a, b in duplicates)
    assert met > 0  # without the ceiling the neighbourhoods put them together


class TrainingModel:
    """Stands in for the model being trained: it changes with every batch, and its neighbourhoods
    (``compute``) are a function of its state."""

    def __init__(self, count: int, steps: int = 0):
        self.count, self.steps = count, steps

    def compute(self) -> Neighbourhoods:
        rng = np.random.default_rng(1000 + self.steps)
        return Neighbourhoods(rng.integers(0, self.count, size=(self.count, 3)))


def _walk(sampler, model: TrainingModel, batches: int) -> list[list[int]]:
    out = []
    while len(out) < batches:
        sampler.prepare_epoch(sampler.epoch)
        for batch in sampler:
            out.append(batch)
            model.steps += 1
            if len(out) == batches:
                break
    return out


def test_a_resumed_sampler_plans_its_epoch_from_the_interrupted_neighbourhoods():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40, size=200).tolist()
    count = len(set(ids))

    def sampler(model):
        return CatalogBatchSampler(ids, 10, 2, seed=1, order=HardNegativeOrder(
            model.compute(), model.compute, refresh_epochs=1))

    model = TrainingModel(count)
    full = _walk(sampler(model), model, 3 * 20)  # 20 batches an epoch: 3 epochs
    model = TrainingModel(count)
    interrupted = sampler(model)
    head = _walk(interrupted, model, 27)  # mid-epoch 1, after one refresh
    state = interrupted.state_dict()
    assert state["batches_done"] == 7 and state["order"]["planned_at"] == 1
    # the resumed run starts from the checkpoint's model, whose neighbourhoods differ from those
    # the epoch was planned with: the plan must come from the state
    model = TrainingModel(count, steps=27)
    resumed = sampler(model)
    resumed.load_state_dict(torch.load(_saved(state), weights_only=True))  # as in a checkpoint
    assert head + _walk(resumed, model, 33) == full
    # without the saved neighbourhoods the rest of the epoch would differ
    model = TrainingModel(count, steps=27)
    fresh = sampler(model)
    fresh.load_state_dict({"epoch": 1, "batches_done": 7})
    assert _walk(fresh, model, 13) != full[27:40]


def _saved(state) -> str:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "state.pt")
    torch.save(state, path)
    return path


# ------------------------------------------------------------------ 2 ranks == 1 rank

DIM, STEPS, BATCH = 6, 8, 12  # global batch of 12 rows, 6 per rank


def _plan_losses(catalog: str, model_dir: str, rank: int, world: int) -> list[float]:
    """Global losses of hard batches over 2 epochs (neighbourhoods refreshed each epoch) with
    embeddings fixed per listing: what the plan and the gathered loss give on this rank."""
    listings = read_catalog(catalog).listings
    model = load_model(model_dir)
    data = DataConfig(batching="hard", hard_neighbours=3, hard_refresh_epochs=1)
    groups = group_index(listings)
    order = batch_order(data, model, listings, groups, batch_size=64)
    sampler = CatalogBatchSampler(groups, BATCH, per_group=2, seed=4, drop_last=True, order=order)
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(len(listings), DIM, generator=gen), dim=1)
    text = torch.nn.functional.normalize(torch.randn(len(listings), DIM, generator=gen), dim=1)
    loss_fn = ContrastiveLoss("catalog")
    losses: list[float] = []
    while len(losses) < STEPS * 2:
        sampler.set_epoch(sampler.epoch)
        sampler.prepare_epoch(sampler.epoch)
        for rows in RankSlice(sampler, rank, world):
            loss = loss_fn(image[rows], text[rows], torch.tensor(10.0), groups[rows])
            losses.append(float(loss_fn.global_value(loss.detach())))
    return losses


def rank_worker(rank: int, world: int, port: int, out: Path, catalog: str, model_dir: str) -> None:
    from eclip.train.distributed import init_distributed, shutdown

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    init_distributed("cpu")
    torch.save(_plan_losses(catalog, model_dir, rank, world), out / f"rank{rank}.pt")
    shutdown()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_plan_the_same_hard_batches_and_losses_as_one(tmp_path, tiny_catalog,
                                                                 tiny_model_dir):
    single = _plan_losses(str(tiny_catalog), str(tiny_model_dir), 0, 1)
    run_ranks(rank_worker, 2, tmp_path, str(tiny_catalog), str(tiny_model_dir))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got == pytest.approx(single, abs=1e-6)


# ------------------------------------------------------------------ the trainer

_recipe = partial(tiny_recipe, base=[
    "train.batch_size=16", "train.epochs=2", "train.log_every=1", "train.checkpoint_every=3",
    "train.warmup_steps=2", "train.lr=0.01", "data.batching=hard", "data.hard_neighbours=3",
    "data.hard_refresh_epochs=1"])


@pytest.mark.slow
def test_a_resumed_run_with_hard_batches_equals_the_uninterrupted_run(tmp_path, tiny_catalog,
                                                                      tiny_model_dir,
                                                                      crash_in_loss):
    listings = read_catalog(tiny_catalog).listings
    data = split_listings(listings, load_recipe(None).data)
    # unit batches of 8 rows (multi-stream accumulation), 2 units a step from step 3 on
    extra = ("train.micro_batch_size=8",
             "train.batch_schedule=[{step: 0, batch_size: 8}, {step: 3, batch_size: 16}]")
    full = tmp_path / "full"
    result = train(_recipe(full, *extra), load_model(tiny_model_dir), data.train,
                   log=lambda s: None)
    assert result.steps >= 7
    crashed = tmp_path / "crashed"
    with crash_in_loss(result.steps - 1):  # in the second epoch, after a checkpoint in it
        train(_recipe(crashed, *extra), load_model(tiny_model_dir), data.train,
              log=lambda s: None)
    resumed = train(_recipe(crashed, *extra), load_model(tiny_model_dir),
                    data.train, resume=True, log=lambda s: None)
    assert resumed.steps == result.steps
    assert_same_losses(logged_losses(full), logged_losses(crashed), atol=1e-6)


def test_hard_batches_refreshed_from_shards_or_under_fsdp_are_a_clear_error(tmp_path,
                                                                          tiny_model_dir):
    from eclip.train.trainer import shard_data

    recipe = _recipe(tmp_path, f"data.shards={tmp_path}")
    model = load_model(tiny_model_dir)
    # shards plan hard batches in the shuffle buffer from the start model's vectors only
    with pytest.raises(ConfigError, match="data.hard_refresh_epochs needs the listings in memory"):
        shard_data(recipe, model, None, 4, None)
    with pytest.raises(ConfigError, match="under train.parallel=fsdp"):
        batch_order(DataConfig(batching="hard", hard_refresh_epochs=1), model, [], [], fsdp=True)
    with pytest.raises(ConfigError, match="data.batching must be one of random, hard"):
        DataConfig(batching="hardest")
    with pytest.raises(ConfigError, match="data.hard_negative_ceiling must be in"):
        DataConfig(hard_negative_ceiling=1.5)


def test_listings_of_one_catalog_id_given_or_mined_are_one_group():
    from eclip.catalog.schema import Listing

    listings = [Listing(product_id=str(i), catalog_id=cid, title="t", images=["x.jpg"])
                for i, cid in enumerate(["mined:7", "c1", "mined:7", None, None])]
    groups = group_index(listings).tolist()
    assert groups[0] == groups[2] != groups[1]  # the loss's positives: equal ids
    assert groups[3] == groups[4] == -1  # no id: each its own (number_groups splits them)
    assert number_groups(groups).tolist()[3:] == [-4, -5]


def test_centroids_are_unit_means_of_their_rows():
    vectors = np.array([[1, 0], [0, 1], [3, 4], [9, 9]], np.float32)
    numbers = np.array([0, 0, 1, -4])  # the last row has no catalog
    got = catalog_centroids(vectors, numbers, 2)
    np.testing.assert_allclose(got, [[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]], rtol=1e-6)
