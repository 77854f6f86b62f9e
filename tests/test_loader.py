"""The loader's uint8 path (issue 15): pixels stay uint8 through workers and collation and are
normalised batch-wise on the training device, to exactly the values of the per-image float path;
the training crop's filter; the device prefetcher; the worker count from cores."""

import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.filters import RESAMPLE_FILTERS
from eclip.catalog.images import ImageTransform, to_rgb
from eclip.catalog.readers import read_catalog
from eclip.catalog.shards import prepare_shards
from eclip.errors import ConfigError
from eclip.train.data import (Collator, DevicePrefetcher, ListingDataset, default_num_workers,
                              to_device, with_pixel_transform)
from eclip.train.sampler import CatalogBatchSampler
from eclip.train.sources import ListingSource, ShardSource
from eclip.train.stream import ShardStream

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
COMPOSER = ComposerConfig(field_dropout={"brand": 0.5})
CPU = torch.device("cpu")


def old_float_path(transform: ImageTransform, img: Image.Image, generator=None) -> torch.Tensor:
    """ImageTransform.__call__ as it was before the uint8 path (numpy float32, one image)."""
    img = to_rgb(img)
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    if transform.resize != "crop" and not transform.train:
        width, height = img.size
        if transform.resize == "squash":
            new_w = new_h = transform.resize_size or transform.size
        else:
            target = transform.resize_size or transform.size
            short, long = (width, height) if width <= height else (height, width)
            new_w, new_h = ((target, int(target * long / short)) if width <= height
                            else (int(target * long / short), target))
        pixels = np.array(img.resize((new_w, new_h), resample=RESAMPLE_FILTERS[transform.resample]))
        top, left = (new_h - transform.size) // 2, (new_w - transform.size) // 2
        pixels = pixels[top:top + transform.size, left:left + transform.size]
        values = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        values = (values - mean) / std
    else:
        box = transform.crop_box(img.size, generator)
        resample = transform.crop_resample if transform.train else transform.resample
        resized = img.resize((transform.size, transform.size), RESAMPLE_FILTERS[resample], box=box)
        values = (np.array(resized, dtype=np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    shapes = [(40, 30), (30, 52), (64, 64), (17, 90)]
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in shapes]
    out.append(Image.fromarray(rng.integers(0, 256, (33, 47), dtype=np.uint8), mode="L"))
    rgba = rng.integers(0, 256, (36, 28, 4), dtype=np.uint8)
    out.append(Image.fromarray(rgba, mode="RGBA"))
    return out


TRANSFORMS = [
    ImageTransform(24, MEAN, STD, train=True, crop_resample="bicubic"),
    ImageTransform(24, MEAN, STD, train=True),  # bilinear crops (the default)
    ImageTransform(24, MEAN, STD),  # evaluation: the centred square
    ImageTransform(24, MEAN, STD, resize="shortest_edge", resize_size=28),
    ImageTransform(24, MEAN, STD, resize="squash", resample="bilinear"),
]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: f"{t.resize}-train{t.train}")
def test_uint8_pixels_normalised_by_batch_equal_the_old_float_path(transform):
    images = photos()
    seeds = list(range(len(images)))
    old = torch.stack([old_float_path(transform, img, torch.Generator().manual_seed(s))
                       for img, s in zip(images, seeds)])
    pixels = [transform.pixels(img, torch.Generator().manual_seed(s))
              for img, s in zip(images, seeds)]
    assert all(p.dtype == torch.uint8 and p.shape == (3, 24, 24) for p in pixels)
    batch = transform.normalize(torch.stack(pixels))
    assert batch.dtype == torch.float32 and batch.is_contiguous()
    assert torch.equal(batch, old)  # bit for bit, not just close
    one_by_one = torch.stack([transform(img, torch.Generator().manual_seed(s))
                              for img, s in zip(images, seeds)])
    assert torch.equal(one_by_one, old)


@pytest.mark.parametrize("transform", TRANSFORMS[1:], ids=lambda t: f"{t.resize}-train{t.train}")
def test_normalize_gives_the_value_table_for_every_input_level_and_layout(transform):
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).view(3, 16, 16)
    assert torch.equal(transform.normalize(levels).view(3, 256), transform.value_table())
    # a channels-last batch (as views of PIL's bytes are) comes out contiguous, same values
    hwc = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator()
                        .manual_seed(0))
    nchw = hwc.permute(0, 3, 1, 2)
    out = transform.normalize(nchw)
    assert out.is_contiguous()
    expected = transform.value_table()[torch.arange(3).view(1, 3, 1, 1), nchw.long()]
    assert torch.equal(out, expected)


