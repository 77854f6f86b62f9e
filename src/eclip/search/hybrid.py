"""Text search in three modes: vector, lexical, and hybrid (the two fused by reciprocal rank).

* ``vector``: the query's embedding against the listings' vectors (``SearchIndex.search_text``);
  the score is the cosine similarity.
* ``lexical``: the query's words against the FTS5 index of titles, brands and categories
  (``MetadataStore.lexical_search``, ``lexical.py``); the score is ``-bm25``.
* ``hybrid``: both lists, each cut at ``depth`` candidates, fused by reciprocal-rank fusion
  (Cormack, Clarke and Buettcher, 2009): a listing scores ``sum_i w_i / (rrf_k + rank_i)`` over
  the lists it appears in (rank 1 = first), with ``rrf_k = 60`` and weights 1 (vector) and 2
  (lexical) by default. RRF needs no calibration between a cosine and a bm25 score, which live on
  unrelated scales. On the demo the lexical list is the stronger one on both query sets (a title
  shares its brand and product words with the product's other listings; a category name is a word
  of the indexed category): with equal weights hybrid ties the lexical mode, with the lexical list
  counted twice it is better on held-out titles and equal on category names (docs/SEARCH.md).

The filters apply in every mode (to both lists in hybrid), the same in each: a category (and those
below it), one catalog id, and the adult flag (``adult=False``: hide listings flagged adult, those
whose flag is unknown are kept; ``True``: only flagged ones). The vector stores apply them as a
``stores.Where``, the lexical index as SQL (``lexical.search_sql``). The default mode and the fusion
settings were chosen by the measurements in docs/SEARCH.md (``benchmarks/hybrid_search.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eclip.search.reader import Hit, SearchIndex

MODES = ("vector", "lexical", "hybrid")
DEFAULT_MODE = "hybrid"
RRF_K = 60
WEIGHTS = (1.0, 2.0)  # (vector, lexical)
DEPTH = 100  # candidates taken from each list before fusing (at least k)


class NoLexicalIndex(LookupError):
    """The index generation was written before the lexical index existed."""


@dataclass(frozen=True)
class Fusion:
    """How hybrid mode fuses: RRF's constant, the weights of the (vector, lexical) lists, and how
    many candidates each list contributes."""

    rrf_k: float = RRF_K
    weights: tuple[float, float] = WEIGHTS
    depth: int = DEPTH

    def __post_init__(self):
        if not self.rrf_k >= 0:
            raise ValueError(f"rrf_k must be >= 0, got {self.rrf_k}")
        if len(self.weights) != 2 or any(not w >= 0 for w in self.weights):
            raise ValueError(f"weights must be two numbers >= 0, got {self.weights}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


def rrf(rankings: Sequence[Sequence[int]], *, k: float = RRF_K,
        weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of ranked id lists (best first): ``(id, score)`` by descending score;
    ties go to the id with the better best rank, then to the earlier list, then the smaller id."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}
    for which, (ranking, weight) in enumerate(zip(rankings, weights)):
        for rank, item in enumerate(dict.fromkeys(ranking), start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            best[item] = min(best.get(item, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda pair: (-pair[1], best[pair[0]], pair[0]))


@dataclass(frozen=True)
class Filters:
    """Which listings a search may return (``stores.Where`` without ``exclude``): a category and
    those below it, one catalog id, the adult flag (``False``: every listing not flagged adult,
    unknown flags included; ``True``: only flagged ones); None: no filter."""

    category: str | None = None
    catalog_id: str | None = None
    adult: bool | None = None

    def kwargs(self) -> dict:
        return {"category": self.category or None, "catalog_id": self.catalog_id or None,
                "adult": self.adult}


def lexical_hits(index: SearchIndex, query: str, k: int, *, category: str | None = None,
                 catalog_id: str | None = None, adult: bool | None = None) -> list[Hit]:
    if index.store.lexical_tokenizer is None:
        raise NoLexicalIndex(f"index generation {index.generation} has no lexical index (it was "
                             f"written by an older eclip): rebuild it with `eclip index`, or "
                             f"search with mode 'vector'")
    where = Filters(category, catalog_id, adult).kwargs()
    pairs = index.store.lexical_search(query, k, **where)
    listings = index.store.fetch(v for v, _ in pairs)
    return [Hit(listings[v], s) for v, s in pairs if v in listings]


def vector_hits(index: SearchIndex, query: str, k: int, *, against: str = "text",
                category: str | None = None, catalog_id: str | None = None,
                adult: bool | None = None) -> list[Hit]:
    """The query text's embedding searched among the ``against`` vectors, filtered
    (``SearchIndex.search_text`` with the catalog and adult filters as well)."""
    vector = index.lift(index.encode_text(query), against)
    return index.search(vector, k, against=against,
                        **Filters(category, catalog_id, adult).kwargs())


def search_image(index: SearchIndex, image, k: int, *, against: str = "image",
                 category: str | None = None, catalog_id: str | None = None,
                 adult: bool | None = None) -> list[Hit]:
    """Listings that look like ``image`` (``SearchIndex.search_image``), filtered the same way."""
    vector = index.lift(index.encode_image(image), against)
    return index.search(vector, k, against=against,
                        **Filters(category, catalog_id, adult).kwargs())


def search_text(index: SearchIndex, query: str, k: int, *, mode: str = DEFAULT_MODE,
                against: str = "text", category: str | None = None,
                catalog_id: str | None = None, adult: bool | None = None,
                fusion: Fusion = Fusion()) -> list[Hit]:
    """The ``k`` best listings for a query text in ``mode`` (``MODES``); ``against`` chooses the
    vectors of the vector half ("text", "image", "both"). ``category``, ``catalog_id`` and
    ``adult`` filter both halves alike (``Filters``)."""
    where = {"category": category, "catalog_id": catalog_id, "adult": adult}
    if mode == "vector":
        return vector_hits(index, query, k, against=against, **where)
    if mode == "lexical":
        return lexical_hits(index, query, k, **where)
    if mode != "hybrid":
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    depth = max(k, fusion.depth)
    words = lexical_hits(index, query, depth, **where)
    vectors = vector_hits(index, query, depth, against=against, **where)
    listing_of = {h.listing.vid: h.listing for h in vectors + words}
    fused = rrf([[h.listing.vid for h in vectors], [h.listing.vid for h in words]],
                k=fusion.rrf_k, weights=fusion.weights)
    return [Hit(listing_of[vid], score) for vid, score in fused[:k]]
