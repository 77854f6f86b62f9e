"""An index from vectors ``eclip embed`` already wrote: no model runs.

``eclip embed`` (the local engine's Parquet file, or the Ray engine's folder of parts and
``manifest.json``) records the model's identity (``encode.identity.model_sha256``) with the
vectors. :func:`index_from_embeddings` opens them (``encode.listings.StoredEmbeddings``), takes the
listings' metadata from the catalog, and writes a generation through the index's one writer
(``transaction.IndexWriter``), as a build or as an update of an existing index. The vectors are
streamed (``encode.listings.StoredEmbeddings``): read a block of rows at a time from each part
straight into the generation's vector files, from which the FAISS indexes are trained on a sample
and filled a block at a time; memory never holds every vector (10 M listings of the demo model's
dimension are 41 GB of them).

- vectors of another model are refused: the identity recorded with them must be that of ``--model``
  (a build, or an update given a model) and that of the index's own model (an update);
- the catalog's listings without vectors, and vectors whose listing the catalog lacks, are left out
  and counted (:class:`FromEmbeddings`), never guessed;
- photos are copied into the index only with ``thumbnails=True``; an index without them serves
  results without pictures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eclip.catalog.schema import Listing
from eclip.encode.identity import model_sha256
from eclip.encode.listings import READ_BLOCK, StoredEmbeddings
from eclip.errors import SearchIndexError
from eclip.search.generation import IndexInfo, read_info
from eclip.search.spaces import API_NAME, SPACES
from eclip.search.store_types import StoreSpec
from eclip.search.transaction import Change, IndexWriter, check_unique
from eclip.search.vectors import VectorSettings


@dataclass
class FromEmbeddings:
    """A write from stored vectors: the generation's info and what was left out."""

    info: IndexInfo
    without_vectors: list[str]  # catalog listings the embeddings do not hold
    without_listing: list[str]  # embedded product ids the catalog does not hold

    def summary(self) -> str:
        lines = [self.info.summary()]
        for ids, what in ((self.without_vectors, "catalog listing(s) had no stored vector"),
                          (self.without_listing, "stored vector(s) had no catalog listing")):
            if ids:
                shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                lines.append(f"  {len(ids)} {what} and were left out: {shown}")
        return "\n".join(lines)


def _refuse_other_model(recorded: str | None, source: Path, model_identity: str,
                        model: str) -> None:
    if recorded is None:
        raise SearchIndexError(f"{source} does not record which model made its vectors (written "
                               f"by an older eclip embed): embed the catalog again")
    if recorded != model_identity:
        raise SearchIndexError(f"the vectors in {source} were made by another model than {model} "
                               f"(model sha256 {recorded[:12]}... vs "
                               f"{model_identity[:12]}...); vectors of two models cannot be mixed: "
                               f"embed the catalog with this model, or index with the model that "
                               f"made them")


class StreamedVectors:
    """The stored vectors of the listings kept, read part by part and block by block
    (``StoredEmbeddings.blocks``): a ``transaction.VectorSource`` whose memory is one block.

    ``target[row]``: the position in the kept listings of the stored row (-1: left out)."""

    def __init__(self, stored: StoredEmbeddings, target: np.ndarray, block_rows: int):
        self.stored, self.target, self.block_rows = stored, target, block_rows
        self.fusion_weight = stored.fusion_weight
        self.dims = {m: stored.dims[f"{m}_embedding"] for m in SPACES}  # the columns' names

    def blocks(self) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        for start, block in self.stored.blocks(self.block_rows):
            positions = self.target[start:start + len(block.image)]
            used = positions >= 0
            yield positions[used], {m: block.modality(API_NAME[m])[used] for m in SPACES}


def align(stored: StoredEmbeddings, listings: list[Listing]) -> tuple[list[Listing], np.ndarray,
                                                                      list[str], list[str]]:
    """The listings that have vectors (in the catalog's order); for each stored row, the position
    of its listing among them (-1: none); the product ids of the listings without vectors and of
    the vectors without listings. Ids are matched in Arrow (``pyarrow.compute.index_in``): no
    dictionary of every id is built in Python."""
    import pyarrow as pa
    import pyarrow.compute as pc

    check_unique([x.product_id for x in listings])
    ids = stored.ids
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        twice = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        raise SearchIndexError(f"product_id {twice[0].as_py()!r} appears twice in the stored "
                               f"vectors")
    found = pc.index_in(ids, value_set=pa.array([x.product_id for x in listings], pa.string()))
    at = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = np.zeros(len(listings), bool)
    has[at[at >= 0]] = True
    kept_at = np.flatnonzero(has)
    position = np.full(len(listings), -1, np.int64)
    position[kept_at] = np.arange(len(kept_at))
    target = np.where(at >= 0, position[np.maximum(at, 0)], -1)
    return ([listings[i] for i in kept_at], target,
            [listings[i].product_id for i in np.flatnonzero(~has)],
            pc.filter(ids, pc.is_null(found)).to_pylist())


def index_from_embeddings(index_dir: str | Path, embeddings: str | Path, listings: list[Listing],
                          *, model_dir: str | Path | None = None, update: bool = False,
                          settings: VectorSettings | None = None, store: StoreSpec | None = None,
                          thumbnails: bool = True, thumbnail_size: int = 256,
                          progress: bool = True, max_pixels: int | None = None,
                          block_rows: int = READ_BLOCK) -> FromEmbeddings:
    """Build (or with ``update=True`` add to) the index in ``index_dir`` from the vectors
    ``eclip embed`` wrote at ``embeddings`` and the catalog's ``listings`` (see the module
    docstring). A build needs ``model_dir``, the model that made the vectors (copied into the index
    to encode queries); an update uses the index's own model and settings.

    The vectors are streamed: read ``block_rows`` at a time from each part into the new
    generation's vector files, from which the vector store is built; memory holds a block, the
    ids, the catalog's listings and the index being built, never every vector."""
    source = Path(embeddings)
    stored = StoredEmbeddings(source)
    if model_dir is not None:
        _refuse_other_model(stored.model_sha256, source, model_sha256(model_dir), str(model_dir))
    elif not update:
        raise SearchIndexError("a build from stored vectors needs --model DIR, the model that "
                               "made them (its query encoder goes into the index)")
    kept, target, without_vectors, without_listing = align(stored, listings)
    if not kept and not update:
        raise SearchIndexError(f"none of the catalog's listings has a vector in {source}")
    vectors = StreamedVectors(stored, target, block_rows)
    with IndexWriter(index_dir, progress) as writer:
        base = writer.base()
        if update:
            if base is None:
                raise SearchIndexError(f"{index_dir} is not an index yet; build it first "
                                       f"without --update")
            info = read_info(base)
            own = info.model_sha256 or model_sha256(base / "model")
            _refuse_other_model(stored.model_sha256, source, own,
                                f"the index's model ({index_dir})")
            written = writer.commit(base, Change(base / "model", kept,
                                                 vectors if kept else None, [], info.settings,
                                                 info.thumbnail_size, thumbnails=thumbnails))
        else:
            written = writer.commit(None, Change(Path(model_dir), kept, vectors, [],
                                                 settings or VectorSettings(), thumbnail_size,
                                                 store or StoreSpec(), thumbnails, max_pixels))
    return FromEmbeddings(written, without_vectors, without_listing)
