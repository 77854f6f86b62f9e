"""How a listing becomes a vector, in one place, below training, the tasks and search.

- ``images``: the evaluation transform and the feature cache of a locked image tower;
- ``text``: the text a model composes for a listing (its own composer, or the title alone);
- ``listings``: image / text / fused vectors per listing (``embed_listings``), Parquet output;
- ``fusion``: the one rule that makes the fused ("both") vector;
- ``retrieval``: recall@k where a hit is any listing of the query's catalog.
"""

from eclip.encode.fusion import (FUSION_WEIGHT, choose_fusion_weight, fuse, fuse_query,
                                 model_fusion_weight, resolve_fusion_weight, unit_rows)
from eclip.encode.images import (ImageFeatureCache, caches_locked_tower, eval_transform,
                                 image_cache_for)
from eclip.encode.listings import Embeddings, embed_listings, embed_texts, write_embeddings
from eclip.encode.retrieval import recall_at_k, same_group_retrieval
from eclip.encode.text import model_composer, title_composer

__all__ = ["FUSION_WEIGHT", "Embeddings", "choose_fusion_weight", "model_fusion_weight", "resolve_fusion_weight", "ImageFeatureCache", "caches_locked_tower",
           "embed_listings", "embed_texts", "eval_transform", "fuse", "fuse_query",
           "image_cache_for", "model_composer", "recall_at_k", "same_group_retrieval", "title_composer", "unit_rows",
           "write_embeddings"]
