"""Hard-negative batches inside a shard stream's shuffle buffer (``data.batching: hard`` with
``data.shards``; ``train/neighbours.py`` ``BufferOrder``).

Vectors built so that catalogs fall into known families check that the batches cut from a
buffer hold look-alike catalogs (more than the random stream's); neighbourhoods switched off give
exactly the random stream; a resumed loader hands out the same hard batches; rank r of 2 reads
what worker r of one rank with 2 workers reads, so 2 ranks see the same global batches and losses
as one; the trainer plans them from the start model's vectors of the shards.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.config import DataConfig
from eclip.catalog.images import ImageTransform
from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import ShardIndex, prepare_shards, read_shard
from eclip.errors import ConfigError
from eclip.model import DualEncoder
from eclip.train.data import Collator
from eclip.train.loss import ContrastiveLoss
from eclip.train.neighbours import BufferOrder, shard_batch_order, shard_vectors
from eclip.train.stream import ShardStream

TRANSFORM = ImageTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=True)
COMPOSER = ComposerConfig(field_dropout={"brand": 0.5})
FAMILIES, DIM = 4, 16


@pytest.fixture(scope="module")
def shard_dir(tiny_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("hard_shards") / "shards"
    prepare_shards(read_catalog(tiny_catalog, check_images=False), out, shard_size=16,
                   image_size=24, composer_config=COMPOSER, progress=False)
    return out


@pytest.fixture(scope="module")
def records(shard_dir):
    """Every sample's record by its index in the shard set."""
    index = ShardIndex.load(shard_dir)
    return {s.index: s.record for shard in index.shards
            for s in read_shard(shard_dir / shard.name, images=False)}


def family(catalog: str | None) -> int:
    """c007 -> 7 % FAMILIES (the family shards' catalogs); other ids by a hash."""
    if not catalog:
        return -1
    if catalog[1:].isdigit():
        return int(catalog[1:]) % FAMILIES
    return hashlib.blake2b(catalog.encode(), digest_size=2).digest()[0] % FAMILIES


def family_order(records, batch_size: int, k: int = 3) -> BufferOrder:
    """Vectors: each catalog near its family's direction (a catalog's listings alike)."""
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(DIM, FAMILIES)))[0].T
    indices = sorted(records)
    vectors = np.stack([axes[max(family(records[i].get("catalog_id")), 0)]
                        + 0.1 * rng.normal(size=DIM) for i in indices]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return BufferOrder(batch_size, k, vectors=vectors, rows={i: r for r, i in enumerate(indices)})


def stream(shard_dir, **kwargs):
    options = {"transform": TRANSFORM, "composer": TextComposer(COMPOSER), "seed": 3,
               "shuffle_buffer": 40, "split": "train", "per_group": 2, **kwargs}
    return ShardStream(shard_dir, **options)


def worker_items(s: ShardStream, worker: int = 0, workers: int = 0) -> list[int]:
    return [item["index"] for item in s.iter_worker(worker, workers)]


def same_family_share(batches, records) -> float:
    same = pairs = 0
    for batch in batches:
        catalogs = [records[i].get("catalog_id") for i in batch]
        for a in range(len(catalogs)):
            for b in range(a + 1, len(catalogs)):
                if catalogs[a] and catalogs[b] and catalogs[a] != catalogs[b]:
                    pairs += 1
                    same += family(catalogs[a]) == family(catalogs[b])
    return same / pairs


@pytest.fixture(scope="module")
def family_shards(tmp_path_factory):
    """96 listings: 48 catalogs of 2, family = catalog number % 4 (12 catalogs a family)."""
    from PIL import Image

    from eclip.catalog.schema import Listing

    out = tmp_path_factory.mktemp("family_shards")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out / "red.jpg")
    listings = [Listing(product_id=f"p{n}-{copy}", catalog_id=f"c{n:03d}", title=f"item {n}",
                        images=[str(out / "red.jpg")], split="train")
                for n in range(48) for copy in range(2)]
    prepare_shards(listings, out / "shards", shard_size=32, image_size=8, progress=False)
    index = ShardIndex.load(out / "shards")
    records = {s.index: s.record for shard in index.shards
               for s in read_shard(out / "shards" / shard.name, images=False)}
    return out / "shards", records


