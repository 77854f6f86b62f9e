"""CatalogBatchSampler: coverage, determinism, catalogs kept together, exact resume."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from eclip.errors import ConfigError
from eclip.train.sampler import CatalogBatchSampler


def marketplace_groups(seed: int = 0, rows: int = 600) -> list[str | None]:
    """About half the listings without a catalog, the rest in catalogs of 1 to 6 listings."""
    rng = random.Random(seed)
    groups: list[str | None] = []
    catalog = 0
    while len(groups) < rows:
        if rng.random() < 0.5:
            groups.append(None)
        else:
            groups.extend([f"cat{catalog}"] * rng.randint(1, 6))
            catalog += 1
    groups = groups[:rows]
    rng.shuffle(groups)
    return groups


def has_pair(batch: list[int], groups: list) -> bool:
    counts = Counter(groups[i] for i in batch if groups[i] is not None)
    return any(n >= 2 for n in counts.values())


@pytest.mark.parametrize("batch_size,per_group,drop_last", [
    (32, 2, False), (32, 2, True), (7, 3, False), (7, 3, True), (10, 1, False), (4, 9, False)])
def test_every_index_once_and_full_batches(batch_size, per_group, drop_last):
    groups = marketplace_groups(rows=250)
    sampler = CatalogBatchSampler(groups, batch_size, per_group=per_group, seed=3, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len(b) == batch_size for b in batches[:-1])
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    if drop_last:
        assert len(seen) == 250 - 250 % batch_size and len(batches[-1]) == batch_size
    else:
        assert sorted(seen) == list(range(250))


def test_len():
    groups = marketplace_groups(rows=101)
    assert len(CatalogBatchSampler(groups, 10)) == 11
    assert len(CatalogBatchSampler(groups, 10, drop_last=True)) == 10
    assert len(CatalogBatchSampler(groups[:100], 10)) == 10
    assert len(CatalogBatchSampler(groups[:100], 10, drop_last=True)) == 10
    assert len(CatalogBatchSampler(groups[:5], 10, drop_last=True)) == 0
    assert list(CatalogBatchSampler(groups[:5], 10, drop_last=True)) == []
    assert list(CatalogBatchSampler([], 10)) == []


def test_deterministic_in_seed_and_epoch():
    groups = marketplace_groups()
    a = CatalogBatchSampler(groups, 16, seed=1)
    b = CatalogBatchSampler(groups, 16, seed=1)
    assert a.batches(0) == b.batches(0)
    assert a.batches(4) == b.batches(4)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != CatalogBatchSampler(groups, 16, seed=2).batches(0)
    b.set_epoch(4)
    assert list(b) == a.batches(4)


def test_passes_move_to_the_next_epoch():
    sampler = CatalogBatchSampler(marketplace_groups(), 16, seed=5)
    first, second = list(sampler), list(sampler)
    assert first == sampler.batches(0) and second == sampler.batches(1)
    assert sampler.state_dict() == {"epoch": 2, "batches_done": 0}
    sampler.set_epoch(2)  # the loop's own set_epoch after a full pass changes nothing
    assert list(sampler) == sampler.batches(2)


def test_state_after_the_last_batch_is_the_next_epoch():
    sampler = CatalogBatchSampler(marketplace_groups(), 16, seed=5)
    it = iter(sampler)
    for _ in range(len(sampler) - 1):
        next(it)
    assert sampler.state_dict() == {"epoch": 0, "batches_done": len(sampler) - 1}
    next(it)
    assert sampler.state_dict() == {"epoch": 1, "batches_done": 0}
    resumed = CatalogBatchSampler(marketplace_groups(), 16, seed=5)
    resumed.load_state_dict({"epoch": 0, "batches_done": len(sampler)})
    assert resumed.state_dict() == {"epoch": 1, "batches_done": 0}
    assert list(resumed) == sampler.batches(1)


def test_catalogs_land_together_in_batches():
    groups = marketplace_groups(seed=7)
    grouped = CatalogBatchSampler(groups, 32, per_group=2, seed=0).batches(0)
    plain = CatalogBatchSampler(groups, 32, per_group=1, seed=0).batches(0)
    grouped_with_pair = sum(has_pair(b, groups) for b in grouped)
    plain_with_pair = sum(has_pair(b, groups) for b in plain)
    assert grouped_with_pair == len(grouped)  # every batch meets catalog-aware targets
    assert plain_with_pair < grouped_with_pair
    pairs = lambda batches: sum(  # noqa: E731
        n // 2 for b in batches for g, n in Counter(groups[i] for i in b).items() if g is not None)
    assert pairs(grouped) > 2 * pairs(plain)


@pytest.mark.parametrize("per_group", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_catalog_with_enough_listings_meets_itself(per_group, seed):
    groups = marketplace_groups(seed=seed)
    sizes = Counter(g for g in groups if g is not None)
    batches = CatalogBatchSampler(groups, 24, per_group=per_group, seed=seed).batches(0)
    best: Counter = Counter()
    for batch in batches:
        for g, n in Counter(groups[i] for i in batch if groups[i] is not None).items():
            best[g] = max(best[g], n)
    for g, size in sizes.items():
        assert best[g] >= min(size, per_group), g


def test_chunks_are_never_split_when_sizes_allow():
    # Every catalog has 2 or 4 listings and the batch size is even: no chunk ever needs splitting.
    rng = random.Random(0)
    groups = [g for c in range(60) for g in [c] * rng.choice([2, 4])]
    rng.shuffle(groups)
    for epoch in range(3):
        for batch in CatalogBatchSampler(groups, 10, per_group=2, seed=1).batches(epoch):
            assert all(n % 2 == 0 for n in Counter(groups[i] for i in batch).values())


def test_per_group_above_batch_size_fills_batches_with_one_catalog():
    groups = ["a"] * 12 + ["b"] * 8
    for batch in CatalogBatchSampler(groups, 4, per_group=10, seed=0):
        assert len({groups[i] for i in batch}) == 1


def test_rows_without_catalog_are_their_own_groups():
    def epochs_together(first_four):  # epochs in which rows 0-3 share one batch
        sampler = CatalogBatchSampler([first_four] * 4 + [None] * 12, 4, per_group=4, seed=0)
        return sum(any({0, 1, 2, 3} <= set(b) for b in sampler.batches(e)) for e in range(10))

    assert epochs_together("x") == 10  # a catalog of 4 stays in one chunk
    for no_catalog in (None, -1, ""):
        assert epochs_together(no_catalog) < 3


def test_tensor_group_ids_match_list():
    ids = torch.tensor([3, 3, -1, 0, 0, 0, -1, 5, 3, -1])
    from_tensor = CatalogBatchSampler(ids, 4, per_group=2, seed=9)
    from_list = CatalogBatchSampler([None if i < 0 else i for i in ids.tolist()], 4, per_group=2, seed=9)
    assert from_tensor.batches(2) == from_list.batches(2)


def test_resume_mid_epoch_continues_identically():
    groups = marketplace_groups(seed=2)
    reference = CatalogBatchSampler(groups, 16, seed=4)
    reference.set_epoch(3)
    uninterrupted = list(reference)

    interrupted = CatalogBatchSampler(groups, 16, seed=4)
    interrupted.set_epoch(3)
    it = iter(interrupted)
    head = [next(it) for _ in range(5)]
    state = interrupted.state_dict()
    assert state == {"epoch": 3, "batches_done": 5}

    resumed = CatalogBatchSampler(groups, 16, seed=4)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a trainer's loop calling set_epoch again keeps the progress
    tail = list(resumed)
    assert head + tail == uninterrupted
    resumed.set_epoch(4)
    assert resumed.state_dict() == {"epoch": 4, "batches_done": 0}


def test_resume_through_dataloader():
    groups = marketplace_groups(rows=120)
    data = list(range(120))
    sampler = CatalogBatchSampler(groups, 8, seed=0)
    full = [b.tolist() for b in DataLoader(data, batch_sampler=sampler)]
    assert full == sampler.batches(0)

    sampler = CatalogBatchSampler(groups, 8, seed=0)
    loader = iter(DataLoader(data, batch_sampler=sampler))
    head = [next(loader).tolist() for _ in range(6)]
    resumed = CatalogBatchSampler(groups, 8, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    tail = [b.tolist() for b in DataLoader(data, batch_sampler=resumed)]
    assert head + tail == full


def test_validation():
    with pytest.raises(ConfigError, match="batch_size"):
        CatalogBatchSampler([1, 2], 0)
    with pytest.raises(ConfigError, match="per_group"):
        CatalogBatchSampler([1, 2], 2, per_group=0)
    with pytest.raises(ConfigError, match="seed"):
        CatalogBatchSampler([1, 2], 2, seed=-1)
    sampler = CatalogBatchSampler(list(range(10)), 4)
    with pytest.raises(ConfigError, match="same catalog, batch_size"):
        sampler.load_state_dict({"epoch": 0, "batches_done": 4})
