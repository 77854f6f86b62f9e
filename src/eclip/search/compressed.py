"""FAISS index kinds past exact search: how each is built, what a vector costs, which fits memory.

``vectors.VectorIndex`` builds, tunes, searches and stores every kind; this module holds what is
specific to each (inner product over unit vectors, int64 ids of our choosing):

* ``ivf``: ``IndexIVFFlat``, float32 vectors in inverted lists;
* ``hnsw``: ``IndexHNSWFlat`` behind an id map (float32 vectors plus the graph; ``efSearch``
  tuned), the fastest at a given recall but no compression and no removal (an update that removes
  listings rebuilds it);
* ``ivf_fp16`` / ``ivf_sq8`` / ``ivf_sq4``: inverted lists of scalar-quantised vectors (2 bytes,
  1 byte or 4 bits a dimension; SQ4 re-ranked exactly by default);
* ``ivf_pq``: an ``OPQ`` rotation, then inverted lists of product-quantised codes (``pq_m`` bytes
  a vector at 8 bits), re-ranked exactly by default (``DEFAULT_RERANK``) from the float vectors.

The IVF kinds' coarse quantizer is flat, or an HNSW graph from ``hnsw_quantizer_from`` lists on.
``choose_kinds`` is ``--kind auto`` under ``--max-memory``: a kind per space (image, text, both),
the largest index compressed first, until the three fit the budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import faiss
import numpy as np

from eclip.errors import ConfigError

COMPRESSED_KINDS = ("hnsw", "ivf_fp16", "ivf_sq8", "ivf_sq4", "ivf_pq")
QUANTIZER_EF_SEARCH = 64  # an HNSW coarse quantizer's search width (at least 2 x nprobe in a search)
APPROXIMATE_KINDS = ("ivf",) + COMPRESSED_KINDS
AUTO_ORDER = ("exact", "ivf", "ivf_fp16", "ivf_sq8", "ivf_sq4", "ivf_pq")  # most exact first
DEFAULT_RERANK = {"ivf_sq4": 10, "ivf_pq": 10}  # candidates re-scored exactly: rerank * k
ID_BYTES = 8  # an int64 id per vector in the IVF lists / the id map
LABELS = {"exact": "exact search", "ivf": "IVF", "hnsw": "HNSW", "ivf_fp16": "IVF-fp16",
          "ivf_sq8": "IVF-SQ8", "ivf_sq4": "IVF-SQ4", "ivf_pq": "OPQ+IVF-PQ",
          "diskann": "DiskANN"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def bytes_per_vector(kind: str, dim: int, *, pq_m: int | None = None, hnsw_m: int = 32) -> int:
    """Memory one vector costs in an index of ``kind`` (``exact`` and ``ivf``: float32 and id)."""
    if kind in ("exact", "ivf"):
        return 4 * dim + ID_BYTES
    if kind == "hnsw":  # the vector, 2M level-0 links of 4 bytes, the id map
        return 4 * dim + 2 * hnsw_m * 4 + ID_BYTES
    if kind == "ivf_fp16":
        return 2 * dim + ID_BYTES
    if kind == "ivf_sq8":
        return dim + ID_BYTES
    if kind == "ivf_sq4":
        return (dim + 1) // 2 + ID_BYTES
    if kind == "ivf_pq":
        return (pq_m or default_pq_m(dim)) + ID_BYTES
    raise ConfigError(f"unknown index kind {kind!r}")


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for ``ivf_pq``: ``dim // 8`` (one byte per 8 dimensions), at least 1."""
    return max(dim // 8, 1)


def choose_kinds(n: int, dims: Sequence[int], max_memory: int, *,
                 exact_max: int | None = None, pq_m: int | None = None,
                 kinds: Sequence[str] = AUTO_ORDER) -> tuple[str, ...]:
    """A kind per space (one of ``dims`` dimensions each, ``n`` vectors in every one) whose
    indexes fit ``max_memory`` bytes together: every space starts at the most exact of ``kinds``
    (``exact`` only up to ``exact_max`` vectors), and while they do not fit, one space takes its
    next kind: of the spaces whose kind is the most exact, the one whose index is largest (of
    equals, the later: the fused space before the image one). So the spaces are compressed in
    turn, the largest first, and none is two kinds behind another before it must be.
    At 10 M listings, 256-d image and text and a 512-d fused space, 8 GiB gives IVF-SQ8, IVF-SQ8
    and IVF-SQ4 (7.4 GiB). ConfigError if even the last kind everywhere does not fit."""
    order = [k for k in kinds if k != "exact" or exact_max is None or n <= exact_max]
    if not dims:
        return ()
    step = [0] * len(dims)

    def cost(space: int) -> int:
        return n * bytes_per_vector(order[step[space]], dims[space], pq_m=pq_m)

    while sum(cost(s) for s in range(len(dims))) > max_memory:
        movable = [s for s in range(len(dims)) if step[s] + 1 < len(order)]
        if not movable:
            raise ConfigError(
                f"{n} vectors in {len(dims)} spaces need at least "
                f"{sum(cost(s) for s in range(len(dims))) / 2**30:.2f} GiB even as "
                f"{order[-1]}; --max-memory is {max_memory / 2**30:.2f} GiB")
        largest = max(movable, key=lambda s: (-step[s], cost(s), s))
        step[largest] += 1
    return tuple(order[i] for i in step)


def parse_bytes(text: str | int) -> int:
    """``12GiB``, ``500M``, ``1.5g``, ``1048576``: a size in bytes (K/M/G/T are powers of 1024)."""
    if isinstance(text, int):
        return text
    found = _SIZE.match(str(text))
    if not found:
        raise ConfigError(f"{text!r} is not a size: write e.g. 12GiB, 500MiB or a number of bytes")
    value, unit = float(found.group(1)), found.group(2).lower()
    size = int(value * 1024 ** " kmgt".index(unit or " "))
    if size <= 0:
        raise ConfigError(f"the size {text!r} must be positive")
    return size


def new_index(kind: str, dim: int, nlist: int, *, hnsw_quantizer_from: int, pq_m: int | None,
              pq_bits: int, hnsw_m: int, seed: int, per_list: int = 64, iterations: int = 10
              ) -> tuple[faiss.Index, str | None, list]:
    """An untrained index of ``kind`` (not ``exact``): ``(index, quantizer name, objects to keep
    alive with it)``; its k-means runs ``iterations`` rounds on at most ``per_list`` vectors a
    list."""
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
        return faiss.IndexIDMap2(graph), None, [graph]
    if nlist >= hnsw_quantizer_from:
        quantizer, name = faiss.IndexHNSWFlat(dim, 32, metric), "hnsw"
        quantizer.hnsw.efSearch = QUANTIZER_EF_SEARCH  # adding assigns each vector its list
    else:
        quantizer, name = faiss.IndexFlatIP(dim), "flat"
    if kind == "ivf":
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    elif kind in ("ivf_fp16", "ivf_sq8", "ivf_sq4"):
        qtypes = faiss.ScalarQuantizer
        qtype = {"ivf_fp16": qtypes.QT_fp16, "ivf_sq8": qtypes.QT_8bit,
                 "ivf_sq4": qtypes.QT_4bit}[kind]
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, metric)
    elif kind == "ivf_pq":
        pq_m = pq_m or default_pq_m(dim)
        if dim % pq_m:
            raise ConfigError(f"pq_m={pq_m} must divide the dimension {dim}")
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_bits, metric)
        # FAISS reorders the codebooks for polysemous (Hamming) filtering by default: about 100
        # CPU seconds of annealing per index, independent of its size, for a filter these
        # searches never use (the same centroids, so the same answers)
        ivf.do_polysemous_training = False
    else:
        raise ConfigError(f"unknown index kind {kind!r}")
    ivf.cp.niter = iterations
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = per_list
    if kind != "ivf_pq":
        return ivf, name, [quantizer]
    opq = faiss.OPQMatrix(dim, pq_m)
    opq.niter, opq.niter_pq_0 = 10, 10  # FAISS's 50 rounds: most of the gain in a fifth
    return faiss.IndexPreTransform(opq, ivf), name, [quantizer, ivf, opq]