def test_normalize_refuses_what_is_not_uint8_rgb_pixels():
    transform = TRANSFORMS[0]
    with pytest.raises(TypeError, match="uint8"):
        transform.normalize(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="3, H, W"):
        transform.normalize(torch.zeros(4, 4, 4, dtype=torch.uint8))


def test_crop_resample_is_the_training_filter_only():
    img = photos()[0]
    bilinear = ImageTransform(24, MEAN, STD, train=True)
    bicubic = ImageTransform(24, MEAN, STD, train=True, crop_resample="bicubic")
    assert bilinear.crop_resample == "bilinear" and bilinear.resample == "bicubic"
    same_crop = [t.pixels(img, torch.Generator().manual_seed(5)) for t in (bilinear, bicubic)]
    assert not torch.equal(*same_crop)  # the filter changed, not the crop box:
    assert (bilinear.crop_box(img.size, torch.Generator().manual_seed(5))
            == bicubic.crop_box(img.size, torch.Generator().manual_seed(5)))
    evaluation = [ImageTransform(24, MEAN, STD, crop_resample=f)(img) for f in ("bilinear", "box")]
    assert torch.equal(*evaluation)
    assert ImageTransform.from_dict(bicubic.to_dict()) == bicubic
    with pytest.raises(ConfigError, match="crop_resample must be one of"):
        ImageTransform(24, MEAN, STD, crop_resample="cubic")


@pytest.fixture(scope="module")
def catalog_read(tiny_catalog):
    return read_catalog(tiny_catalog, check_images=False)


@pytest.fixture(scope="module")
def shard_dir(catalog_read, tmp_path_factory):
    out = tmp_path_factory.mktemp("speedpath") / "shards"
    prepare_shards(catalog_read, out, shard_size=16, image_size=24, composer_config=COMPOSER,
                   progress=False)
    return out


def tokenize(texts):
    return {"input_ids": torch.ones(len(texts), 3, dtype=torch.long)}


def shard_batches(shard_dir, uint8: bool, workers: int = 0, take: int = 3):
    transform = ImageTransform(16, MEAN, STD, train=True)
    stream = ShardStream(shard_dir, transform=transform, composer=TextComposer(COMPOSER), seed=3,
                         shuffle_buffer=10, split="train", per_group=2)
    loader = stream.loader(8, num_workers=workers, collate_fn=Collator(tokenize), drop_last=True)
    source = ShardSource(loader, uint8=uint8)
    return [to_device(batch, CPU) for batch in itertools.islice(iter(source), take)], source


def test_shard_source_uint8_batches_equal_float_batches_after_to_device(shard_dir):
    floats, _ = shard_batches(shard_dir, uint8=False)
    raw, source = shard_batches(shard_dir, uint8=True)
    assert source.loader.stream.uint8
    for a, b in zip(floats, raw):
        assert set(a) == set(b) and "pixel_transform" not in b
        assert b["pixel_values"].dtype == torch.float32
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["group"], b["group"])


@pytest.mark.distributed  # a DataLoader worker process
def test_shard_stream_items_carry_uint8_pixels_that_travel_through_workers(shard_dir):
    transform = ImageTransform(16, MEAN, STD, train=True)
    stream = ShardStream(shard_dir, transform=transform, seed=3, split="train", uint8=True)
    item = next(iter(stream))
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 16, 16)
    in_process, _ = shard_batches(shard_dir, uint8=True, workers=0, take=4)
    one_worker, _ = shard_batches(shard_dir, uint8=True, workers=1, take=4)
    for a, b in zip(in_process, one_worker):
        assert torch.equal(a["pixel_values"], b["pixel_values"])


def test_listing_source_uint8_batches_equal_float_batches(catalog_read):
    listings = [x for x in catalog_read.listings if x.split == "train"][:32]
    transform = ImageTransform(16, MEAN, STD, train=True)

    def batches(uint8):
        dataset = ListingDataset(listings, TextComposer(COMPOSER), transform, seed=1)
        sampler = CatalogBatchSampler(dataset.groups, 8, per_group=2, seed=1, drop_last=True)
        source = ListingSource(dataset, sampler, Collator(tokenize), seed=1, uint8=uint8)
        raw = list(itertools.islice(iter(source), 3))
        return raw, [to_device(b, CPU) for b in raw]

    raw_floats, floats = batches(False)
    raw_uint8, normalised = batches(True)
    assert raw_floats[0]["pixel_values"].dtype == torch.float32
    assert raw_uint8[0]["pixel_values"].dtype == torch.uint8
    assert raw_uint8[0]["pixel_transform"] == transform
    for a, b in zip(floats, normalised):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and set(a) == set(b)


