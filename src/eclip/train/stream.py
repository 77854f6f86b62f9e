"""Streaming training items from prepared shards, with a position that resumes exactly.

Use::

    stream = ShardStream("shards/", transform=transform, composer=composer, seed=cfg.seed,
                         rank=rank, world_size=world_size, split="train", per_group=2)
    loader = stream.loader(batch_size, num_workers=4, collate_fn=Collator(model.tokenize))
    loader.load_state_dict(checkpoint["data"])          # on resume (all ranks, the same state)
    for epoch in range(loader.epoch, epochs):
        loader.set_epoch(epoch)                         # keeps a resumed position in that epoch
        for batch in loader:
            step(batch)
            save({"data": loader.state_dict(), ...})    # position after every batch handed out

Contract
--------
What one rank reads in an epoch is a pure function of the shard index, ``split``, ``seed``,
``epoch``, ``world_size``, ``rank`` and the number of DataLoader workers W (0 and 1 read alike):

1. **Shard order.** The split's shards are permuted by ``(seed, epoch)`` and laid end to end: the
   epoch's sequence of N samples. Nothing is read up front; shards are opened one at a time.
2. **Ranks.** Rank r takes positions ``[r*n, (r+1)*n)`` with ``n = N // world_size``, so every rank
   has the same number of samples and, with the same batch size and W, the same number of
   batches (DDP needs equal step counts). The last ``N % world_size`` samples of the epoch's
   sequence (fewer than ``world_size``, from the shard that comes last in that epoch's order) sit
   the epoch out; every other sample is read exactly once per epoch across all ranks.
3. **Workers.** The rank's range is cut into W contiguous slices whose sizes differ by at most one;
   a worker opens only the shards its slice overlaps and skips, by tar headers alone, the samples
   of a shared shard that are not its own.
4. **Shuffle buffer.** A worker reads its slice in blocks of ``shuffle_buffer`` samples, shuffles a
   block and emits it before reading the next (memory: one block of encoded JPEGs per worker).
   Units of up to ``per_group`` consecutive listings of one catalog (prepare writes a catalog's
   listings together) move as one, so catalog-aware targets find positives in the batch. The
   permutation comes from ``(seed, epoch, block position)``; images are decoded only when emitted.
   With ``batch_order`` (hard batches, ``train/neighbours.py`` ``BufferOrder``) the shuffled units
   of a block are then rearranged so that the batches cut from it hold look-alike catalogs; that
   depends on the block and its position in the slice alone, so the contract below holds as is.
5. **Items** are dicts like those of :class:`~eclip.train.data.ListingDataset` (``text``, ``group``,
   ``index``: the sample's global index in the shard set, ``pixel_values``: float, or with
   ``uint8=True`` the transform's uint8 pixels, normalised later on the training device); text
   dropout, the choice among a listing's images and augmentation come from
   ``item_rng(seed, epoch, index)``. With ``composer=None`` the text composed at prepare time is
   used (no dropout). A JPEG stored at least twice as large as the pixels a crop needs is decoded
   at 1/2, 1/4 or 1/8 scale (``draft``), never below that size.

**The DataLoader's order.** Each worker batches its own items, and the DataLoader hands out the
workers' batches round-robin (worker 0, 1, ..., W-1, 0, ...), skipping a worker once it has run
out; each worker's last batch may be short unless ``drop_last``. The stream cannot tell from inside
a worker how many batches training has used (workers prefetch), so the position is counted on the
main-process side: :class:`StreamLoader` advances it for every batch it hands out.

**Position** (``state_dict()``): ``{"epoch", "consumed": samples delivered per worker slice,
"next_worker": the slice the next batch comes from, ...}``, the same on every rank. On resume,
DataLoader worker i serves slice ``(next_worker + i) % W`` and skips, without decoding, the
``consumed`` samples of its slice (at most one block is read again), so the resumed loader hands
out exactly the batches the interrupted one would have. Resuming mid-epoch needs the same W,
``world_size``, ``seed`` and shard set (checked: :class:`~eclip.errors.ConfigError`); the batch size
may change at any resume, since the position is counted in samples. After the last batch of an
epoch the position reads ``{"epoch": epoch + 1, "consumed": []}``, valid for any W.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from eclip.catalog.compose import TextComposer
from eclip.catalog.images import ImageTransform
from eclip.catalog.shards import (INDEX_NAME, ShardIndex, ShardInfo, ShardSample, decode_jpeg,
                                  listing_from_record, read_shard)
from eclip.errors import ConfigError, EclipError, ImageError
from eclip.catalog.schema import catalog_group_id
from eclip.train.data import item_rng

__all__ = ["ShardStream", "StreamLoader"]


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


class ShardStream(IterableDataset):
    """Items of a shard directory for one rank; the module docstring states the contract.

    ``split`` picks the shards of one split (None: all shards). ``shuffle_buffer``: samples per
    shuffled block (0 or 1: the shards' own order). ``per_group``: listings of one catalog that
    move together. ``composer=None``: the text composed at prepare time. ``train=False``
    (evaluation): shards in index order, no shuffling, no dropout, the first image, no random
    crop. ``uint8``: items carry uint8 pixels (see :func:`eclip.train.data.to_device`). Only
    ``index.json`` is read here.
    """

    def __init__(self, shard_dir: str | os.PathLike[str], *, transform: ImageTransform,
                 composer: TextComposer | None = None, seed: int = 0, shuffle_buffer: int = 1000,
                 rank: int = 0, world_size: int = 1, split: str | None = None, epoch: int = 0,
                 per_group: int = 1, train: bool = True, uint8: bool = False,
                 batch_order: Any = None):
        _check_int("seed", seed, 0)
        _check_int("shuffle_buffer", shuffle_buffer, 0)
        _check_int("world_size", world_size, 1)
        _check_int("per_group", per_group, 1)
        _check_int("epoch", epoch, 0)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.index = ShardIndex.load(shard_dir)
        self.shards = self.index.select(split)
        self.transform, self.composer = transform, composer
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.per_group, self.train, self.uint8 = per_group, train, uint8
        self.rank, self.world_size, self.split = rank, world_size, split
        # hard batches (train/neighbours.py BufferOrder): each shuffled block's units rearranged
        if batch_order is not None and not (train and shuffle_buffer > 1):
            raise ConfigError("hard batches from shards are planned inside the shuffle buffer: "
                              f"data.shuffle_buffer must be above 1 (got {shuffle_buffer})")
        self.batch_order = batch_order
        total = sum(s.samples for s in self.shards)
        self.samples_per_rank = total // world_size
        if self.samples_per_rank == 0:
            raise ConfigError(f"{total} samples in {self.index.root} (split {split!r}) cannot give "
                              f"each of {world_size} ranks one")
        # Train-time crops take at least scale[0] of the area: decode large enough for them.
        self._min_side = (math.ceil(transform.size / math.sqrt(transform.scale[0]))
                          if transform.train else transform.size)
        self.epoch = epoch
        self._consumed: list[int] = []
        self._next_worker = 0

    # -- position ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next; the position is kept when ``epoch`` is the current one."""
        _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self._set_position(epoch, [], 0)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": list(self._consumed),
                "next_worker": self._next_worker, "samples_per_rank": self.samples_per_rank,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            epoch, consumed = int(state["epoch"]), [int(c) for c in state["consumed"]]
            next_worker = int(state["next_worker"])
            taken = {k: state[k] for k in ("samples_per_rank", "world_size", "seed")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a stream position: {state!r} ({exc})") from None
        ours = {"samples_per_rank": self.samples_per_rank, "world_size": self.world_size,
                "seed": self.seed}
        if taken != ours:
            raise ConfigError(f"the data position was saved for {taken}, this stream has {ours}: "
                              "resume with the same shards, split, world size and seed")
        sizes = self.worker_sizes(len(consumed)) if consumed else []
        if (epoch < 0 or not 0 <= next_worker < max(1, len(consumed))
                or any(not 0 <= c <= s for c, s in zip(consumed, sizes))):
            raise ConfigError(f"the data position {state!r} does not fit this stream")
        if consumed == sizes and consumed:
            epoch, consumed, next_worker = epoch + 1, [], 0
        self._set_position(epoch, consumed, next_worker)

    def _set_position(self, epoch: int, consumed: list[int], next_worker: int) -> None:
        self.epoch, self._consumed, self._next_worker = epoch, list(consumed), next_worker

    # -- the plan ---------------------------------------------------------------------------------

    def worker_sizes(self, num_workers: int) -> list[int]:
        """Samples of each worker slice of this rank per epoch (0 workers read like 1)."""
        workers = max(1, num_workers)
        base, extra = divmod(self.samples_per_rank, workers)
        return [base + (w < extra) for w in range(workers)]

    def shard_order(self, epoch: int) -> list[ShardInfo]:
        """The shards in the order the epoch's sample sequence lays them out."""
        order = list(self.shards)
        if self.train:
            random.Random(f"eclip-shards:{self.seed}:{epoch}").shuffle(order)
        return order

    def loader(self, batch_size: int, *, num_workers: int = 0,
               collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
               drop_last: bool = False, **loader_kwargs: Any) -> "StreamLoader":
        """A :class:`StreamLoader` (DataLoader + position) over this stream."""
        return StreamLoader(self, batch_size, num_workers=num_workers, collate_fn=collate_fn,
                            drop_last=drop_last, **loader_kwargs)

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        return self.iter_worker(info.id, info.num_workers) if info else self.iter_worker(0, 0)

    def iter_worker(self, worker_id: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """The items DataLoader worker ``worker_id`` of ``num_workers`` yields from the current
        position (``num_workers=0``: the main process). Nothing is read before the first
        ``next``."""
        workers = max(1, num_workers)
        if not 0 <= worker_id < workers:
            raise ValueError(f"worker_id {worker_id} out of range for {num_workers} workers")
        if self._consumed and len(self._consumed) != workers:
            raise ConfigError(f"the data position was saved with {len(self._consumed)} loader "
                              f"worker(s) mid-epoch; resume with the same number of workers "
                              f"(now {num_workers})")
        slot = (self._next_worker + worker_id) % workers
        sizes = self.worker_sizes(workers)
        start = self.rank * self.samples_per_rank + sum(sizes[:slot])
        skip = self._consumed[slot] if self._consumed else 0
        return self._items(self.epoch, start, start + sizes[slot], skip)

    def _items(self, epoch: int, start: int, stop: int, skip: int) -> Iterator[dict[str, Any]]:
        order = self.shard_order(epoch)
        block = self.shuffle_buffer if self.train and self.shuffle_buffer > 1 else 0
        if not block:
            for sample in self._read(order, start + skip, stop):
                yield self._item(sample, epoch)
            return
        done_blocks, skip = divmod(skip, block)
        block_start = start + done_blocks * block
        samples = self._read(order, block_start, stop)
        while block_start < stop:
            units = self._units(list(islice(samples, block)))
            random.Random(f"eclip-shuffle:{self.seed}:{epoch}:{block_start}").shuffle(units)
            if self.batch_order is not None:
                units = [units[i] for i in self.batch_order.arrange(
                    [unit[0].record.get("catalog_id") for unit in units],
                    [[sample.index for sample in unit] for unit in units], block_start - start)]
            for sample in (s for unit in units for s in unit):
                if skip:
                    skip -= 1
                    continue
                yield self._item(sample, epoch)
            block_start = min(block_start + block, stop)

    def _read(self, order: list[ShardInfo], start: int, stop: int) -> Iterator[ShardSample]:
        """Samples at positions [start, stop) of the epoch's sequence, opening shards lazily."""
        offset = 0
        for shard in order:
            low, high = max(start, offset), min(stop, offset + shard.samples)
            if low < high:
                got = 0
                for sample in read_shard(self.index.root / shard.name, skip=low - offset,
                                         limit=high - low):
                    got += 1
                    yield sample
                if got != high - low:
                    raise EclipError(f"shard {self.index.root / shard.name} ends early: "
                                     f"{INDEX_NAME} says it holds {shard.samples} samples; "
                                     "run `eclip prepare` again")
            offset += shard.samples
            if offset >= stop:
                return

    def _units(self, samples: list[ShardSample]) -> list[list[ShardSample]]:
        """Consecutive listings of one catalog, up to ``per_group`` of them, as one unit."""
        units: list[list[ShardSample]] = []
        previous = None
        for sample in samples:
            catalog = sample.record.get("catalog_id")
            if (self.per_group > 1 and catalog and catalog == previous
                    and len(units[-1]) < self.per_group):
                units[-1].append(sample)
            else:
                units.append([sample])
            previous = catalog
        return units

    def _item(self, sample: ShardSample, epoch: int) -> dict[str, Any]:
        record = sample.record
        rng = item_rng(self.seed, epoch, sample.index) if self.train else None
        if self.composer is not None:
            text = self.composer.compose(listing_from_record(record), rng)
        else:
            text = record["text"]
        which = rng.randrange(len(sample.images)) if rng is not None else 0
        generator = None
        if rng is not None and self.transform.train:
            generator = torch.Generator().manual_seed(rng.getrandbits(63))
        try:
            image = decode_jpeg(sample.images[which], min_side=self._min_side)
        except ImageError as exc:
            raise ImageError(f"shard sample {sample.index} ({record.get('product_id')}) in "
                             f"{self.index.root}: {exc}; run `eclip prepare` again") from None
        pixels = self.transform.pixels(image, generator)
        return {"text": text,
                "group": torch.tensor(catalog_group_id(record.get("catalog_id")), dtype=torch.long),
                "index": sample.index,
                "pixel_values": pixels if self.uint8 else self.transform.normalize(pixels)}


class _Cursor:
    """Follows the DataLoader's round-robin over worker slices, batch by batch."""

    def __init__(self, sizes: list[int], consumed: list[int], next_worker: int, batch_size: int,
                 drop_last: bool):
        self.sizes, self.consumed = sizes, list(consumed) or [0] * len(sizes)
        self.next_worker, self.batch_size, self.drop_last = next_worker, batch_size, drop_last

    def _ready(self, worker: int) -> bool:
        left = self.sizes[worker] - self.consumed[worker]
        return left >= (self.batch_size if self.drop_last else 1)

    def done(self) -> bool:
        return not any(self._ready(w) for w in range(len(self.sizes)))

    def batches_left(self) -> int:
        lefts = [s - c for s, c in zip(self.sizes, self.consumed)]
        if self.drop_last:
            return sum(left // self.batch_size for left in lefts)
        return sum(-(-left // self.batch_size) for left in lefts)

    def advance(self) -> None:
        """One batch handed out: it came from the next worker slice that still has one."""
        workers = len(self.sizes)
        for step in range(workers):
            worker = (self.next_worker + step) % workers
            if self._ready(worker):
                left = self.sizes[worker] - self.consumed[worker]
                self.consumed[worker] += min(self.batch_size, left)
                self.next_worker = (worker + 1) % workers
                return
        raise EclipError("the data loader handed out more batches than the stream's plan holds; "
                         "were the shards changed during the run?")


_RESERVED = frozenset({"batch_size", "shuffle", "sampler", "batch_sampler", "persistent_workers",
                       "in_order", "generator", "drop_last", "num_workers", "collate_fn"})


class StreamLoader:
    """A DataLoader over a :class:`ShardStream` that knows how many batches it has handed out.

    ``state_dict()`` is the position after the last batch handed out (take it after the step
    that used that batch); ``load_state_dict`` before iterating resumes there. Workers are started
    afresh for every pass (``persistent_workers`` would miss a new position).
    """

    def __init__(self, stream: ShardStream, batch_size: int, *, num_workers: int = 0,
                 collate_fn: Callable[[list[dict[str, Any]]], Any] | None = None,
                 drop_last: bool = False, **loader_kwargs: Any):
        _check_int("batch_size", batch_size, 1)
        _check_int("num_workers", num_workers, 0)
        reserved = sorted(_RESERVED & set(loader_kwargs))
        if reserved:
            raise ConfigError(f"StreamLoader sets {reserved} itself")
        self.stream, self.batch_size, self.num_workers = stream, batch_size, num_workers
        # batches to a CUDA device leave from page-locked memory (no-op without CUDA)
        loader_kwargs.setdefault("pin_memory", torch.cuda.is_available())
        self.collate_fn, self.drop_last, self.loader_kwargs = collate_fn, drop_last, loader_kwargs

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches in a whole epoch (the same on every rank)."""
        return self._cursor(fresh=True).batches_left()

    def batches_left(self) -> int:
        """Batches from the current position to the end of its epoch."""
        return self._cursor().batches_left()

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        consumed = state.get("consumed") if isinstance(state, dict) else None
        if consumed and len(consumed) != max(1, self.num_workers):
            raise ConfigError(f"the data position was saved with {len(consumed)} loader worker(s) "
                              f"mid-epoch; resume with the same number (now {self.num_workers})")
        self.stream.load_state_dict(state)

    def _cursor(self, fresh: bool = False) -> _Cursor:
        stream = self.stream
        consumed = [] if fresh else stream._consumed
        return _Cursor(stream.worker_sizes(self.num_workers), consumed,
                       0 if fresh else stream._next_worker, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Any]:
        stream, epoch = self.stream, self.stream.epoch
        if len(self) == 0:
            raise ConfigError(f"{stream.samples_per_rank} samples per rank do not fill one batch "
                              f"of {self.batch_size} with {self.num_workers} worker(s): lower "
                              "the batch size or the number of workers")
        cursor = self._cursor()
        loader = DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=self.collate_fn, drop_last=self.drop_last,
                            persistent_workers=False, **self.loader_kwargs)
        for batch in loader:
            cursor.advance()
            if cursor.done():
                stream._set_position(epoch + 1, [], 0)
            else:
                stream._set_position(epoch, cursor.consumed, cursor.next_worker)
            yield batch
        if not cursor.done():
            raise EclipError(f"the data loader stopped {cursor.batches_left()} batch(es) before "
                             "the end of the epoch; were the shards changed during the run?")
