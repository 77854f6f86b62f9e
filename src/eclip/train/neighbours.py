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
from tqdm.auto import tqdm

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


def dense_knn(query: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_knn` returns, from the dense similarity matrix in float64 (a shuffle buffer's
    few hundred catalogs: no FAISS thread pool inside a forked loader worker; ties break by
    position, the same in every process)."""
    k = min(k, len(base))
    if k == 0 or len(query) == 0:
        return np.zeros((len(query), 0), np.float32), np.zeros((len(query), 0), np.int64)
    sims = np.asarray(query, np.float64) @ np.asarray(base, np.float64).T
    ids = (np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1]
           else np.broadcast_to(np.arange(k), sims.shape).copy())
    top = np.take_along_axis(sims, ids, axis=1)
    ranked = np.lexsort((ids, -top))  # by similarity, then by position
    ids = np.take_along_axis(ids, ranked, axis=1)
    return np.take_along_axis(top, ranked, axis=1).astype(np.float32), ids.astype(np.int64)


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
                     ceiling: float | None = None, knn=None) -> Neighbourhoods:
    """Each catalog's ``k`` neighbours, nearest first: those of its category first (where
    ``categories`` are given and the catalog has one), then the nearest of all; never itself, and
    never one whose cosine is above ``ceiling`` (those are its ``close`` catalogs, up to ``k``).
    ``knn``: the search (default FAISS exact, :func:`dense_knn` for a shuffle buffer)."""
    _knn_search = knn if knn is not None else _knn
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
            sims, ids = _knn_search(centroids[index], centroids[index], search)
            sims_rows, ids_rows, index_list = sims.tolist(), ids.tolist(), index.tolist()
            for row, number in enumerate(group):
                candidates[number] += [(s, index_list[i])
                                       for s, i in zip(sims_rows[row], ids_rows[row]) if i >= 0]
    sims, ids = _knn_search(centroids, centroids, search)
    neighbours = np.full((count, k), -1, dtype=np.int64)
    close = np.full((count, width if ceiling is not None else 0), -1, dtype=np.int64)
    sims_rows, ids_rows = sims.tolist(), ids.tolist()  # plain floats and ints: fast to walk
    for number in range(count):
        ranked = candidates[number] + [(s, i) for s, i in zip(sims_rows[number], ids_rows[number])
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


# ------------------------------------------------------------------ streaming shards

class BufferOrder:
    """Hard batches inside a shard stream's shuffle buffer (``data.batching: hard`` with
    ``data.shards``; :class:`eclip.train.stream.ShardStream` calls :meth:`arrange` on every
    shuffled block of a loader worker).

    A block's catalogs are placed by the centroids of their listings' vectors in ``vectors``
    (one row per shard sample, ``rows[sample index]`` its row: the start model's vectors, see
    :func:`shard_vectors`), and each one's neighbours are the nearest catalogs *of the same block*
    (same category path first, ``categories`` per row, None: no blocking; pairs above ``ceiling``
    kept apart). :class:`~eclip.train.sampler.HardNegativeOrder` then walks through them with the
    stream's packing (``whole=False``): a batch of ``batch_size`` items is grown from
    neighbourhoods, and the rows a block starts with complete the batch the previous block left
    open. What a block becomes depends on the block, the vectors and its offset in the worker's
    slice alone, so a resumed stream arranges it again the same way. With ``k=0`` and no ceiling
    the order is the shuffled order: exactly the random stream.
    """

    def __init__(self, batch_size: int, k: int, *, vectors: np.ndarray | None = None,
                 rows: dict[int, int] | None = None, categories: Sequence[str | None] | None = None,
                 ceiling: float | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.k, self.ceiling = batch_size, k, ceiling
        self.switched_off = k == 0 and ceiling is None
        if vectors is None and not self.switched_off:
            raise ConfigError("hard batches in a shuffle buffer need the vectors of its samples")
        self.vectors, self.rows = vectors, dict(rows or {})
        self.categories = list(categories) if categories is not None else None

    def arrange(self, unit_catalogs: Sequence[str | None], unit_samples: Sequence[Sequence[int]],
                offset: int) -> list[int]:
        """The order of a block's shuffled units (``unit_catalogs``: each unit's catalog id, None
        for none; ``unit_samples``: its samples' indices in the shard set); ``offset``: the block's
        first position in the worker's slice (where batches start: multiples of ``batch_size``)."""
        numbers = number_groups(list(unit_catalogs))
        lengths = np.asarray([len(unit) for unit in unit_samples], dtype=np.int64)
        count = int(numbers.max()) + 1 if len(numbers) and numbers.max() >= 0 else 0
        if self.switched_off or count == 0:
            hoods = Neighbourhoods(np.full((count, 0), -1))
        else:
            try:
                rows = np.asarray([self.rows[i] for unit in unit_samples for i in unit], np.int64)
            except KeyError as exc:
                raise ConfigError(f"shard sample {exc.args[0]} has no vector for hard batches: "
                                  "were the shards changed during the run?") from None
            owners = np.repeat(numbers, lengths)
            centroids = catalog_centroids(self.vectors[rows], owners, count)
            categories = None
            if self.categories is not None:
                categories = [None] * count
                for row, number in zip(rows.tolist(), owners.tolist()):
                    if number >= 0 and categories[number] is None:
                        categories[number] = self.categories[row]
            hoods = nearest_catalogs(centroids, self.k, categories=categories,
                                     ceiling=self.ceiling, knn=dense_knn)
        order = HardNegativeOrder(hoods).arrange(numbers, lengths, self.batch_size,
                                                 fill=offset % self.batch_size, whole=False)
        return order.tolist()


def shard_vectors(model, shard_dir, split: str | None, which: str = "both", *,
                  batch_size: int = 128, progress: bool = False
                  ) -> tuple[np.ndarray, dict[int, int], list[str | None]]:
    """``model``'s vectors of every sample of a shard split (``which``: image, text or both, as
    :func:`eclip.encode.embed_listings` makes them, from each listing's first stored photo and
    its text as the model's composer renders it; float16), the row of each sample index, and
    each row's category path. Reads every sample of the split once."""
    from eclip.encode.fusion import fuse, model_fusion_weight, unit_rows
    from eclip.encode.images import eval_transform
    from eclip.encode.listings import text_features
    from eclip.encode.text import model_composer
    from eclip.catalog.shards import ShardIndex, read_shard
    from eclip.train.stream import ShardStream

    index = ShardIndex.load(shard_dir)
    category_of = {sample.index: sample.record.get("category") or None
                   for shard in index.select(split)
                   for sample in read_shard(index.root / shard.name, images=False)}
    stream = ShardStream(shard_dir, transform=eval_transform(model), composer=model_composer(model),
                         split=split, train=False, shuffle_buffer=0)
    was_training = model.training
    model.eval()
    images, texts, rows, categories = [], [], {}, []
    pixels: list[torch.Tensor] = []
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for item in tqdm(stream.iter_worker(0, 0), total=stream.samples_per_rank, unit="listing",
                         desc="hard-negative vectors (shards)", disable=not progress):
            rows[int(item["index"])] = len(rows)
            texts.append(item["text"])
            categories.append(category_of.get(int(item["index"])))
            pixels.append(item["pixel_values"])
            if len(pixels) == batch_size:
                images.append(model.project_image(model.image_features(torch.stack(pixels))))
                pixels = []
        if pixels:
            images.append(model.project_image(model.image_features(torch.stack(pixels))))
        image = unit_rows(torch.cat(images).numpy()) if images else np.zeros((0, 1), np.float32)
        text = unit_rows(model.project_text(text_features(model, texts, batch_size=batch_size),
                                            normalize=False).numpy())
    model.train(was_training)
    vectors = {"image": image, "text": text,
               "both": fuse(image, text, model_fusion_weight(model))}[which]
    # float16: the table is held by every loader worker (2 bytes a dimension a sample)
    return vectors.astype(np.float16), rows, categories


def shard_batch_order(data: DataConfig, model, batch_size: int, *, embed_batch_size: int = 128,
                      progress: bool = False) -> BufferOrder | None:
    """The shard stream's batch order that ``data.batching`` asks for (None: random). Hard
    batches are planned from the start model's vectors (rank 0's, computed once)."""
    if data.batching == "random":
        return None
    if data.hard_refresh_epochs:
        raise ConfigError("data.hard_refresh_epochs needs the listings in memory: with "
                          "data.shards the hard batches are planned in each shuffle buffer from "
                          "the start model's vectors; use data.hard_refresh_epochs=0, or train "
                          "from data.catalog to refresh them")
    if data.hard_neighbours == 0 and data.hard_negative_ceiling is None:
        return BufferOrder(batch_size, 0)
    vectors, rows, categories = gather_objects(shard_vectors(
        model, data.shards, data.train_split, data.hard_vectors, batch_size=embed_batch_size,
        progress=progress))[0]
    return BufferOrder(batch_size, data.hard_neighbours, vectors=vectors, rows=rows,
                       categories=categories if data.hard_by_category else None,
                       ceiling=data.hard_negative_ceiling)