def test_to_device_leaves_float_and_cached_batches_alone():
    batch = {"pixel_values": torch.rand(2, 3, 4, 4), "index": torch.arange(2)}
    assert with_pixel_transform(dict(batch), TRANSFORMS[0]).keys() == batch.keys()
    moved = to_device(batch, CPU)
    assert moved["pixel_values"] is batch["pixel_values"]
    refs = {"image_ref": torch.arange(2)}
    assert with_pixel_transform(dict(refs), TRANSFORMS[0]).keys() == refs.keys()


def test_device_prefetcher_passes_batches_through_on_the_cpu():
    transform = TRANSFORMS[0]
    gen = torch.Generator().manual_seed(0)
    batches = [with_pixel_transform(
        {"pixel_values": torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=gen),
         "index": torch.tensor([2 * i, 2 * i + 1]), "text": ["a", "b"]}, transform)
        for i in range(4)]
    pulled = []

    def source():
        for batch in batches:
            pulled.append(batch["index"][0].item())
            yield batch

    out = []
    prefetcher = DevicePrefetcher(source(), "cpu", position=lambda: len(pulled))
    assert prefetcher.position == 0
    for batch in prefetcher:
        assert len(pulled) == len(out) + 1  # on the CPU nothing is read ahead
        out.append(batch)
        assert prefetcher.position == len(out)  # the position after the batch handed out
    assert [b["index"].tolist() for b in out] == [b["index"].tolist() for b in batches]
    for got, sent in zip(out, batches):
        assert "pixel_transform" not in got and got["text"] == sent["text"]
        assert torch.equal(got["pixel_values"], transform.normalize(sent["pixel_values"]))

    # reading one batch ahead (what it does on CUDA): the same batches, the source one batch
    # further, and the position still that of the batches handed out
    pulled.clear()
    ahead = []
    prefetcher = DevicePrefetcher(source(), "cpu", position=lambda: len(pulled), read_ahead=True)
    for batch in prefetcher:
        ahead.append(batch)
        assert len(pulled) == min(len(ahead) + 1, len(batches))
        assert prefetcher.position == len(ahead)
    assert len(ahead) == len(out)
    for a, b in zip(ahead, out):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["text"] == b["text"]


def test_default_num_workers_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_num_workers() == 7
    assert default_num_workers(2) == 3
    assert default_num_workers(16) == 0
    assert default_num_workers(reserve=0) == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers() == 0


def test_stream_loader_pins_memory_only_for_cuda(shard_dir):
    transform = ImageTransform(16, MEAN, STD, train=True)
    stream = ShardStream(shard_dir, transform=transform, split="train")
    assert stream.loader(4).loader_kwargs["pin_memory"] == torch.cuda.is_available()
    assert stream.loader(4, pin_memory=False).loader_kwargs["pin_memory"] is False


def test_photo_loader_with_workers_gives_the_per_photo_values_in_order(tmp_path):
    """Embedding's photo loader (eclip.encode.loader): uint8 pixels decoded in a worker process,
    normalised batch-wise, equal bit for bit to the evaluation transform photo by photo, in the
    paths' order, whatever the batch size or worker count; a bad file names itself."""
    from eclip.catalog.images import load_image
    from eclip.encode.loader import photo_batches
    from eclip.errors import ImageError

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 30 - i, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    transform = ImageTransform(16, MEAN, STD, train=False)
    expected = torch.stack([transform(load_image(p)) for p in paths])
    for batch_size, workers in ((2, 1), (2, 0), (8, 1)):
        got = torch.cat(photo_batches(paths, transform, lambda x: x, batch_size=batch_size,
                                      num_workers=workers))
        assert got.dtype == torch.float32 and torch.equal(got, expected), (batch_size, workers)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        photo_batches(paths + [str(tmp_path / "bad.png")], transform, lambda x: x, batch_size=2,
                      num_workers=1)


def test_the_photo_loader_leaves_the_global_rng_alone(tmp_path):
    """A loader with workers draws their seed from a generator of its own: the caller's next random
    draws (a training run's dropout after computing its feature cache) are the same as without it."""
    import torch
    from PIL import Image

    from eclip.catalog.images import ImageTransform
    from eclip.encode.loader import photo_batches

    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (20, 16), (40 * i, 10, 200)).save(paths[-1])
    torch.manual_seed(1)
    before = torch.rand(3)
    torch.manual_seed(1)
    photo_batches(paths, ImageTransform(size=8, mean=(0.5,) * 3, std=(0.5,) * 3, train=False),
                  lambda x: x, batch_size=2, num_workers=1)
    assert torch.equal(torch.rand(3), before)
