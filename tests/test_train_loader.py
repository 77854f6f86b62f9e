"""The trainer's data path on the shared loader machinery: batches arrive through
``sources.OnDevice`` (``DevicePrefetcher``: one batch read ahead on CUDA, forced here on the CPU),
whose position is that of the batches handed out, so a resumed run is exact; ``train.num_workers``
``auto`` takes the photo loader's worker rule."""

import functools
import os

import pytest
import torch

import eclip.train.trainer as trainer_mod
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.images import ImageTransform
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.errors import ConfigError
from eclip.model import DualEncoder
from eclip.train.data import (MIN_EPOCH_BATCHES, Collator, ListingDataset, loader_workers,
                              to_device)
from eclip.train.recipe import load_recipe
from eclip.train.sampler import CatalogBatchSampler
from eclip.train.sources import ListingSource, OnDevice
from eclip.train.trainer import train
from run_logs import assert_same_losses, assert_same_models, logged_losses

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tokenize(texts):
    return {"input_ids": torch.tensor([[len(t), sum(map(ord, t)) % 997] for t in texts])}


def listing_source(listings, workers=0):
    dataset = ListingDataset(listings, TextComposer(ComposerConfig(field_dropout={"brand": 0.5})),
                             ImageTransform(16, MEAN, STD, train=True), seed=5)
    sampler = CatalogBatchSampler(dataset.groups, 8, per_group=2, seed=5, drop_last=True)
    return ListingSource(dataset, sampler, Collator(tokenize), num_workers=workers, seed=5)


def assert_same_batch(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_read_ahead_hands_out_the_sources_batches_and_the_position_after_them(tiny_catalog):
    listings = read_catalog(tiny_catalog).listings[:48]
    plain = listing_source(listings)
    take = plain.units_per_epoch + 3  # across an epoch's end
    expected, positions = [], []
    for batch, _ in zip(plain, range(take)):
        expected.append(to_device(batch, torch.device("cpu")))
        positions.append((plain.state_dict(), plain.epoch))
    assert positions[-1][1] == 1

    ahead = OnDevice(listing_source(listings), "cpu", read_ahead=True)
    for i, batch in zip(range(take), ahead):
        assert "pixel_transform" not in batch and batch["pixel_values"].dtype == torch.float32
        assert_same_batch(batch, expected[i])
        # the source itself is a batch further; the wrapper says where the loop stands
        assert (ahead.state_dict(), ahead.epoch) == positions[i]
        assert ahead.source.state_dict() != positions[i][0]

    # resumed from a position saved mid-epoch: the very batches that followed it, read ahead by
    # a loader with a worker
    resumed = OnDevice(listing_source(listings, workers=1), "cpu", read_ahead=True)
    resumed.load_state_dict(positions[2][0])
    assert resumed.state_dict() == positions[2][0] and resumed.epoch == 0
    for i, batch in zip(range(3, take), resumed):
        assert_same_batch(batch, expected[i])


def _recipe(out, **train):
    overrides = [f"train.output_dir={out}", "train.batch_size=16", "train.epochs=1",
                 "train.max_steps=4", "train.log_every=1", "train.checkpoint_every=2",
                 "train.warmup_steps=1", "train.progress=false", "train.lr=0.01",
                 "data.text.field_dropout={brand: 0.5}"]
    return load_recipe(None, overrides + [f"train.{k}={v}" for k, v in train.items()])


def test_a_resumed_run_with_read_ahead_and_a_worker_equals_the_plain_run(
        tmp_path, tiny_model_dir, tiny_catalog, crash_in_loss, monkeypatch, one_thread):
    data = split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data)
    plain = tmp_path / "plain"
    train(_recipe(plain, num_workers=0), DualEncoder.from_pretrained(tiny_model_dir), data.train,
          data.val, log=lambda s: None)

    # what CUDA does (the next batch read and moved while the step runs), here on the CPU
    monkeypatch.setattr(trainer_mod, "OnDevice", functools.partial(OnDevice, read_ahead=True))
    ahead = tmp_path / "ahead"
    with crash_in_loss(4):  # after the checkpoint at step 2 and one more step
        train(_recipe(ahead, num_workers=1), DualEncoder.from_pretrained(tiny_model_dir),
              data.train, data.val, log=lambda s: None)
    train(_recipe(ahead, num_workers=1), DualEncoder.from_pretrained(tiny_model_dir), data.train,
          data.val, resume=True, log=lambda s: None)
    assert len(logged_losses(plain)) == 4
    assert_same_losses(logged_losses(plain), logged_losses(ahead), atol=1e-6)
    assert_same_models(plain / "model", ahead / "model", atol=1e-6)


def test_num_workers_auto_takes_the_photo_loaders_rule(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    auto = functools.partial(loader_workers, "auto", epoch_batches=MIN_EPOCH_BATCHES)
    assert auto(photos=True) == 7
    assert auto(photos=False) == 0  # a feature cache: text only, in-process
    # a few batches an epoch: a worker started every epoch would cost more than it saves
    assert loader_workers("auto", photos=True, epoch_batches=MIN_EPOCH_BATCHES - 1) == 0
    assert loader_workers(3, photos=False, epoch_batches=1) == 3
    assert loader_workers(0, photos=True, epoch_batches=10 ** 6) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: the cores shared among the ranks
    assert auto(photos=True) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert auto(photos=True) == 0

    assert load_recipe(None).train.num_workers == "auto"
    assert load_recipe(None, ["train.num_workers=2"]).train.num_workers == 2
    with pytest.raises(ConfigError, match="num_workers must be auto or an integer"):
        load_recipe(None, ["train.num_workers=many"])
    with pytest.raises(ConfigError, match=">= 0"):
        load_recipe(None, ["train.num_workers=-1"])
