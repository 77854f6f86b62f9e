"""The search index's public face: one import for building, updating and opening an index.

An index is a folder of generations (``generation.py``: the layout, ``CURRENT``, ``info.json``);
every write is one transaction (``transaction.py``) behind the write API (``write.py``, and
``build.py`` from stored vectors); ``reader.py`` opens the generation in service and follows new
ones; ``encoder.py`` encodes queries; ``vector_stores.py`` picks the store that holds the vectors
(FAISS files or Milvus). This module only gathers those names; ``eclip.search`` re-exports them.
"""

from eclip.errors import SearchIndexError
from eclip.search.generation import IndexInfo, current_generation, index_store, is_index
from eclip.search.reader import Classification, Hit, LiveIndex, SearchIndex
from eclip.search.spaces import AGAINST, SPACES
from eclip.search.write import build_index, delete_from_index, update_index, write_index

__all__ = ["AGAINST", "SPACES", "Classification", "Hit", "IndexInfo", "LiveIndex", "SearchIndex",
           "SearchIndexError", "build_index", "current_generation", "delete_from_index",
           "index_store", "is_index", "update_index", "write_index"]
