"""An index from vectors ``eclip embed`` already wrote: no model runs.

``eclip embed`` (the local engine's Parquet file, or the Ray engine's folder of parts and
``manifest.json``) records the model's identity (``encode.identity.model_sha256``) with the
vectors. :func:`index_from_embeddings` reads them (``encode.listings.read_embeddings``), takes the
listings' metadata from the catalog, and writes a generation through the index's one writer
(``transaction.IndexWriter``), as a build or as an update of an existing index:

- vectors of another model are refused: the identity recorded with them must be that of ``--model``
  (a build, or an update given a model) and that of the index's own model (an update);
- the catalog's listings without vectors, and vectors whose listing the catalog lacks, are left out
  and counted (:class:`FromEmbeddings`), never guessed;
- photos are copied into the index only with ``thumbnails=True``; an index without them serves
  results without pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eclip.catalog.schema import Listing
from eclip.encode.identity import model_sha256
from eclip.encode.listings import Embeddings, read_embeddings
from eclip.errors import SearchIndexError
from eclip.search.generation import IndexInfo, read_info
from eclip.search.store_types import StoreSpec
from eclip.search.transaction import Change, IndexWriter
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


def _refuse_other_model(emb: Embeddings, source: Path, model_identity: str, model: str) -> None:
    if emb.model_sha256 is None:
        raise SearchIndexError(f"{source} does not record which model made its vectors (written "
                               f"by an older eclip embed): embed the catalog again")
    if emb.model_sha256 != model_identity:
        raise SearchIndexError(f"the vectors in {source} were made by another model than {model} "
                               f"(model sha256 {emb.model_sha256[:12]}... vs "
                               f"{model_identity[:12]}...); vectors of two models cannot be mixed: "
                               f"embed the catalog with this model, or index with the model that "
                               f"made them")


def align(emb: Embeddings, listings: list[Listing]) -> tuple[list[Listing], Embeddings,
                                                               list[str], list[str]]:
    """The listings that have vectors (in the catalog's order) and their rows of ``emb``; the
    product ids of the listings without vectors and of the vectors without listings."""
    row_of: dict[str, int] = {}
    for row, pid in enumerate(emb.product_ids):
        if pid in row_of:
            raise SearchIndexError(f"product_id {pid!r} appears twice in the stored vectors")
        row_of[pid] = row
    kept = [x for x in listings if x.product_id in row_of]
    catalog_ids = {x.product_id for x in listings}
    rows = np.asarray([row_of[x.product_id] for x in kept], dtype=np.int64)
    if len(rows) == len(emb.product_ids) and bool(np.all(rows == np.arange(len(rows)))):
        subset = emb  # the catalog's order is the vectors': no copy of a large array
    else:
        subset = Embeddings([x.product_id for x in kept], emb.image[rows], emb.text[rows],
                            emb.product[rows], emb.fusion_weight,
                            model_sha256=emb.model_sha256)
    return (kept, subset, [x.product_id for x in listings if x.product_id not in row_of],
            [pid for pid in emb.product_ids if pid not in catalog_ids])


def index_from_embeddings(index_dir: str | Path, embeddings: str | Path, listings: list[Listing],
                          *, model_dir: str | Path | None = None, update: bool = False,
                          settings: VectorSettings | None = None, store: StoreSpec | None = None,
                          thumbnails: bool = True, thumbnail_size: int = 256,
                          progress: bool = True, max_pixels: int | None = None) -> FromEmbeddings:
    """Build (or with ``update=True`` add to) the index in ``index_dir`` from the vectors
    ``eclip embed`` wrote at ``embeddings`` and the catalog's ``listings`` (see the module
    docstring). A build needs ``model_dir``, the model that made the vectors (copied into the index
    to encode queries); an update uses the index's own model and settings."""
    source = Path(embeddings)
    emb, _ = read_embeddings(source)
    if model_dir is not None:
        _refuse_other_model(emb, source, model_sha256(model_dir), str(model_dir))
    elif not update:
        raise SearchIndexError("a build from stored vectors needs --model DIR, the model that "
                               "made them (its query encoder goes into the index)")
    kept, emb, without_vectors, without_listing = align(emb, listings)
    if not kept and not update:
        raise SearchIndexError(f"none of the catalog's listings has a vector in {source}")
    with IndexWriter(index_dir, progress) as writer:
        base = writer.base()
        if update:
            if base is None:
                raise SearchIndexError(f"{index_dir} is not an index yet; build it first "
                                       f"without --update")
            info = read_info(base)
            own = info.model_sha256 or model_sha256(base / "model")
            _refuse_other_model(emb, source, own, f"the index's model ({index_dir})")
            written = writer.commit(base, Change(base / "model", kept, emb if kept else None,
                                                 [], info.settings, info.thumbnail_size,
                                                 thumbnails=thumbnails))
        else:
            written = writer.commit(None, Change(Path(model_dir), kept, emb, [],
                                                 settings or VectorSettings(), thumbnail_size,
                                                 store or StoreSpec(), thumbnails, max_pixels))
    return FromEmbeddings(written, without_vectors, without_listing)