def training_size(kind: str, n: int, nlist: int, pq_bits: int, per_list: int = 64) -> int:
    """How many vectors train an IVF kind: ``per_list`` per list, and for PQ 40 per code
    centroid."""
    wanted = per_list * nlist
    if kind == "ivf_pq":
        wanted = max(wanted, 40 * 2 ** pq_bits)
    return min(n, wanted)


def train_two_level(index: faiss.Index, sample: np.ndarray, nlist: int, *, iterations: int,
                    seed: int) -> None:
    """Train an IVF ``index`` (of ``new_index``) on ``sample`` with two-level k-means: about
    ``sqrt(nlist)`` coarse clusters, then each split into a share of the ``nlist`` lists in
    proportion to its size, each by k-means on its own vectors; the lists' centroids go into the
    coarse quantizer, and FAISS trains the rest (the scalar / product quantizer) as usual. The
    k-means then compares each vector with ``2 sqrt(nlist)`` centroids, not ``nlist``: the cost
    that dominates a large build (the approach of ``faiss.contrib.clustering.
    two_level_clustering``, which is for L2; here the k-means is spherical, as the vectors are
    unit). An OPQ rotation is trained first and the lists are found in its space."""
    ivf = faiss.extract_index_ivf(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            step = index.chain.at(i)
            step.train(sample)
            sample = step.apply(sample)
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # many small k-means: OpenMP's start and spin cost more than
    try:                            # they save (4x the CPU time on a shared 2-core machine)
        centroids = _two_level_centroids(sample, nlist, iterations, seed)
    finally:
        faiss.omp_set_num_threads(threads)
    ivf.quantizer.add(centroids)  # a full quantizer: FAISS skips its own k-means
    ivf.train(sample)
    index.is_trained = True


def _two_level_centroids(sample: np.ndarray, nlist: int, iterations: int, seed: int
                         ) -> np.ndarray:
    d = sample.shape[1]
    coarse = max(1, min(int(round(np.sqrt(nlist))), nlist))
    top = faiss.Kmeans(d, coarse, niter=iterations, seed=seed, spherical=True,
                       max_points_per_centroid=max(1, len(sample) // coarse + 1))
    top.train(sample)
    _, assigned = top.index.search(sample, 1)
    assigned = assigned[:, 0]
    sizes = np.bincount(assigned, minlength=coarse)
    shares = _shares(sizes, nlist)
    centroids = []
    for cell in np.flatnonzero(shares):
        points = sample[assigned == cell]
        if shares[cell] == len(points):
            centroids.append(points)
            continue
        fine = faiss.Kmeans(d, int(shares[cell]), niter=iterations, seed=seed + int(cell),
                            spherical=True, max_points_per_centroid=len(points))
        fine.train(points)
        centroids.append(fine.centroids)
    return np.ascontiguousarray(np.vstack(centroids), dtype=np.float32)


def _shares(sizes: np.ndarray, total: int) -> np.ndarray:
    """``total`` lists shared among cells of ``sizes`` vectors in proportion to their sizes, no
    cell getting more lists than it has vectors (``total <= sizes.sum()``)."""
    cumulative = np.cumsum(sizes)
    shares = cumulative * total // max(int(cumulative[-1]), 1)
    shares[1:] -= shares[:-1].copy()
    shares = np.minimum(shares, sizes)
    for cell in np.argsort(-(sizes - shares), kind="stable"):  # what the cap took, to the roomiest
        if shares.sum() >= total:
            break
        shares[cell] += min(total - shares.sum(), sizes[cell] - shares[cell])
    return shares


def search_params(kind: str, param: int, selector) -> tuple[faiss.SearchParameters | None, list]:
    """FAISS search parameters for ``kind``: ``param`` is nprobe (IVF kinds) or efSearch (hnsw),
    ``selector`` an id selector or None; ``(params, objects to keep alive during the search)``."""
    if kind == "exact":
        return (faiss.SearchParameters(sel=selector) if selector is not None else None), []
    keep: list = []
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(param)
    else:
        params = faiss.SearchParametersIVF()
        params.nprobe = int(param)
        # an HNSW coarse quantizer returns about efSearch lists, not nprobe: its search must be
        # at least as wide as the probe (a flat quantizer ignores it); no selector there, since
        # the quantizer's ids are lists, not listings
        quantizer = faiss.SearchParametersHNSW()
        quantizer.efSearch = max(QUANTIZER_EF_SEARCH, 2 * int(param))
        params.quantizer_params = quantizer
        keep = [quantizer]
    if selector is not None:
        params.sel = selector
    keep = [selector, *keep]
    if kind != "ivf_pq":
        return params, keep
    outer = faiss.SearchParametersPreTransform()
    outer.index_params = params
    return outer, [params] + keep
