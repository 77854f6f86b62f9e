"""Batches that keep several listings of one catalog together.

Catalog-aware targets only help when listings of one catalog meet in a batch; with a plain shuffle over
millions of listings they almost never do. ``CatalogBatchSampler`` cuts every catalog into *chunks* of up
to ``per_group`` listings, shuffles the chunks and packs them into batches, keeping each chunk whole
wherever the batch size allows.

Which chunks meet in a batch is a strategy, the sampler's *order* (``data.batching``):
:class:`RandomOrder` packs the shuffled chunks as they come; :class:`HardNegativeOrder` grows each
batch from a catalog's neighbourhood (catalogs that look alike: the same category path, near
centroids of the model's vectors, see ``train/neighbours.py``), so that its negatives are hard. An
order only rearranges the shuffled chunks: the plan of an epoch depends on ``(seed, epoch)`` and the
order's neighbourhoods alone, so every rank computes the same global batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Protocol

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

    ``order`` (default :class:`RandomOrder`) decides which chunks share a batch; the sampler's state
    carries the order's own state (``"order"``) where it has one.
    """

    def __init__(self, group_ids: Sequence[Hashable] | torch.Tensor, batch_size: int, per_group: int = 2,
                 seed: int = 0, drop_last: bool = False, order: BatchOrder | None = None):
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
        self._group_of = number_groups(group_ids)
        self.order = order if order is not None else RandomOrder()

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

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, **self.plan_state()}

    def plan_state(self) -> dict[str, Any]:
        """The order's state (``{"order": ...}``), empty where it has none."""
        state = self.order.state_dict()
        return {"order": state} if state else {}

    def prepare_epoch(self, epoch: int) -> None:
        """Let the order refresh what it plans from before ``epoch`` starts (the data source calls
        it at the start of every epoch, on every rank at the same time)."""
        self.order.prepare(epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        self.order.load_state_dict(state.get("order") or {})
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
        arranged = self.order.arrange(self._group_of[order[starts]], lengths, self.batch_size)
        starts, lengths = starts[arranged], lengths[arranged]
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


def number_groups(group_ids: Sequence[Hashable]) -> np.ndarray:
    """One integer per row, equal for rows of one catalog (0, 1, ... in order of first appearance);
    a row without a catalog gets -(row + 1). The catalog numbers that orders' neighbourhoods use."""
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    numbers: dict[Hashable, int] = {}
    out = np.empty(len(group_ids), dtype=np.int64)
    for row, gid in enumerate(group_ids):
        no_catalog = gid is None or gid == "" or (
            isinstance(gid, (int, np.integer)) and not isinstance(gid, bool) and gid < 0)
        out[row] = -(row + 1) if no_catalog else numbers.setdefault(gid, len(numbers))
    return out


CLOSE_SCAN = 256  # chunks of one size looked through for one not close to a batch's catalogs


class BatchOrder(Protocol):
    """Which shuffled chunks share a batch: ``arrange`` returns the chunks' positions in the order
    the packer takes them. It must depend only on its arguments and the order's state, so that
    every rank arranges the same epoch the same way."""

    def arrange(self, chunk_groups: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray: ...

    def prepare(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RandomOrder:
    """The shuffled chunks as they come (``data.batching: random``)."""

    def arrange(self, chunk_groups: np.ndarray, lengths: np.ndarray, batch_size: int) -> np.ndarray:
        return np.arange(len(lengths))

    def prepare(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Neighbourhoods:
    """Per catalog (numbered as :func:`number_groups`): ``neighbours`` (G, k), the catalogs to put in
    its batch, nearest first, -1 where there are fewer; ``close`` (G, m), the catalogs above the
    similarity ceiling (likely the same product under another id), kept out of its batch."""

    def __init__(self, neighbours: np.ndarray, close: np.ndarray | None = None):
        self.neighbours = _table(neighbours)
        self.close = (np.full((len(self.neighbours), 0), -1, np.int64) if close is None
                      else _table(close))
        if len(self.close) != len(self.neighbours):
            raise ValueError("neighbours and close must have one row per catalog")
        self._close_sets: list[set[int]] | None = None

    def __len__(self) -> int:
        return len(self.neighbours)

    def close_to(self, group: int) -> set[int]:
        """The catalogs kept apart from ``group`` (both directions of the ceiling's pairs)."""
        if self._close_sets is None:
            sets: list[set[int]] = [set() for _ in range(len(self))]
            for g, h in zip(*np.nonzero(self.close >= 0)):
                other = int(self.close[g, h])
                sets[g].add(other)
                sets[other].add(int(g))
            self._close_sets = sets
        return self._close_sets[group] if 0 <= group < len(self) else set()

    def to_state(self) -> dict[str, torch.Tensor]:
        return {"neighbours": torch.from_numpy(self.neighbours.copy()),
                "close": torch.from_numpy(self.close.copy())}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Neighbourhoods:
        return cls(torch.as_tensor(state["neighbours"]).numpy(), torch.as_tensor(state["close"]).numpy())


def _table(rows) -> np.ndarray:
    table = np.asarray(rows, dtype=np.int64)
    return table.reshape(len(table), -1) if table.size else table.reshape(len(table), 0)


class HardNegativeOrder:
    """Batches grown from neighbourhoods of catalogs (``data.batching: hard``).

    Each batch starts from the earliest chunk of the shuffled order that fits it (the random
    order's choice) and is filled breadth-first from its catalog's neighbours, their neighbours, and
    so on (each catalog's next chunk in the shuffled order, where it fits the room left); when the
    walk runs dry, the earliest fitting chunk of the shuffled order starts a new walk in the same
    batch. A chunk is split over two batches only where no remaining chunk fits, as in the random
    order. Catalogs in each other's ``close`` lists are not put in one batch as long as another chunk
    fits (near the end of an epoch, when only such chunks are left, they may share a batch). Without
    neighbours and close pairs this is exactly the random order's packing.

    ``compute`` (optional) returns fresh neighbourhoods from the model being trained; with
    ``refresh_epochs`` N > 0 it is called at the start of every N-th epoch (``prepare``), and the
    neighbourhoods in use are part of the state (a run resumed mid-epoch plans with those of its
    epoch's start).
    """

    def __init__(self, neighbourhoods: Neighbourhoods,
                 compute: Callable[[], Neighbourhoods] | None = None, refresh_epochs: int = 0):
        if refresh_epochs and compute is None:
            raise ConfigError("refreshing hard-negative neighbourhoods needs a function that "
                              "computes them")
        self.neighbourhoods = neighbourhoods
        self.compute, self.refresh_epochs = compute, refresh_epochs
        self.planned_at = 0  # the epoch whose start computed the neighbourhoods in use

    def prepare(self, epoch: int) -> None:
        if not self.refresh_epochs:
            return
        due = epoch - epoch % self.refresh_epochs
        if due != self.planned_at:
            self.neighbourhoods = self.compute()
            self.planned_at = due

    def state_dict(self) -> dict[str, Any]:
        if not self.refresh_epochs:  # the start model's neighbourhoods: computed again on resume
            return {}
        return {"planned_at": self.planned_at, **self.neighbourhoods.to_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.refresh_epochs and state:
            self.neighbourhoods = Neighbourhoods.from_state(state)
            self.planned_at = int(state["planned_at"])

    def arrange(self, chunk_groups: np.ndarray, lengths: np.ndarray, batch_size: int, *,
                fill: int = 0, whole: bool = True) -> np.ndarray:
        """The chunks' positions in batch order. ``fill``: rows already in the first batch (a
        shard stream's buffer that starts mid-batch). ``whole=False`` is a shard stream's packing,
        which splits chunks wherever a batch ends: after the walk through neighbourhoods the next
        chunk is the earliest unused one whatever its size, so that without neighbours and close
        pairs the order is the shuffled order itself."""
        hoods = self.neighbourhoods
        chunks = _Chunks(chunk_groups, lengths, hoods)
        out: list[int] = []
        members, frontier, seen = set(), deque(), set()
        fill = fill % batch_size
        while len(out) < chunks.count:
            room = batch_size - fill
            pick = chunks.from_frontier(frontier, room, members)
            if pick < 0:
                pick = chunks.earliest(room, members) if whole else chunks.earliest_any(members)
            if pick < 0:  # nothing fits whole: the earliest chunk is split, its rest opens the next
                pick = chunks.first_unused()
            group = int(chunk_groups[pick])
            chunks.used[pick] = True
            out.append(pick)
            members.add(group)
            if 0 <= group < len(hoods):
                for other in hoods.neighbours[group].tolist():
                    if other >= 0 and other not in seen and other not in members:
                        seen.add(other)
                        frontier.append(other)
            fill += int(lengths[pick])
            if fill >= batch_size:  # the batch is full; a split chunk's rest opens the next one
                fill %= batch_size
                members = {group} if fill else set()
                frontier, seen = deque(), set()
                if fill and 0 <= group < len(hoods):
                    frontier.extend(o for o in hoods.neighbours[group].tolist() if o >= 0)
                    seen.update(frontier)
        return np.asarray(out, dtype=np.int64)


class _Chunks:
    """The chunks :meth:`HardNegativeOrder.arrange` places: which are used, each size's queue in
    shuffled order with the head of its unused part, each catalog's chunks and how many of them
    are taken."""

    def __init__(self, chunk_groups: np.ndarray, lengths: np.ndarray, hoods: Neighbourhoods):
        self.groups, self.lengths, self.hoods = chunk_groups, lengths, hoods
        self.count = len(lengths)
        self.largest = int(lengths.max()) if self.count else 0
        self.used = np.zeros(self.count, dtype=bool)
        self.by_size = [np.flatnonzero(lengths == size).tolist()
                        for size in range(self.largest + 1)]
        self.heads = [0] * (self.largest + 1)
        # each catalog's chunks in shuffled order, and where its first unused one may be
        self.chunks_of: dict[int, list[int]] = {}
        for position, group in enumerate(chunk_groups.tolist()):
            self.chunks_of.setdefault(group, []).append(position)
        self.taken = dict.fromkeys(self.chunks_of, 0)
        self.any_close = bool((hoods.close >= 0).any())

    def advance(self, size: int) -> bool:
        """Move size ``size``'s head past used chunks; whether an unused one is left."""
        queue, heads = self.by_size[size], self.heads
        while heads[size] < len(queue) and self.used[queue[heads[size]]]:
            heads[size] += 1
        return heads[size] < len(queue)

    def is_close(self, position: int, members: set[int]) -> bool:
        return bool(self.hoods.close_to(int(self.groups[position])) & members)

    def from_frontier(self, frontier: deque, room: int, members: set[int]) -> int:
        """The next catalog of the walk through neighbourhoods that has an unused chunk fitting
        ``room`` and is not close to ``members`` (-1: the frontier ran out)."""
        while frontier:
            group = frontier.popleft()
            chunks = self.chunks_of.get(group, ())
            while self.taken.get(group, 0) < len(chunks) and self.used[chunks[self.taken[group]]]:
                self.taken[group] += 1  # taken out of turn, as the earliest chunk that fitted
            if self.taken.get(group, 0) < len(chunks):
                position = chunks[self.taken[group]]
                if self.lengths[position] <= room and not self.hoods.close_to(group) & members:
                    return position
        return -1

    def earliest(self, room: int, members: set[int]) -> int:
        """The earliest unused chunk that fits ``room``: one whose catalog is not close to
        ``members`` where one of the first ``CLOSE_SCAN`` of its size is, else the earliest
        (-1: none fits)."""
        spare = best = -1
        for size in range(1, min(room, self.largest) + 1):
            if not self.advance(size):
                continue
            queue = self.by_size[size]
            first = queue[self.heads[size]]
            spare = first if spare < 0 or first < spare else spare
            candidate = first
            if self.any_close and members:
                candidate = -1
                for position in queue[self.heads[size]:self.heads[size] + CLOSE_SCAN]:
                    if best >= 0 and position > best:
                        break
                    if not self.used[position] and not self.is_close(position, members):
                        candidate = position
                        break
            if candidate >= 0 and (best < 0 or candidate < best):
                best = candidate
        return best if best >= 0 else spare

    def first_unused(self) -> int:
        return min((self.by_size[s][self.heads[s]] for s in range(1, self.largest + 1)
                    if self.advance(s)), default=-1)

    def earliest_any(self, members: set[int]) -> int:
        """The earliest unused chunk of any size, one not close to ``members`` where one of the
        next ``CLOSE_SCAN`` is."""
        first = self.first_unused()
        if first < 0 or not (self.any_close and members):
            return first
        for position in range(first, min(first + CLOSE_SCAN, self.count)):
            if not self.used[position] and not self.is_close(position, members):
                return position
        return first
