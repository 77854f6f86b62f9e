"""Writing an index: build it from listings (embedding them), write it from vectors already
computed, update it with listings (embedding only those), delete listings. Each is one transaction
(``transaction.py``); ``build.py`` writes from the vectors ``eclip embed`` stored."""

from __future__ import annotations

from pathlib import Path

from eclip.catalog.schema import Listing
from eclip.encode import Embeddings, embed_listings
from eclip.errors import SearchIndexError
from eclip.search.generation import IndexInfo, model_sha1, read_info
from eclip.search.store_types import StoreSpec
from eclip.search.transaction import Change, IndexWriter
from eclip.search.vectors import VectorSettings


def build_index(model_dir: str | Path, listings: list[Listing], index_dir: str | Path, *,
                settings: VectorSettings | None = None, thumbnail_size: int = 256,
                batch_size: int = 64, progress: bool = True,
                store: StoreSpec | None = None, thumbnails: bool = True,
                max_pixels: int | None = None) -> IndexInfo:
    """Embed ``listings`` with the model in ``model_dir`` and write a new index to ``index_dir``.

    An existing index there is replaced by a new generation (atomically, like every write).
    ``store``: where the vectors are searched (``store_types.StoreSpec``; default FAISS files).
    ``max_pixels``: ``data.max_pixels`` for the photos stored and, later, those uploaded to the
    service (None: the default).
    """
    if not listings:
        raise SearchIndexError("no listings to index")
    from eclip.model import load_model

    model_dir = Path(model_dir)
    model = load_model(model_dir).eval()
    emb = embed_listings(model, listings, batch_size=batch_size, progress=progress,
                         desc="embedding listings")
    return write_index(index_dir, model_dir, listings, emb, settings=settings,
                       thumbnail_size=thumbnail_size, progress=progress, store=store,
                       thumbnails=thumbnails, max_pixels=max_pixels)


def write_index(index_dir: str | Path, model_dir: str | Path, listings: list[Listing],
                embeddings: Embeddings, *, settings: VectorSettings | None = None,
                thumbnail_size: int = 256, progress: bool = True,
                store: StoreSpec | None = None, thumbnails: bool = True,
                max_pixels: int | None = None) -> IndexInfo:
    """A new index from listings and vectors already computed (``embed_listings``) with the model
    in ``model_dir``, which is copied into the index."""
    if embeddings.product_ids != [x.product_id for x in listings]:
        raise SearchIndexError("the embeddings do not belong to the listings (product ids differ)")
    with IndexWriter(index_dir, progress) as writer:
        return writer.commit(None, Change(Path(model_dir), listings, embeddings, [],
                                          settings or VectorSettings(), thumbnail_size,
                                          store or StoreSpec(), thumbnails, max_pixels))


def update_index(index_dir: str | Path, listings: list[Listing], *,
                 model_dir: str | Path | None = None, batch_size: int = 64,
                 progress: bool = True) -> IndexInfo:
    """Add ``listings`` to the index, replacing those whose product_id it holds already.

    Only these listings are embedded, with the index's own model; ``model_dir``, when given, must be
    that same model.
    """
    with IndexWriter(index_dir, progress) as writer:
        base = writer.base()
        if base is None:
            raise SearchIndexError(f"{index_dir} is not an index yet; build it first "
                                   f"without --update")
        info = read_info(base)
        if model_dir is not None and model_sha1(Path(model_dir)) != info.model_sha1:
            raise SearchIndexError(f"{model_dir} is not the model the index was built with; "
                                   f"vectors of two models cannot be mixed: rebuild the index "
                                   f"with this model")
        emb = None
        if listings:
            from eclip.model import load_model

            model = load_model(base / "model").eval()
            emb = embed_listings(model, listings, batch_size=batch_size, progress=progress,
                                 desc="embedding listings")
        return writer.commit(base, Change(base / "model", listings, emb, [], info.settings,
                                          info.thumbnail_size))


def delete_from_index(index_dir: str | Path, product_ids: list[str]) -> IndexInfo:
    """Remove listings by product_id; ids the index does not hold are reported in ``not_found``."""
    with IndexWriter(index_dir, progress=False) as writer:
        base = writer.base()
        if base is None:
            raise SearchIndexError(f"{index_dir} is not an index")
        info = read_info(base)
        return writer.commit(base, Change(base / "model", [], None,
                                          list(dict.fromkeys(product_ids)), info.settings,
                                          info.thumbnail_size))
