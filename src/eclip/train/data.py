"""From listings to training batches: composed text, image tensors (or cached tower features), group ids.

Randomness (text dropout, augmentation, which of a listing's images) is derived from
``(seed, epoch, index)``, never from global state, so that a resumed run sees the very same batches.

Pixels travel as uint8 (``uint8=True``: the datasets' ``pixel_values`` are
``ImageTransform.pixels``, and a data source names the transform in each batch as
``pixel_transform``); :func:`to_device` moves a batch to the training device and normalises it there,
to exactly the values the per-image float path gives. :class:`DevicePrefetcher` copies the next
batch to a CUDA device while the current step runs (the trainer's data source is wrapped in
:class:`eclip.train.sources.OnDevice`, which uses it); :func:`loader_workers` resolves
``train.num_workers`` (``auto``: :func:`eclip.encode.loader.default_num_workers`, the photo loader's
rule, for a run that decodes photos).
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from eclip.catalog.compose import TextComposer
from eclip.catalog.config import DEFAULT_MAX_PIXELS
from eclip.catalog.images import ImageTransform, load_image
from eclip.catalog.schema import Listing, catalog_group_id
from eclip.encode.loader import default_num_workers

AUTO = "auto"
# ``auto`` starts no worker for shorter epochs: workers start afresh every epoch (a resumed run
# must see the same batches), and a start (fork, first batch) costs about half a CPU-second here,
# more than decoding a few small batches in the process
MIN_EPOCH_BATCHES = 32


def loader_workers(setting: int | str, *, photos: bool, epoch_batches: int) -> int:
    """DataLoader worker processes for ``train.num_workers``: a number as given, or ``auto``:
    for a run that decodes photos, :func:`default_num_workers` (the cores this process may use,
    less one for the process itself, shared among torchrun's ``LOCAL_WORLD_SIZE`` processes on
    this machine); 0 for one that serves a locked image tower from its feature cache (its items
    are composed text and positions: a worker's start and hand-over cost more than they save),
    and 0 for epochs of fewer than ``MIN_EPOCH_BATCHES`` batches per rank."""
    if setting != AUTO:
        return setting
    if not photos or epoch_batches < MIN_EPOCH_BATCHES:
        return 0
    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return default_num_workers(processes)


def group_index(listings: list[Listing]) -> torch.Tensor:
    """One integer per listing: equal for listings of one catalog, -1 for listings without one."""
    return torch.tensor([catalog_group_id(x.catalog_id) for x in listings], dtype=torch.long)


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}:{index}")


class ListingDataset(Dataset):
    """Items are dicts with ``text``, ``group``, ``index`` and either ``pixel_values`` or ``image_ref``.

    With ``images_as_refs`` the dataset does not decode images: it returns the position of the chosen
    image in ``self.image_paths`` so that a feature cache can stand in for a locked image tower.
    With ``uint8`` ``pixel_values`` are the transform's uint8 pixels (normalised later, by
    :func:`to_device`), else its float values. ``max_pixels`` (``data.max_pixels``): an image
    larger than that is decoded at reduced size, as the catalog check read it.
    """

    def __init__(self, listings: list[Listing], composer: TextComposer, transform: ImageTransform,
                 *, seed: int = 0, images_as_refs: bool = False, uint8: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.listings = listings
        self.max_pixels = max_pixels
        self.uint8 = uint8
        self.composer = composer
        self.transform = transform
        self.seed = seed
        self.images_as_refs = images_as_refs
        self.groups = group_index(listings)
        self.epoch = 0
        self.image_paths: list[str] = []
        self._first_image: list[int] = []
        for listing in listings:
            self._first_image.append(len(self.image_paths))
            self.image_paths.extend(listing.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.listings)

    def __getitem__(self, index: int) -> dict[str, Any]:
        listing = self.listings[index]
        rng = item_rng(self.seed, self.epoch, index)
        text = self.composer.compose(listing, rng)
        which = rng.randrange(len(listing.images))
        item: dict[str, Any] = {"text": text, "group": self.groups[index], "index": index}
        if self.images_as_refs:
            item["image_ref"] = self._first_image[index] + which
        else:
            generator = None
            if self.transform.train:
                generator = torch.Generator().manual_seed(rng.getrandbits(63))
            image = load_image(listing.images[which], max_pixels=self.max_pixels)
            pixels = self.transform.pixels(image, generator)
            item["pixel_values"] = pixels if self.uint8 else self.transform.normalize(pixels)
        return item


class Collator:
    """Stacks items and tokenizes their texts with the model's tokenizer."""

    def __init__(self, tokenize):
        self.tokenize = tokenize

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenize([it["text"] for it in items]))
        batch["group"] = torch.stack([it["group"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        if "pixel_values" in items[0]:
            batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        else:
            batch["image_ref"] = torch.tensor([it["image_ref"] for it in items], dtype=torch.long)
        return batch


PIXEL_TRANSFORM = "pixel_transform"  # a batch's ImageTransform when its pixel_values are uint8


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` on ``device``, its uint8 ``pixel_values`` normalised there.

    Tensors are copied with ``non_blocking`` (from pinned memory the copy overlaps the host); a
    batch with ``pixel_transform`` (uint8 pixels and their :class:`ImageTransform`) leaves with
    float32 ``pixel_values`` (``ImageTransform.normalize``: equal, bit for bit, to what
    ``ImageTransform.__call__`` gives image by image) and without ``pixel_transform``. On the CPU
    nothing is copied but the pixels' normalisation."""
    if device.type != "cpu":
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
    if PIXEL_TRANSFORM in batch:
        batch = dict(batch)
        transform = batch.pop(PIXEL_TRANSFORM)
        batch["pixel_values"] = transform.normalize(batch["pixel_values"])
    return batch


def with_pixel_transform(batch: dict[str, Any], transform: ImageTransform) -> dict[str, Any]:
    """Name ``transform`` in a batch of its uint8 pixels (see :func:`to_device`)."""
    pixels = batch.get("pixel_values")
    if isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8:
        batch[PIXEL_TRANSFORM] = transform
    return batch


class DevicePrefetcher:
    """Batches of ``batches`` already on ``device``, the next one copied while the current is used.

    On CUDA the copies (from pinned memory: ``pin_memory=True`` in the loader) and the uint8
    normalisation run on a side stream, one batch ahead; the consumer's stream waits for them
    before it touches the batch, and the tensors are marked as used there. On any other device it
    is :func:`to_device` applied batch by batch, nothing read ahead (``read_ahead=True`` reads one
    batch ahead there too, without streams: the CUDA order and bookkeeping, testable on a CPU).

    Reading ahead moves a data source's own position one batch past the loop. With ``position``
    (e.g. ``source.state_dict``), called after each batch is read, ``self.position`` is the
    position after the last batch *handed out*: what a checkpoint should save.
    """

    def __init__(self, batches: Iterable[dict[str, Any]], device: torch.device | str, *,
                 position: Callable[[], Any] | None = None, read_ahead: bool | None = None):
        self.batches, self.device, self._position_of = batches, torch.device(device), position
        self.read_ahead = self.device.type == "cuda" if read_ahead is None else read_ahead
        self.position = position() if position is not None else None

    def _read(self, source: Iterator[dict[str, Any]]) -> tuple[dict[str, Any], Any] | None:
        batch = next(source, None)
        if batch is None:
            return None
        return batch, self._position_of() if self._position_of is not None else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        source = iter(self.batches)
        if not self.read_ahead:
            while (read := self._read(source)) is not None:
                batch, self.position = read
                yield to_device(batch, self.device)
            return
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None

        def ahead() -> tuple[dict[str, Any], Any] | None:
            read = self._read(source)
            if read is None:
                return None
            with torch.cuda.stream(stream) if cuda else nullcontext():
                return to_device(read[0], self.device), read[1]

        upcoming = ahead()
        while upcoming is not None:
            if cuda:
                current_stream = torch.cuda.current_stream(self.device)
                current_stream.wait_stream(stream)
                for value in upcoming[0].values():
                    if isinstance(value, torch.Tensor):
                        value.record_stream(current_stream)
            (batch, self.position), upcoming = upcoming, ahead()
            yield batch
