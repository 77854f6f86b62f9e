"""Throughput of the streaming shard loader: the old per-image float path against the uint8 path.

    .venv/bin/python benchmarks/shard_loader.py --out /tmp/bench_shards [--listings 600] \\
        [--source-size 800] [--image-size 256] [--input-size 224] [--batch-size 64] \\
        [--workers 0 2] [--rounds 3] [--reference]

Generates a demo catalog (``--source-size`` px images) and prepares shards (``--image-size`` px,
shorter side) once (kept in ``--out`` for the next run), then reads whole epochs through
``ShardStream.loader``: tar reading, JPEG decoding, a training crop resized to ``--input-size``,
text composition with field dropout; tokenization is left out (it belongs to the model).

Paths, run side by side in one process, alternating (old first in odd rounds, new first in even
ones), ``--rounds`` times for every worker count:

* ``old``: the loader as it was before issue 15 -- each image cropped and resized (bicubic), then
  converted to float32 and normalised by numpy in the loader (reimplemented here, step for step);
* ``new, bicubic crop``: ``ShardStream(uint8=True)`` with ``crop_resample="bicubic"`` -- the same
  pixels as ``old``, handed out as uint8, normalisation left to the training device
  (``eclip.train.data.to_device``);
* ``new``: the same with the default ``crop_resample="bilinear"``;
* ``new + CPU normalise``: ``new`` with ``to_device(batch, cpu)`` applied to every batch, i.e. what
  a training process on the CPU pays for normalising (on a GPU that is a kernel on the device).

Samples/s are per loader (one training process with its workers). Before timing, the script
checks that the pixels of ``new, bicubic crop``, normalised, equal ``old``'s bit for bit on the
first batch.
A profile pass per path (no workers) gives the share of the time spent decoding JPEGs and in the
image transform. The load average is printed before and after: the figures are only comparable on
a quiet machine. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

import eclip.train.stream as stream_module
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.demo import make_demo_catalog
from eclip.catalog.filters import RESAMPLE_FILTERS
from eclip.catalog.images import ImageTransform
from eclip.catalog.readers import read_catalog
from eclip.catalog.schema import catalog_group_id
from eclip.catalog.shards import ShardIndex, listing_from_record, prepare_shards
from eclip.train.data import ListingDataset, item_rng, to_device, with_pixel_transform
from eclip.train.stream import ShardStream

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
COMPOSER = ComposerConfig(field_dropout={"brand": 0.3, "attributes": 0.3})
CPU = torch.device("cpu")
TIMES: dict[str, float] = {}  # profile pass: seconds per step, when PROFILE is on
PROFILE = False


@contextmanager
def timed(name: str):
    if not PROFILE:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        TIMES[name] = TIMES.get(name, 0.0) + time.perf_counter() - started


def old_transform(transform: ImageTransform, image, generator) -> torch.Tensor:
    """The training crop as eclip computed it before issue 15 (a float tensor per image)."""
    box = transform.crop_box(image.size, generator)
    resized = image.resize((transform.size, transform.size),
                           RESAMPLE_FILTERS[transform.resample], box=box)
    pixels = np.array(resized, dtype=np.float32)
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    pixels = (pixels / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class OldShardStream(ShardStream):
    """``ShardStream`` items made as before issue 15: float pixels normalised per image."""

    def _item(self, sample, epoch):
        record = sample.record
        rng = item_rng(self.seed, epoch, sample.index)
        text = self.composer.compose(listing_from_record(record), rng)
        which = rng.randrange(len(sample.images))
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        with timed("decode"):
            image = stream_module.decode_jpeg(sample.images[which], min_side=self._min_side)
        with timed("transform"):
            pixels = old_transform(self.transform, image, generator)
        return {"text": text,
                "group": torch.tensor(catalog_group_id(record.get("catalog_id")), dtype=torch.long),
                "index": sample.index, "pixel_values": pixels}


class _TimedTransform:
    """The new path's transform with its ``pixels`` step timed (profile pass only)."""

    def __init__(self, transform: ImageTransform):
        self._transform = transform

    def __getattr__(self, name):
        return getattr(self._transform, name)

    def pixels(self, image, generator=None):
        with timed("transform"):
            return self._transform.pixels(image, generator)


def _timed_decode(data, **kwargs):
    with timed("decode"):
        return _decode_jpeg(data, **kwargs)


_decode_jpeg = stream_module.decode_jpeg


PATHS = ("old", "new, bicubic crop", "new", "new + CPU normalise")


def path_transform(path: str, args) -> ImageTransform:
    bicubic = path in ("old", "new, bicubic crop")
    return ImageTransform(args.input_size, MEAN, STD, train=True,
                          crop_resample="bicubic" if bicubic else "bilinear")


def make_loader(path: str, shards: Path, transform: ImageTransform, args, workers: int):
    cls = OldShardStream if path == "old" else ShardStream
    stream = cls(shards, transform=transform, composer=TextComposer(COMPOSER),
                 shuffle_buffer=args.shuffle_buffer, uint8=path != "old")
    if PROFILE and path != "old":
        stream.transform = _TimedTransform(transform)
    return stream.loader(args.batch_size, num_workers=workers)