def test_buffer_batches_hold_look_alike_catalogs_and_every_sample_once(family_shards):
    """A block of 48 samples holds about 6 catalogs of each family; a batch of 8 is 4 catalogs:
    hard batches are mostly one family;
    random batches share a family about 1 pair in 4."""
    shards, records = family_shards
    batch = 8
    hard_share, random_share = [], []
    for seed in (3, 4, 5):
        for epoch in (0, 1):
            hard = stream(shards, seed=seed, epoch=epoch, shuffle_buffer=48,
                          batch_order=family_order(records, batch))
            plain = stream(shards, seed=seed, epoch=epoch, shuffle_buffer=48)
            got, want = worker_items(hard), worker_items(plain)
            assert sorted(got) == sorted(want) == sorted(records)  # every sample once
            hard_share.append(same_family_share([got[i:i + batch] for i in range(0, 96, batch)],
                                                records))
            random_share.append(same_family_share(
                [want[i:i + batch] for i in range(0, 96, batch)], records))
            # a catalog's two listings stay together in one batch
            where = {}
            for position, i in enumerate(got):
                where.setdefault(records[i]["catalog_id"], set()).add(position // batch)
            assert all(len(batches) == 1 for batches in where.values())
    # (a family's catalogs in a block rarely fill whole batches: its leftovers mix at its end)
    assert max(random_share) < 0.3 < 0.55 < min(hard_share), (random_share, hard_share)


@pytest.mark.parametrize("buffer, batch, workers", [(40, 8, 0), (10, 6, 2), (25, 7, 3)])
def test_switched_off_neighbourhoods_give_exactly_the_random_stream(shard_dir, buffer, batch,
                                                                   workers):
    off = BufferOrder(batch, 0)  # no vectors needed
    for epoch in (0, 1):
        for worker in range(max(workers, 1)):
            hard = stream(shard_dir, shuffle_buffer=buffer, epoch=epoch, batch_order=off)
            plain = stream(shard_dir, shuffle_buffer=buffer, epoch=epoch)
            assert worker_items(hard, worker, workers) == worker_items(plain, worker, workers)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_hands_out_the_same_hard_batches(shard_dir, records, workers):
    batch = 6

    def fresh():
        return stream(shard_dir, batch_order=family_order(records, batch)).loader(
            batch, num_workers=workers, drop_last=True)

    def run(loader, epochs=2):
        out = []
        for epoch in range(loader.epoch, epochs):
            loader.set_epoch(epoch)
            for b in loader:
                out.append((b["index"].tolist(), json.loads(json.dumps(loader.state_dict()))))
        return out

    full = run(fresh())
    per_epoch = len(fresh())
    assert len(full) == 2 * per_epoch
    for k in (2, per_epoch - 1, per_epoch + 3):
        resumed = fresh()
        resumed.load_state_dict(full[k - 1][1])
        assert [b for b, _ in run(resumed)] == [b for b, _ in full[k:]], k


def test_two_ranks_read_what_two_workers_of_one_rank_read_and_lose_the_same(family_shards):
    """Rank r of 2 (one worker each) reads worker r's slice of a single rank with 2 workers, hard
    order included; so step k of 2 ranks (rank 0's and rank 1's k-th batch, the loss gathered)
    is one rank's batches 2k and 2k+1 (the loader's round-robin) as one global batch."""
    shard_dir, records = family_shards  # 96 samples: 48 a rank, none sits out
    batch = 6
    order = family_order(records, batch)
    one = stream(shard_dir, batch_order=order, shuffle_buffer=20)
    ranks = [stream(shard_dir, batch_order=order, shuffle_buffer=20, rank=r, world_size=2)
             for r in range(2)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = [worker_items(one, w, 2) for w in range(2)]
        assert [worker_items(s) for s in ranks] == single
    # the global losses step by step, with a fixed vector per sample
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen), dim=1)
    text = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen), dim=1)
    loss_fn = ContrastiveLoss("catalog")
    groups = {i: int(records[i]["catalog_id"][1:]) for i in records}

    def loss(rows):
        return float(loss_fn(image[rows], text[rows], torch.tensor(10.0),
                             torch.tensor([groups[i] for i in rows])))

    for s in (one, *ranks):
        s.set_epoch(0)
    loader = one.loader(batch, num_workers=2, drop_last=True)
    one_rank = [b["index"].tolist() for b in loader]  # worker 0, 1, 0, 1, ...
    per_rank = [[rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]
                for rows in (worker_items(s) for s in ranks)]
    steps = min(len(per_rank[0]), len(per_rank[1]))
    two_ranks = [loss(per_rank[0][k] + per_rank[1][k]) for k in range(steps)]
    single_steps = [loss(one_rank[2 * k] + one_rank[2 * k + 1]) for k in range(steps)]
    assert steps >= 6 and two_ranks == pytest.approx(single_steps, abs=1e-6)


