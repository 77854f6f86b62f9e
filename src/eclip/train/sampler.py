"""Batches that keep several listings of one catalog together.

Catalog-aware targets only help when listings of one catalog meet in a batch; with a plain shuffle over
millions of listings they almost never do. ``CatalogBatchSampler`` cuts every catalog into *chunks* of up
to ``per_group`` listings, shuffles the chunks and packs them into batches without splitting them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from eclip.errors import ConfigError


class CatalogBatchSampler:
    """An iterable of index lists, usable as ``batch_sampler=`` of a ``torch.utils.data.DataLoader``.

    ``group_ids[i]`` names the catalog of row i. ``None`` or a negative integer means "no catalog": such
    a row is a group of its own (the loss uses the same convention). A 1-D integer tensor is accepted.

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
    with batch k + 1 of the same epoch. A pass that starts after a complete epoch moves on to the next
    epoch by itself; ``set_epoch`` sets the epoch explicitly (as with ``DistributedSampler``) and keeps
    the progress when the epoch is the current one, so that calling it after ``load_state_dict`` is safe.
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
        """Dense group numbers, one per row; rows without a catalog get numbers of their own."""
        numbers: dict[Hashable, int] = {}
        out = np.empty(len(group_ids), dtype=np.int64)
        count = 0
        for row, gid in enumerate(group_ids):
            own = gid is None or (isinstance(gid, (int, np.integer)) and not isinstance(gid, bool) and gid < 0)
            if own or gid not in numbers:
                if not own:
                    numbers[gid] = count
                out[row], count = count, count + 1
            else:
                out[row] = numbers[gid]
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
        self.epoch, self.batches_done = epoch, done

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, in order (``drop_last`` applied)."""
        if self.num_rows == 0:
            return []
        rng = np.random.default_rng([self.seed, epoch])
        # One queue per chunk size, each in shuffled order; the position breaks ties between queues.
        queues: list[deque[tuple[int, list[int]]]] = [deque() for _ in range(self.chunk_size + 1)]
        for position, chunk in enumerate(self._chunks(rng)):
            queues[len(chunk)].append((position, chunk.tolist()))

        batches: list[list[int]] = []
        carry: list[int] = []  # the rest of a chunk split at the end of the previous batch
        while carry or any(queues):
            batch, carry = carry, []
            while len(batch) < self.batch_size and any(queues):
                room = self.batch_size - len(batch)
                fitting = [q for q in queues[1:room + 1] if q]
                if fitting:
                    _, chunk = min(fitting, key=lambda q: q[0][0]).popleft()
                    batch.extend(chunk)
                else:  # nothing fits whole: split the earliest chunk
                    _, chunk = min((q for q in queues if q), key=lambda q: q[0][0]).popleft()
                    batch.extend(chunk[:room])
                    carry = chunk[room:]
            batches.append(batch)
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.batches_done >= len(self) > 0:
            self.epoch, self.batches_done = self.epoch + 1, 0
        batches = self.batches(self.epoch)
        while self.batches_done < len(batches):
            batch = batches[self.batches_done]
            self.batches_done += 1
            yield batch

    def _chunks(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Every group's rows in random order, cut into chunks; the chunks in random order."""
        # Sorting by (group, random key) shuffles the rows inside each group in one vectorised step.
        order = np.lexsort((rng.random(self.num_rows), self._group_of))
        groups = self._group_of[order]
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        rank = np.arange(self.num_rows) - np.repeat(starts, np.diff(np.r_[starts, self.num_rows]))
        chunk_start = np.flatnonzero((rank % self.chunk_size) == 0)
        chunks = np.split(order, chunk_start[1:])
        return [chunks[i] for i in rng.permutation(len(chunks))]