def timed_epoch(loader, path: str, transform: ImageTransform) -> tuple[float, int]:
    """Seconds for the whole epoch (starting the workers included) and samples read."""
    started = time.perf_counter()
    samples = 0
    for batch in loader:
        if path == "new + CPU normalise":
            with timed("normalise"):
                batch = to_device(with_pixel_transform(batch, transform), CPU)
        samples += len(batch["index"])
    return time.perf_counter() - started, samples


def check_same_values(shards: Path, transform: ImageTransform, args) -> bool:
    old = next(iter(make_loader("old", shards, transform, args, 0)))
    new = next(iter(make_loader("new, bicubic crop", shards, transform, args, 0)))
    new = to_device(with_pixel_transform(new, transform), CPU)
    return (old["index"].tolist() == new["index"].tolist()
            and torch.equal(old["pixel_values"], new["pixel_values"]))


def main() -> None:
    global PROFILE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_shards")
    parser.add_argument("--listings", type=int, default=600)
    parser.add_argument("--source-size", type=int, default=800, help="demo catalog image size")
    parser.add_argument("--image-size", type=int, default=256, help="stored shorter side")
    parser.add_argument("--input-size", type=int, default=224, help="model input size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--shuffle-buffer", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true",
                        help="also time the map-style ListingDataset over the catalog's files")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)  # loading is per-process work; keep the main process to one thread
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    catalog = out / "catalog" / "listings.jsonl"
    if not catalog.is_file():
        make_demo_catalog(catalog.parent, n_listings=args.listings, seed=0,
                          image_size=args.source_size, progress=False)
    read = read_catalog(catalog, check_images=False)
    shards = out / f"shards{args.image_size}"
    try:
        ready = ShardIndex.load(shards).image_size == args.image_size
    except Exception:  # noqa: BLE001 - no (usable) shards yet: prepare them
        ready = False
    if not ready:
        prepare_shards(read, shards, shard_size=args.shard_size, image_size=args.image_size,
                       composer_config=COMPOSER, progress=False)
    same = check_same_values(shards, path_transform("old", args), args)

    paths = list(PATHS)
    runs: dict[tuple[str, int], list[float]] = {}
    for round_ in range(args.rounds):
        for workers in args.workers:
            order = paths if round_ % 2 == 0 else paths[::-1]
            for path in order:
                transform = path_transform(path, args)
                loader = make_loader(path, shards, transform, args, workers)
                seconds, samples = timed_epoch(loader, path, transform)
                runs.setdefault((path, workers), []).append(samples / seconds)
    reference = []
    if args.reference:
        transform = path_transform("new", args)
        dataset = ListingDataset(read.listings, TextComposer(COMPOSER), transform, uint8=True)
        for _ in range(args.rounds):
            seconds, samples = timed_epoch(DataLoader(dataset, batch_size=args.batch_size,
                                                      shuffle=True), "reference", transform)
            reference.append(samples / seconds)

    PROFILE = True  # one more epoch per path, no workers, with the steps timed
    stream_module.decode_jpeg = _timed_decode
    shares = {}
    for path in paths:
        TIMES.clear()
        transform = path_transform(path, args)
        seconds, samples = timed_epoch(make_loader(path, shards, transform, args, 0), path,
                                       transform)
        shares[path] = {k: v / seconds for k, v in TIMES.items()}
        shares[path]["ms"] = 1000 * seconds / samples
    stream_module.decode_jpeg = _decode_jpeg
    PROFILE = False

    load_after = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n{len(read.listings)} listings, source {args.source_size} px, stored "
          f"{args.image_size} px, input {args.input_size} px (train crop), batch "
          f"{args.batch_size}, {args.rounds} rounds alternating")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores, torch "
          f"{torch.__version__}; load average before {load_before}, after {load_after}")
    print(f"new path's normalised pixels (bicubic crop) equal the old path's: "
          f"{'yes' if same else 'NO'}\n")
    print("| path | workers | samples/s (median) | min-max | x old (median) |")
    print("|---|---|---|---|---|")
    for (path, workers), rates in runs.items():
        old = statistics.median(runs[("old", workers)])
        median = statistics.median(rates)
        print(f"| {path} | {workers} | {median:.0f} | {min(rates):.0f}-{max(rates):.0f} | "
              f"{median / old:.2f} |")
    if reference:
        print(f"| ListingDataset (catalog files, reference) | 0 | "
              f"{statistics.median(reference):.0f} | {min(reference):.0f}-{max(reference):.0f} "
              f"| |")
    print("\nProfile pass (no workers, one epoch per path): share of the loader's time\n")
    print("| path | ms / sample | JPEG decode | image transform | CPU normalise | the rest |")
    print("|---|---|---|---|---|---|")
    for path, share in shares.items():
        rest = 1 - sum(v for k, v in share.items() if k != "ms")
        print(f"| {path} | {share['ms']:.2f} | {share.get('decode', 0):.0%} | "
              f"{share.get('transform', 0):.0%} | {share.get('normalise', 0):.0%} | {rest:.0%} |")


if __name__ == "__main__":
    main()