def test_the_trainer_plans_hard_shard_batches_from_the_start_models_vectors(shard_dir,
                                                                          tiny_model_dir):
    from eclip.train.recipe import load_recipe
    from eclip.train.trainer import shard_data
    from eclip.train.distributed import DistEnv

    model = DualEncoder.from_pretrained(tiny_model_dir)
    vectors, rows, categories = shard_vectors(model, shard_dir, "train", "both", batch_size=32)
    assert vectors.shape == (83, 32) and len(rows) == len(categories) == 83
    assert vectors.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert all(categories)
    recipe = load_recipe(None, [f"data.shards={shard_dir}", "data.batching=hard",
                                "data.hard_neighbours=3", "data.shuffle_buffer=30",
                                "train.progress=false"])
    plan = shard_data(recipe, model, TextComposer(ComposerConfig()), 8, DistEnv())
    order = plan.source.source.loader.stream.batch_order
    assert isinstance(order, BufferOrder) and order.batch_size == 8 and order.k == 3
    np.testing.assert_allclose(order.vectors, vectors, atol=1e-6)  # the same vectors, recomputed
    batches = [b["index"].tolist() for b in plan.source.source.loader]
    flat = [i for b in batches for i in b]
    assert len(batches) == 83 // 8 and len(set(flat)) == len(flat) and set(flat) <= set(rows)
    # refreshing needs the listings in memory; a buffer of one sample cannot hold a batch's plan
    refreshed = load_recipe(None, [f"data.shards={shard_dir}", "data.batching=hard",
                                   "data.hard_refresh_epochs=1"])
    with pytest.raises(ConfigError, match="data.hard_refresh_epochs needs the listings in memory"):
        shard_batch_order(refreshed.data, model, 8)
    with pytest.raises(ConfigError, match="data.shuffle_buffer must be above 1"):
        stream(shard_dir, shuffle_buffer=1, batch_order=BufferOrder(8, 0))
    with pytest.raises(ConfigError, match="need the vectors"):
        BufferOrder(8, 3)
    assert shard_batch_order(DataConfig(), model, 8) is None


@pytest.mark.slow
def test_a_run_with_hard_shard_batches_resumes_with_the_same_losses(tmp_path, shard_dir,
                                                                    tiny_model_dir, crash_in_loss,
                                                                    one_thread):
    from eclip.train.recipe import load_recipe
    from eclip.train.trainer import train
    from run_logs import assert_same_losses, logged_losses

    def recipe(out):
        return load_recipe(None, [
            f"train.output_dir={out}", f"data.shards={shard_dir}", "data.shuffle_buffer=30",
            "data.batching=hard", "data.hard_neighbours=3", "train.max_steps=6",
            "train.batch_size=8", "train.checkpoint_every=2", "train.log_every=1",
            "train.warmup_steps=1", "train.progress=false", "train.lr=0.01"])

    full = tmp_path / "full"
    train(recipe(full), DualEncoder.from_pretrained(tiny_model_dir), [], log=lambda s: None)
    crashed = tmp_path / "crashed"
    with crash_in_loss(4):  # in step 4, after the checkpoint of step 2, mid-epoch
        train(recipe(crashed), DualEncoder.from_pretrained(tiny_model_dir), [], log=lambda s: None)
    train(recipe(crashed), DualEncoder.from_pretrained(tiny_model_dir), [], resume=True,
          log=lambda s: None)
    expected = logged_losses(full)
    assert sorted(expected) == list(range(1, 7))
    assert_same_losses(expected, logged_losses(crashed), atol=1e-5)


def test_the_streams_packing_uses_every_unit_once_and_is_the_shuffle_without_neighbours():
    from eclip.train.sampler import HardNegativeOrder, Neighbourhoods

    rng = np.random.default_rng(11)
    for trial in range(40):
        units = int(rng.integers(1, 120))
        count = int(rng.integers(1, units + 1))
        groups = rng.integers(-2, count, size=units)  # some units without a catalog
        lengths = rng.integers(1, 4, size=units)
        batch, fill = int(rng.integers(1, 12)), int(rng.integers(0, 30))
        hoods = Neighbourhoods(rng.integers(-1, count, size=(count, 3)),
                               rng.integers(-1, count, size=(count, 2)))
        got = HardNegativeOrder(hoods).arrange(groups, lengths, batch, fill=fill, whole=False)
        assert sorted(got.tolist()) == list(range(units))
        off = HardNegativeOrder(Neighbourhoods(np.full((count, 0), -1)))
        assert off.arrange(groups, lengths, batch, fill=fill, whole=False).tolist() == \
            list(range(units))
