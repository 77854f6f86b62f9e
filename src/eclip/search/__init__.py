"""Product search: an index of listing embeddings (FAISS + SQLite), a FastAPI service, a page."""

from eclip.search.index import (  # noqa: I001 - the public names, gathered
    Classification,
    Hit,
    IndexInfo,
    LiveIndex,
    SearchIndex,
    SearchIndexError,
    build_index,
    delete_from_index,
    update_index,
    write_index,
)
from eclip.search.vectors import VectorSettings

__all__ = ["Classification", "Hit", "IndexInfo", "LiveIndex", "SearchIndex", "SearchIndexError",
           "VectorSettings", "build_index", "delete_from_index", "update_index", "write_index"]
