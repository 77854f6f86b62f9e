"""Prepared shards and the streaming loader: fields survive, every sample once, exact resume."""

import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pytest
import torch
from PIL import Image

import eclip.catalog.shards as shards_module
import eclip.train.stream as stream_module
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.config import DataConfig
from eclip.catalog.images import ImageTransform
from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import INDEX_NAME, ShardIndex, decode_jpeg, prepare_shards, read_shard
from eclip.cli import main
from eclip.engines.jobs import prepare_catalog
from eclip.errors import ConfigError, EclipError
from eclip.catalog.schema import catalog_group_id
from eclip.train.data import Collator, item_rng
from eclip.train.stream import ShardStream

COMPOSER = ComposerConfig(field_dropout={"brand": 0.5, "attributes": 0.5})
TRANSFORM = ImageTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=True)


@pytest.fixture(scope="module")
def catalog_read(tiny_catalog):
    return read_catalog(tiny_catalog, check_images=False)


@pytest.fixture(scope="module")
def shard_dir(catalog_read, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shards"
    prepare_shards(catalog_read, out, shard_size=16, image_size=24, composer_config=COMPOSER,
                   progress=False)
    return out


def stream(shard_dir, **kwargs):
    options = {"transform": TRANSFORM, "composer": TextComposer(COMPOSER), "seed": 7,
               "shuffle_buffer": 10, "split": "train", **kwargs}
    return ShardStream(shard_dir, **options)


def indices(items):
    return [item["index"] for item in items]


def all_samples(shard_dir):
    index = ShardIndex.load(shard_dir)
    return [s for shard in index.shards for s in read_shard(shard_dir / shard.name)]


def test_prepare_round_trips_listing_fields_text_and_images(shard_dir, catalog_read):
    index = ShardIndex.load(shard_dir)
    by_id = {x.product_id: x for x in catalog_read.listings}
    assert index.data["samples"] == len(by_id) == 120
    assert index.splits == {"train": 83, "val": 9, "test": 28}
    assert index.composer == COMPOSER.to_dict() and index.image_size == 24
    assert index.data["source"] == catalog_read.path
    names = [s.name for s in index.shards]
    assert names == [f"shard-{i:06d}.tar" for i in range(len(names))]
    first = 0
    for shard in index.shards:
        assert 0 < shard.samples <= 16 and shard.first_index == first
        first += shard.samples
        splits = {s.record["split"] for s in read_shard(shard_dir / shard.name)}
        assert splits == {shard.split}
    assert sorted(p.name for p in shard_dir.iterdir()) == sorted(
        [INDEX_NAME] + [s.name for s in index.shards])  # no temporary files left

    composer = TextComposer(COMPOSER)
    samples = all_samples(shard_dir)
    assert [s.index for s in samples] == list(range(120))
    for sample in samples:
        listing = by_id[sample.record["product_id"]]
        for field in ("title", "catalog_id", "brand", "category", "attributes", "adult", "lang",
                      "split"):
            assert sample.record[field] == getattr(listing, field), field
        assert sample.record["text"] == composer.compose(listing)  # composed, no dropout
        assert sample.record["source_images"] == listing.images
        assert len(sample.images) == len(listing.images)  # every image of the listing is kept
        for data, path in zip(sample.images, listing.images):
            stored, original = decode_jpeg(data), Image.open(path)
            assert min(stored.size) == min(24, min(original.size))
            assert abs(stored.size[0] / stored.size[1] - original.size[0] / original.size[1]) < 0.1
    assert list(index.records()) == [s.record for s in samples]
    assert [r["index"] for r in index.records("val")] == [
        s.index for s in samples if s.record["split"] == "val"]
    # Listings of one catalog are written together (within a split).
    groups = [by_id[s.record["product_id"]].group_id for s in samples]
    changes = [a for a, b in zip(groups, groups[1:]) if a != b]
    assert len(changes) + 1 == len(set(groups)) < 120


def test_shards_open_with_webdataset(shard_dir):
    import webdataset

    name = ShardIndex.load(shard_dir).shards[0].name
    seen = list(webdataset.WebDataset(str(shard_dir / name), shardshuffle=False))
    ours = list(read_shard(shard_dir / name))
    assert [s["__key__"] for s in seen] == [f"{s.index:09d}" for s in ours]
    assert [json.loads(s["json"]) for s in seen] == [s.record for s in ours]
    assert [s["0.jpg"] for s in seen] == [s.images[0] for s in ours]


def test_items_are_listing_dataset_items_and_collate(shard_dir, catalog_read):
    by_id = {x.product_id: x for x in catalog_read.listings}
    pid = {s.index: s.record["product_id"] for s in all_samples(shard_dir)}
    composer = TextComposer(COMPOSER)
    s = stream(shard_dir, epoch=2)
    items = list(s)
    assert len(items) == 83
    dropped = 0
    for item in items:
        listing = by_id[pid[item["index"]]]
        assert item["text"] == composer.compose(listing, item_rng(7, 2, item["index"]))
        dropped += item["text"] != composer.compose(listing)
        assert item["group"].dtype == torch.long and item["group"].dim() == 0
        assert item["group"].item() == catalog_group_id(listing.catalog_id)
        assert item["pixel_values"].shape == (3, 16, 16)
    assert dropped > 10  # field dropout is applied
    batch = Collator(lambda texts: {"input_ids": torch.ones(len(texts), 3, dtype=torch.long)})(
        items[:5])
    assert batch["pixel_values"].shape == (5, 3, 16, 16)
    assert batch["index"].tolist() == indices(items[:5])
    # Without a composer the text stored at prepare time is used.
    plain = stream(shard_dir, composer=None, epoch=2)
    assert [item["text"] for item in islice(plain, 5)] == [
        composer.compose(by_id[pid[i]]) for i in indices(items[:5])]


def test_every_sample_once_per_epoch_across_ranks_and_workers(shard_dir):
    train_ids = {s.index for s in all_samples(shard_dir) if s.record["split"] == "train"}
    for world_size in (2, 3):
        seen = []
        for rank in range(world_size):
            s = stream(shard_dir, rank=rank, world_size=world_size)
            per_rank = [i for w in range(2) for i in indices(s.iter_worker(w, 2))]
            assert len(per_rank) == 83 // world_size
            seen += per_rank
        assert len(seen) == len(set(seen)) and set(seen) <= train_ids
        assert len(train_ids - set(seen)) == 83 % world_size  # the remainder sits out
    # With an even split nothing is left out; 2 ranks x 2 workers cover all 120 samples.
    seen = [i for rank in range(2) for w in range(2)
            for i in indices(stream(shard_dir, split=None, rank=rank, world_size=2)
                             .iter_worker(w, 2))]
    assert sorted(seen) == list(range(120))


def test_equal_batch_counts_on_every_rank(shard_dir):
    for drop_last in (False, True):
        lengths = {len(stream(shard_dir, rank=r, world_size=3).loader(4, num_workers=2,
                                                                      drop_last=drop_last))
                   for r in range(3)}
        # 83 // 3 = 27 samples per rank; worker slices of 14 and 13: 4 + 4 batches, or 3 + 3.
        assert lengths == {6 if drop_last else 8}


def test_order_is_deterministic_per_seed_and_changes_with_epoch(shard_dir):
    first = indices(stream(shard_dir))
    assert first == indices(stream(shard_dir))
    assert first != indices(stream(shard_dir, seed=8))
    again = stream(shard_dir)
    again.set_epoch(1)
    later = indices(again)
    assert later != first and sorted(later) == sorted(first)
    assert indices(stream(shard_dir, train=False)) == sorted(first)  # evaluation: file order


def test_per_group_keeps_listings_of_a_catalog_together(shard_dir):
    catalog = {s.index: s.record["catalog_id"] for s in all_samples(shard_dir)}

    def adjacent_pairs(per_group):
        order = indices(stream(shard_dir, shuffle_buffer=40, per_group=per_group))
        return sum(catalog[a] == catalog[b] for a, b in zip(order, order[1:]))

    assert adjacent_pairs(2) >= 25 > 8 >= adjacent_pairs(1)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers,batch_size,drop_last", [(0, 6, False), (2, 6, True),
                                                               (3, 9, False)])
