"""Batches that keep several listings of one catalog together.

Catalog-aware targets only help when listings of one catalog meet in a batch; with a plain shuffle over
millions of listings they almost never do. ``CatalogBatchSampler`` cuts every catalog into *chunks* of up
to ``per_group`` listings, shuffles the chunks and packs them into batches, keeping each chunk whole
wherever the batch size allows.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from eclip.errors import ConfigError


class CatalogBatchSampler:
    """An iterable of index lists, usable as ``batch_sampler=`` of a ``torch.utils.data.DataLoader``.

    ``group_ids[i]`` names the catalog of row i. ``None``, ``""`` or a negative integer means "no
    catalog": such a row is a group of its own (the loss uses the same convention for negative ids). A
    1-D integer tensor is accepted.

    Each epoch, every group's rows are shuffled and cut into chunks of ``min(per_group, batch_size)``
    rows (the last chunk of a group may be shorter); the chunks are shuffled and packed in that order:
    each batch takes the earliest remaining chunk that still fits its free room. Every batch holds
    exactly ``batch_size`` rows except the last one of the epoch, which ``drop_last`` drops when it is
    short. A chunk is split over two batches only when no remaining chunk fits the room left in a batch
    (near the end of an epoch, or when ``batch_size`` is not a multiple of the chunk sizes and the
    single-row chunks have run out); then the rest of it opens the next batch. ``per_group=1`` is a
    plain shuffled sampler.

    The order depends on ``(seed, epoch)`` only. Progress is counted in batches yielded:
    ``state_dict()`` taken after k batches, loaded into a fresh sampler, makes the next pass continue
    with batch k + 1 of the same epoch. Once the last batch of an epoch is yielded the state reads
    ``{"epoch": epoch + 1, "batches_done": 0}``, so successive passes walk through the epochs by
    themselves. ``set_epoch`` sets the epoch explicitly (as with ``DistributedSampler``) and keeps the
    progress when the epoch is the current one, so that calling it after ``load_state_dict`` is safe.
    With ``DataLoader`` workers prefetching, the sampler runs ahead of training: take the progress to
    save from the number of batches the loop consumed, not from this counter.
    """

    def __init__(self, group_ids: Sequence[Hashable] | torch.Tensor, batch_size: int, per_group: int = 2,
                 seed: int = 0, drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
            raise ConfigError(f"per_group must be a positive integer (1 = plain shuffle), got {per_group!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(group_ids, torch.Tensor):
            if group_ids.dim() != 1:
                raise ValueError("a group id tensor must be 1-D")
            group_ids = group_ids.tolist()
        self.batch_size = batch_size
        self.per_group = per_group
        self.chunk_size = min(per_group, batch_size)
        self.seed = seed
        self.drop_last = drop_last
        self.num_rows = len(group_ids)
        self.epoch = 0
        self.batches_done = 0
        self._group_of = self._number_groups(group_ids)

    @staticmethod
    def _number_groups(group_ids: Sequence[Hashable]) -> np.ndarray:
        """One integer per row, equal for rows of one catalog; a row without a catalog gets -(row + 1)."""
        numbers: dict[Hashable, int] = {}
        out = np.empty(len(group_ids), dtype=np.int64)
        for row, gid in enumerate(group_ids):
            no_catalog = gid is None or gid == "" or (
                isinstance(gid, (int, np.integer)) and not isinstance(gid, bool) and gid < 0)
            out[row] = -(row + 1) if no_catalog else numbers.setdefault(gid, len(numbers))
        return out

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch``; progress restarts unless ``epoch`` is the current epoch."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches_done = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if epoch < 0 or not 0 <= done <= len(self):
            raise ConfigError(
                f"sampler state {state} does not fit this data: it has {len(self)} batches per epoch; "
                "resume with the same catalog, batch_size and drop_last as the interrupted run")
        self.epoch, self.batches_done = (epoch + 1, 0) if done == len(self) > 0 else (epoch, done)

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, in order (``drop_last`` applied)."""
        if self.num_rows == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        order, starts, lengths = self._chunks(rng)
        packed = self._pack(lengths)
        # Lay the packed chunks end to end; batches are then consecutive runs of batch_size rows.
        offsets = np.cumsum(lengths[packed]) - lengths[packed]
        rows = order[np.arange(self.num_rows) + np.repeat(starts[packed] - offsets, lengths[packed])]
        stop = len(self) * self.batch_size if self.drop_last else self.num_rows
        return [rows[i:i + self.batch_size].tolist() for i in range(0, stop, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        batches = self.batches(epoch)
        for k in range(self.batches_done, len(batches)):
            # The end of an epoch is recorded as the start of the next one.
            self.epoch, self.batches_done = (epoch + 1, 0) if k + 1 == len(batches) else (epoch, k + 1)
            yield batches[k]

    def _chunks(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows grouped by catalog in random order, and the chunks (start in it, length), shuffled."""
        # Sorting by (group, random key) shuffles the rows inside every group in one vectorised step.
        order = np.lexsort((rng.random(self.num_rows), self._group_of))
        groups = self._group_of[order]
        group_start = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        rank = np.arange(self.num_rows) - np.repeat(group_start, np.diff(np.r_[group_start, self.num_rows]))
        starts = np.flatnonzero(rank % self.chunk_size == 0)
        lengths = np.diff(np.r_[starts, self.num_rows])
        shuffle = rng.permutation(len(starts))
        return order, starts[shuffle], lengths[shuffle]

    def _pack(self, lengths: np.ndarray) -> np.ndarray:
        """Chunk positions in batch order: each batch takes the earliest chunk that fits its room."""
        if self.chunk_size == 1:
            return np.arange(len(lengths))
        by_size = [np.flatnonzero(lengths == size).tolist() for size in range(self.chunk_size + 1)]
        heads = [0] * (self.chunk_size + 1)
        packed: list[int] = []
        fill = 0  # rows already in the batch being filled
        for _ in range(len(lengths)):
            room = self.batch_size - fill
            fit = fit_size = first = first_size = -1
            for size in range(1, self.chunk_size + 1):
                if heads[size] < len(by_size[size]):
                    position = by_size[size][heads[size]]
                    if first < 0 or position < first:
                        first, first_size = position, size
                    if size <= room and (fit < 0 or position < fit):
                        fit, fit_size = position, size
            if fit < 0:  # nothing fits whole: split the earliest chunk, its rest opens the next batch
                fit, fit_size = first, first_size
            heads[fit_size] += 1
            packed.append(fit)
            fill = (fill + fit_size) % self.batch_size
        return np.asarray(packed, dtype=np.int64)
