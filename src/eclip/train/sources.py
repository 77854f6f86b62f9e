"""Where a run's batches come from: listings in memory, or prepared shards streamed from disk.

A data source is an endless iterator of *unit* batches for this rank (the batch-size schedule decides
how many units a step takes) with a position that resumes exactly::

    source.epoch            the epoch of the next unit
    source.units_per_epoch  unit batches per rank in one epoch
    source.state_dict()     the position after the units handed out so far
    source.load_state_dict(state)

- :class:`ListingSource` (``data.catalog``): a :class:`CatalogBatchSampler` packs *global* unit
  batches (``unit x ranks`` rows, several listings of a catalog together) and every rank takes its
  slice of each, so listings of one catalog often sit on different ranks: the gathered, global
  targets then make them positives.
- :class:`ShardSource` (``data.shards``): :class:`eclip.train.stream.ShardStream`, each rank reading
  its own part of the shards with several workers.

Both hand out pixels as uint8 with their transform (``pixel_transform``; ``uint8=False``:
float pixels as before). The trainer reads either through :class:`OnDevice`, which hands out the
batches on the training device with their pixels normalised there
(:class:`eclip.train.data.DevicePrefetcher`: on CUDA the next batch is copied from pinned memory
and normalised on a side stream while the step runs), keeping the position of the batches
handed out.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from eclip.catalog.schema import Listing
from eclip.errors import EclipError
from eclip.train.data import DevicePrefetcher, ListingDataset, with_pixel_transform
from eclip.train.sampler import CatalogBatchSampler

Batch = dict[str, Any]


class DataSource(Protocol):
    epoch: int
    units_per_epoch: int

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RankSlice:
    """A batch sampler of global batches -> this rank's contiguous slice of each."""

    def __init__(self, sampler: CatalogBatchSampler, rank: int, world_size: int):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            rows = len(batch) // self.world_size
            yield batch[self.rank * rows:(self.rank + 1) * rows]


class ListingSource:
    """Unit batches of listings held in memory; see the module docstring (``uint8`` sets the
    dataset's pixel output)."""

    def __init__(self, dataset: ListingDataset, sampler: CatalogBatchSampler, collate, *,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0,
                 uint8: bool = True):
        self.dataset, self.sampler, self.collate = dataset, sampler, collate
        dataset.uint8 = uint8
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.seed = num_workers, seed
        # The loop's own position: with DataLoader workers the sampler runs ahead of the loop.
        self.position = dict(sampler.state_dict())

    @property
    def epoch(self) -> int:
        return self.position["epoch"]

    @property
    def units_per_epoch(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self.position = dict(self.sampler.state_dict())

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch = self.position["epoch"]
            self.sampler.set_epoch(epoch)  # keeps a resumed position inside the epoch
            self.sampler.prepare_epoch(epoch)  # hard batches: neighbourhoods refreshed where due
            plan = self.sampler.plan_state()  # what the epoch's batches are planned from
            self.dataset.set_epoch(epoch)
            # The loader draws its seed from its own generator: drawing from the global RNG would
            # shift the dropout masks of a resumed run.
            loader = DataLoader(self.dataset, batch_sampler=RankSlice(self.sampler, self.rank,
                                                                      self.world_size),
                                collate_fn=self.collate, num_workers=self.num_workers,
                                pin_memory=torch.cuda.is_available(),
                                generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in loader:
                batch = with_pixel_transform(batch, self.dataset.transform)
                done = self.position["batches_done"] + 1
                self.position = ({"epoch": epoch + 1, "batches_done": 0} if done == len(self.sampler)
                                 else {"epoch": epoch, "batches_done": done}) | plan
                yield batch


class ShardSource:
    """Unit batches streamed from prepared shards (a :class:`eclip.train.stream.StreamLoader`;
    ``uint8`` sets its stream's pixel output)."""

    def __init__(self, loader, *, uint8: bool = True):
        self.loader = loader
        loader.stream.uint8 = uint8

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def units_per_epoch(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batches = iter(self.loader)
            # A DataLoader without a generator of its own draws its seed from the global RNG when its
            # first batch is asked for: keep that draw from shifting the dropout masks of a resumed run.
            with torch.random.fork_rng(devices=[]):
                first = next(batches, None)
            if first is None:
                raise EclipError("the shard stream yields no batch in an epoch")
            transform = self.loader.stream.transform
            yield with_pixel_transform(first, transform)
            for batch in batches:
                yield with_pixel_transform(batch, transform)


class OnDevice:
    """``source``'s batches on ``device``, normalised there (:class:`DevicePrefetcher`: on CUDA
    one batch is read ahead and copied on a side stream; ``read_ahead`` forces it either way).

    Its ``epoch`` and ``state_dict()`` are those after the last batch *handed out*, not after the
    one read ahead, so a checkpoint taken between steps resumes exactly."""

    def __init__(self, source: DataSource, device: torch.device | str, *,
                 read_ahead: bool | None = None):
        self.source, self.device, self.read_ahead = source, torch.device(device), read_ahead
        self._handed_out: tuple[dict[str, Any], int] | None = None  # None: the source's own

    @property
    def epoch(self) -> int:
        return self._handed_out[1] if self._handed_out else self.source.epoch

    @property
    def units_per_epoch(self) -> int:
        return self.source.units_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return self._handed_out[0] if self._handed_out else self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        self._handed_out = None

    def _position(self) -> tuple[dict[str, Any], int]:
        return self.source.state_dict(), self.source.epoch

    def __iter__(self) -> Iterator[Batch]:
        batches = DevicePrefetcher(self.source, self.device, position=self._position,
                                   read_ahead=self.read_ahead)
        for batch in batches:
            self._handed_out = batches.position
            yield batch


def shard_listings(shard_dir: str | Path, split: str | None) -> list[Listing]:
    """The listings of one split of a shard directory, from the shards' records (images: the paths
    they were prepared from). Reads every sample of the split once."""
    from eclip.catalog.shards import ShardIndex, listing_from_record, read_shard

    index = ShardIndex.load(shard_dir)
    return [listing_from_record(sample.record) for shard in index.select(split)
            for sample in read_shard(index.root / shard.name)]