def test_resume_continues_with_the_same_batches(shard_dir, num_workers, batch_size, drop_last):
    """83 samples: 1 worker gives 14 batches of 6; 2 workers (42 + 41 samples, drop_last) 7 and
    6 batches; 3 workers (28 + 28 + 27) 4, 4 and 3 batches, so the round-robin skips worker 2 in
    the last round. Interruptions early, in the last round and in the second epoch."""
    def run(loader, epochs):
        """Batches (as comparable keys) and the position saved after each one."""
        out = []
        for epoch in range(loader.epoch, epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                position = json.loads(json.dumps(loader.state_dict()))  # a checkpoint: plain data
                out.append(((batch["index"].tolist(), batch["text"],
                             batch["pixel_values"].sum().item()), position))
        return out

    def fresh():
        return stream(shard_dir).loader(batch_size, num_workers=num_workers, drop_last=drop_last)

    full = run(fresh(), 2)
    per_epoch = len(fresh())
    assert per_epoch == {0: 14, 2: 13, 3: 11}[num_workers] and len(full) == 2 * per_epoch
    for k in (3, per_epoch - 1, per_epoch + 4):
        resumed = fresh()
        resumed.load_state_dict(full[k - 1][1])  # interrupted after k batches
        assert [b for b, _ in run(resumed, 2)] == [b for b, _ in full[k:]], k
    state = full[2][1]
    if num_workers:
        other = stream(shard_dir).loader(batch_size, num_workers=num_workers - 1)
        with pytest.raises(ConfigError, match="same number"):
            other.load_state_dict(state)


def test_position_after_an_epoch_is_the_next_epoch_and_batch_size_may_change(shard_dir):
    loader = stream(shard_dir).loader(10, num_workers=2)
    full = [i for batch in loader for i in batch["index"].tolist()]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["consumed"] == []
    head = stream(shard_dir).loader(10, num_workers=2)
    taken = [i for batch in islice(head, 3) for i in batch["index"].tolist()]
    bigger = stream(shard_dir).loader(16, num_workers=2)
    bigger.load_state_dict(head.state_dict())
    rest = [i for batch in bigger for i in batch["index"].tolist()]
    assert sorted(taken + rest) == sorted(full) and len(taken + rest) == len(full)


def test_corrupt_image_is_skipped_and_counted_at_prepare_time(catalog_read, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    listings = list(catalog_read.listings)
    single = next(i for i, x in enumerate(listings) if len(x.images) == 1)
    double = next(i for i, x in enumerate(listings) if len(x.images) == 2)
    listings[single] = replace(listings[single], images=[str(broken)])
    listings[double] = replace(listings[double], images=[listings[double].images[0], str(broken)])
    index = json.loads(prepare_shards(listings, tmp_path / "out", shard_size=50, image_size=16,
                                      progress=False).read_text())
    assert index["samples"] == 119
    assert index["skipped"]["undecodable_images"] == 2
    assert index["skipped"]["listings_without_images"] == 1
    assert {(i["product_id"], i["action"]) for i in index["issues"]} == {
        (listings[single].product_id, "dropped_image"), (listings[single].product_id,
                                                         "skipped_listing"),
        (listings[double].product_id, "dropped_image")}
    stored = {s.record["product_id"]: s for s in all_samples(tmp_path / "out")}
    assert listings[single].product_id not in stored
    assert len(stored[listings[double].product_id].images) == 1


def test_interrupted_prepare_leaves_no_partial_shard_and_no_index(catalog_read, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "out"
    prepare_shards(catalog_read.listings[:30], out, shard_size=8, image_size=16, progress=False)
    assert (out / INDEX_NAME).is_file()
    calls = {"n": 0}
    real_jpeg = shards_module._jpeg

    def failing_jpeg(image, quality):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real_jpeg(image, quality)

    monkeypatch.setattr(shards_module, "_jpeg", failing_jpeg)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(catalog_read.listings, out, shard_size=8, image_size=16, progress=False)
    assert not (out / INDEX_NAME).exists()  # the old index no longer vouches for the folder
    # 19 images encoded: two complete shards of 8; the third was never renamed into place and the
    # shards of the earlier preparation are gone.
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    for path in out.iterdir():
        assert len(list(read_shard(path))) == 8
    with pytest.raises(EclipError, match="index.json"):
        stream(out)


def test_iteration_is_lazy_and_a_damaged_shard_is_named(shard_dir, tmp_path, monkeypatch):
    opened = []
    real_read_shard = stream_module.read_shard

    def recording(path, **kwargs):
        opened.append(path.name)
        return real_read_shard(path, **kwargs)

    monkeypatch.setattr(stream_module, "read_shard", recording)
    s = stream(shard_dir, shuffle_buffer=8)
    items = s.iter_worker(0, 1)
    assert opened == []
    first = list(islice(items, 3))
    assert len(first) == 3 and len(opened) == 1
    assert opened[0] == s.shard_order(0)[0].name

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in shard_dir.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    target = damaged / s.shard_order(0)[0].name
    target.write_bytes(target.read_bytes()[:3000])
    with pytest.raises(EclipError, match=target.name):
        list(stream(damaged, shuffle_buffer=8))


@pytest.mark.e2e
def test_cli_prepare_with_renamed_column_and_no_split_column(catalog_read, tmp_path, capsys):
    rows = []
    for x in catalog_read.listings[:40]:
        row = {k: v for k, v in x.to_dict().items() if k not in ("split", "title")}
        rows.append({**row, "name": x.title})
    catalog = tmp_path / "shop.jsonl"
    catalog.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                       encoding="utf-8")
    out = tmp_path / "shards"
    # the rows name images of the demo catalog's folder: that folder is the image root
    code = main(["prepare", "--catalog", str(catalog), "--out", str(out), "--shard-size", "15",
                 "--image-root", str(Path(catalog_read.path).parent),
                 "--image-size", "16", "--quiet", "data.column_map.title=name",
                 "data.val_fraction=0.3", "data.text.segments=['{title}']"])
    printed = capsys.readouterr().out
    assert code == 0 and "wrote 40 samples" in printed
    index = ShardIndex.load(out)
    assert set(index.splits) == {"train", "val"} and sum(index.splits.values()) == 40
    # the library function behind the command writes the same shards
    data = DataConfig(catalog=str(catalog), image_root=str(Path(catalog_read.path).parent),
                      column_map={"title": "name"}, val_fraction=0.3,
                      text={"segments": ["{title}"]})
    library = prepare_catalog(data, tmp_path / "library", shard_size=15, image_size=16,
                              progress=False, log=lambda line: None)
    assert library.summary() in printed.replace(str(out), str(tmp_path / "library"))
    for shard in index.shards:
        assert (tmp_path / "library" / shard.name).read_bytes() == (out / shard.name).read_bytes()
    assert index.composer["segments"] == ["{title}"]
    titles = {x.product_id: TextComposer(ComposerConfig(segments=["{title}"])).compose(x)
              for x in catalog_read.listings[:40]}
    for sample in all_samples(out):
        assert sample.record["text"] == titles[sample.record["product_id"]]
    # Catalogs are held out whole.
    split_of = {}
    for sample in all_samples(out):
        group = sample.record["catalog_id"] or sample.record["product_id"]
        assert split_of.setdefault(group, sample.record["split"]) == sample.record["split"]
    assert main(["prepare", "--catalog", str(catalog), "--out", str(out), "--quiet",
                 "--shard-size", "0"]) == 2


def test_an_encoder_elsewhere_gives_the_same_bytes_and_a_short_one_commits_nothing(
        catalog_read, shard_dir, tmp_path):
    # the engines' contract: prepare_shards writes, an encoder only encodes (same bytes whoever
    # encodes), and an encoder that loses listings or invents some leaves no index.json
    from eclip.catalog.shards import encode_listing

    def elsewhere(listings):
        return [encode_listing(x, 24, shards_module.JPEG_QUALITY, catalog_read.image_root)
                for x in reversed(listings)][::-1]

    out = tmp_path / "same"
    prepare_shards(catalog_read, out, shard_size=16, image_size=24, composer_config=COMPOSER,
                   progress=False, encoder=elsewhere)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in shard_dir.iterdir())
    for path in shard_dir.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    for wrong in (lambda xs: elsewhere(xs)[:-1], lambda xs: elsewhere(xs) + elsewhere(xs)[:1]):
        bad = tmp_path / "bad"
        with pytest.raises(EclipError, match="nothing was committed"):
            prepare_shards(catalog_read, bad, shard_size=16, image_size=24,
                           composer_config=COMPOSER, progress=False, encoder=wrong)
        assert not (bad / INDEX_NAME).exists()
