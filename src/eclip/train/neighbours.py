"""Neighbourhoods of catalogs for hard-negative batches (``data.batching: hard``).

A catalog's place is the centroid of its listings' vectors (``encode.embed_listings``: the fused
"both" vector by default, ``data.hard_vectors``) from the model a run starts from, or from the model
being trained when ``data.hard_refresh_epochs`` asks for fresh ones. Its neighbours are the nearest
centroids by cosine (FAISS exact k-nearest-neighbour search), those of the same category path first
(``data.hard_by_category``). Pairs above ``data.hard_negative_ceiling`` are likely the same product
under two ids: they are never neighbours, and the sampler keeps them out of one batch where it can.

The result is a :class:`eclip.train.sampler.Neighbourhoods` table over the sampler's catalog
numbers (:func:`eclip.train.sampler.number_groups`), the same on every rank (rank 0's is used).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.schema import Listing
from eclip.encode import embed_listings
from eclip.errors import ConfigError
from eclip.train.distributed import gather_objects
from eclip.train.sampler import (BatchOrder, HardNegativeOrder, Neighbourhoods, RandomOrder,
                                 number_groups)


def catalog_centroids(vectors: np.ndarray, numbers: np.ndarray, count: int) -> np.ndarray:
    """The unit mean of the rows of every catalog 0..count-1 (rows numbered as ``number_groups``;
    rows without a catalog are left out)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    sums = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    keep = numbers >= 0
    np.add.at(sums, numbers[keep], vectors[keep])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def _knn(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and positions in ``base`` of the ``k`` nearest rows to each query row."""
    import faiss

    k = min(k, len(base))
    if k == 0 or len(query) == 0:
        return np.zeros((len(query), 0), np.float32), np.zeros((len(query), 0), np.int64)
    sims, ids = faiss.knn(np.ascontiguousarray(query), np.ascontiguousarray(base), k,
                          faiss.METRIC_INNER_PRODUCT)
    return sims, ids.astype(np.int64)


def nearest_catalogs(centroids: np.ndarray, k: int, *, categories: Sequence[str | None] | None = None,
                     ceiling: float | None = None) -> Neighbourhoods:
    """Each catalog's ``k`` neighbours, nearest first: those of its category first (where
    ``categories`` are given and the catalog has one), then the nearest of all; never itself, and
    never one whose cosine is above ``ceiling`` (those are its ``close`` catalogs, up to ``k``)."""
    count = len(centroids)
    if k == 0 and ceiling is None:
        return Neighbourhoods(np.full((count, 0), -1))
    width = max(k, 1)
    search = 2 * width + 1  # room for itself and for candidates above the ceiling
    candidates: list[list[tuple[float, int]]] = [[] for _ in range(count)]
    if categories is not None:
        members: dict[str, list[int]] = {}
        for number, category in enumerate(categories):
            if category:
                members.setdefault(category, []).append(number)
        for group in members.values():
            if len(group) < 2:
                continue
            index = np.asarray(group, dtype=np.int64)
            sims, ids = _knn(centroids[index], centroids[index], search)
            for row, number in enumerate(group):
                candidates[number] += [(float(s), int(index[i]))
                                       for s, i in zip(sims[row], ids[row]) if i >= 0]
    sims, ids = _knn(centroids, centroids, search)
    neighbours = np.full((count, k), -1, dtype=np.int64)
    close = np.full((count, width if ceiling is not None else 0), -1, dtype=np.int64)
    for number in range(count):
        ranked = candidates[number] + [(float(s), int(i)) for s, i in zip(sims[number], ids[number])
                                       if i >= 0]
        chosen: list[int] = []
        near: list[int] = []
        for sim, other in ranked:
            if other == number or other in chosen or other in near:
                continue
            if ceiling is not None and sim > ceiling:
                if len(near) < close.shape[1]:
                    near.append(other)
            elif len(chosen) < k:
                chosen.append(other)
        neighbours[number, :len(chosen)] = chosen
        close[number, :len(near)] = near
    return Neighbourhoods(neighbours, close)


def catalog_categories(listings: Sequence[Listing], numbers: np.ndarray, count: int) -> list[str | None]:
    """The category path of every catalog: that of its first listing with one."""
    out: list[str | None] = [None] * count
    for listing, number in zip(listings, numbers.tolist()):
        if number >= 0 and out[number] is None and listing.category:
            out[number] = listing.category
    return out


def batch_order(data: DataConfig, model, listings: Sequence[Listing], groups, *,
                image_cache=None, batch_size: int = 128, fsdp: bool = False) -> BatchOrder:
    """The batch order ``data.batching`` asks for. ``hard``: neighbourhoods from ``model``'s
    vectors of ``listings`` (computed now, and again every ``data.hard_refresh_epochs`` epochs with
    the same model object as it trains); ``groups``: the rows' catalog ids as the sampler gets them.
    Every rank must call it (rank 0's neighbourhoods are used by all)."""
    if data.batching == "random":
        return RandomOrder()
    if data.hard_refresh_epochs and fsdp:
        raise ConfigError("data.hard_refresh_epochs needs the whole model on every rank to embed "
                          "the catalog; under train.parallel=fsdp use data.hard_refresh_epochs=0 "
                          "(the start model's neighbourhoods) or train.parallel=ddp")
    listings = list(listings)
    numbers = number_groups(groups)
    count = int(numbers.max()) + 1 if len(numbers) else 0
    categories = catalog_categories(listings, numbers, count) if data.hard_by_category else None
    switched_off = data.hard_neighbours == 0 and data.hard_negative_ceiling is None

    def compute() -> Neighbourhoods:
        if switched_off:
            return Neighbourhoods(np.full((count, 0), -1))
        with torch.random.fork_rng(devices=[]):  # embedding draws nothing; keep it that way
            emb = embed_listings(model, listings, image_cache=image_cache, batch_size=batch_size,
                                 progress=False, desc="hard-negative neighbourhoods")
        centroids = catalog_centroids(emb.modality(data.hard_vectors), numbers, count)
        hoods = nearest_catalogs(centroids, data.hard_neighbours, categories=categories,
                                 ceiling=data.hard_negative_ceiling)
        return gather_objects(hoods)[0]  # every rank plans with rank 0's

    return HardNegativeOrder(compute(), compute if data.hard_refresh_epochs else None,
                             data.hard_refresh_epochs)
