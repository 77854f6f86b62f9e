"""``eclip index`` as a library function: a catalog (or stored vectors) into a search index.

:func:`index_catalog` does what the command does, so that Python users get the same behaviour:
it checks the combination of choices, reads and filters the catalog (``data``: the recipe's data
section, bad rows skipped and reported), then builds, updates (``update``), deletes (``delete``)
or writes from the vectors ``eclip embed`` stored (``embeddings``), optionally exports the ONNX
query encoder, and writes the bad-row report beside the generations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eclip.errors import EclipError
from eclip.search.generation import IndexInfo, index_store
from eclip.search.store_types import StoreSpec
from eclip.search.vectors import VectorSettings
from eclip.search.write import build_index, delete_from_index, update_index


@dataclass
class Indexed:
    """What one ``index_catalog`` call wrote."""

    info: IndexInfo
    summary: str  # the generation's summary (and, from stored vectors, what was left out)
    onnx_dir: Path | None = None
    bad_rows: Path | None = None


def index_catalog(out: str | Path, *, data=None, model: str | Path | None = None,
                  embeddings: str | Path | None = None, update: bool = False,
                  delete: list[str] | None = None, split: list[str] | None = None,
                  settings: VectorSettings | None = None, store: str = StoreSpec.kind,
                  uri: str | None = None, collection: str | None = None,
                  thumbnails: bool = True, thumbnail_size: int = 256, batch_size: int = 64,
                  onnx: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> Indexed:
    """Write a generation of the index in ``out`` (see the module docstring).

    ``data``: a ``catalog.config.DataConfig`` naming the catalog (not needed to ``delete``);
    ``settings``: the vector index of a new index (kind, ``max_memory``, target recall);
    ``store`` / ``uri`` / ``collection``: its vector store (``store_types.StoreSpec``); an update
    or a delete keeps the index's own settings and store. ``log`` receives the messages the
    command prints (the split kept, a held-out warning, the bad-row report's path)."""
    settings = settings or VectorSettings()
    out = Path(out)
    _check_choices(out, data, model, embeddings, update, delete, store, uri, collection,
                   thumbnails)
    store = StoreSpec(store, uri, collection)
    if delete:
        info = delete_from_index(out, delete)
        return Indexed(info, info.summary())
    read = _read_catalog(data, split, progress, log)
    max_pixels = getattr(data, "max_pixels", None)
    if embeddings:  # stored vectors: no model runs
        from eclip.search.build import index_from_embeddings

        result = index_from_embeddings(
            out, embeddings, read.kept, model_dir=model, update=update, settings=settings,
            store=store, thumbnails=thumbnails, thumbnail_size=thumbnail_size,
            progress=progress, max_pixels=max_pixels)
        info, summary = result.info, result.summary()
    elif update:
        info = update_index(out, read.kept, model_dir=model, batch_size=batch_size,
                            progress=progress)
        summary = info.summary()
    else:
        info = build_index(model, read.kept, out, settings=settings, thumbnail_size=thumbnail_size,
                           batch_size=batch_size, progress=progress, store=store,
                           thumbnails=thumbnails, max_pixels=max_pixels)
        summary = info.summary()
    done = Indexed(info, summary)
    if onnx:
        from eclip.search.onnx_query import write_index_onnx

        done.onnx_dir = write_index_onnx(out)
    if read.catalog.issues:  # beside the generations, after the index is written
        from eclip.catalog.load import BAD_ROWS_FILE

        done.bad_rows = out / BAD_ROWS_FILE
        read.catalog.write_report(done.bad_rows)
    return done


def _check_choices(out: Path, data, model, embeddings, update: bool, delete, store: str,
                   uri: str | None, collection: str | None, thumbnails: bool) -> None:
    """The combinations ``eclip index`` refuses, each with what to do instead."""
    if delete or update:  # a write to an index keeps its store
        if uri or collection:
            raise EclipError("--uri and --collection choose the store of a new index; --update "
                             "and --delete write to the index's own store")
        if store != StoreSpec.kind and store != (own := index_store(out).kind):
            raise EclipError(f"{out} keeps its vectors in {own}, not {store}: rebuild it "
                             f"(without --update) to change the store")
    if delete:
        if data is not None or update or embeddings:
            raise EclipError("--delete removes listings by id: give it without "
                             "--catalog/--update/--embeddings")
        return
    if data is None:
        raise EclipError("--catalog FILE is required (or --delete IDS to remove listings)")
    if not update and not model:
        raise EclipError("--model DIR is required to build an index (--update uses the index's "
                         "own model); with --embeddings, the model that made the vectors")
    if update and not embeddings and not thumbnails:
        raise EclipError("--no-thumbnails applies to builds and to --embeddings writes")


@dataclass
class _Read:
    catalog: object  # catalog.load.CatalogRead
    kept: list


def _read_catalog(data, split: list[str] | None, progress: bool,
                  log: Callable[[str], None]) -> _Read:
    from eclip.catalog.load import load_catalog
    from eclip.catalog.splits import held_out_warning, only_splits

    read = load_catalog(data, progress=progress, log=log)
    listings = read.listings
    if split:
        listings = only_splits(listings, split)
        log(f"indexing the {len(listings)} listings of split {', '.join(split)} "
            f"(of {len(read.listings)})")
    warning = held_out_warning(listings)
    if warning:
        log(warning)
    return _Read(read, listings)
