"""Every model's vectors for every listing, computed once: the *views* that the tasks read.

A view is one matrix per modality with unit rows:

- ``image``: the normalised mean of a listing's image vectors;
- ``text``: the listing's **title** alone (the composer's other fields, category and attributes
  above all, are labels of the tasks and would leak them);
- ``both``: ``eclip.encode.fuse`` of the two, ``[sqrt(w) image; sqrt(1 - w) text]``, so that a dot
  product is the weighted mean of the image and the text similarities, for aligned and unaligned
  towers alike, with the model's own weight: the same rule and weight as ``eclip embed`` and the
  search index (a model trained without one, e.g. towers before training, gets one chosen on val).

Three kinds of views: ``joint`` (a trained dual encoder: vectors in the shared space), ``tower`` (the
towers before alignment: pooled tower features, the image tower's pretrained ones where it is
pretrained) and ``tfidf`` (character n-grams of titles, the reference that needs no network; a
scipy sparse matrix, text only). A model also keeps its joint-space vectors for zero-shot prompts
and cross-modal retrieval, whatever its task view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from eclip.catalog.schema import Listing
from eclip.catalog.text import normalize_title
from eclip.encode import (FUSION_WEIGHT, ImageFeatureCache, embed_listings, resolve_fusion_weight,
                          embed_texts, fuse, image_cache_for, model_composer, title_composer,
                          unit_rows)

MODALITIES = ("image", "text", "both")
VIEW_KINDS = ("joint", "tower", "tfidf")


@dataclass
class ModelViews:
    name: str
    kind: str  # one of VIEW_KINDS
    task: dict[str, np.ndarray | sp.csr_matrix]  # modality -> [N, D] unit rows (what tasks read)
    joint: dict[str, np.ndarray] = field(default_factory=dict)  # shared space (zero-shot)
    encode_prompts: Callable[[list[str]], np.ndarray] | None = None  # texts -> shared space
    attribute_format: str = "{key} {value}"
    # modality -> what probes train on, when not ``task``: a dual encoder's towers' pooled features
    # (the representation; the joint space is the projection of it that the contrastive loss shapes)
    features: dict[str, np.ndarray] | None = None
    # the image's share of "both": the model's own, or (a model without one) chosen on val
    fusion_weight: float | None = None
    fusion_source: str = ""

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.task]

    def probe_input(self, modality: str) -> np.ndarray | sp.csr_matrix:
        return (self.features or self.task)[modality]


def listing_cache(model, listings: list[Listing], caches: list[ImageFeatureCache], *,
                  progress: bool = True) -> ImageFeatureCache:
    """The image-tower features of every photo of ``listings`` (see ``encode.image_cache_for``)."""
    return image_cache_for(model, [p for x in listings for p in x.images], caches,
                           progress=progress)


@torch.no_grad()
def model_views(name: str, model, listings: list[Listing], cache: ImageFeatureCache, *,
                tower: bool = False, val_rows: np.ndarray | None = None,
                batch_size: int = 128, progress: bool = True) -> ModelViews:
    """The views of a dual encoder: joint-space task views (``eclip.encode.embed_listings`` of the
    titles: the very vectors ``eclip embed`` and search make for a listing whose text is its title),
    or tower features when ``tower``.

    "both" fuses with the model's own weight (``model.fusion_weight``, chosen on validation
    catalogs when it was trained); a model without one (towers before training) gets the weight
    that ``encode.choose_fusion_weight`` picks on ``val_rows`` (or ``FUSION_WEIGHT`` without them).
    That weight serves the similarity tasks; the probes read the towers' features with the halves
    fused evenly (``FUSION_WEIGHT``), since a probe learns its own weighting of them.
    """
    emb = embed_listings(model, listings, title_composer(model), batch_size=batch_size,
                         image_cache=cache, features=True, progress=progress, desc=name)
    image, text = unit_rows(emb.image_features), unit_rows(emb.text_features)
    kind = "tower" if tower else "joint"
    rows = np.asarray(val_rows if val_rows is not None else [], dtype=np.int64)
    pick = (image, text) if tower else (emb.image, emb.text)
    weight, source = resolve_fusion_weight(model, pick[0][rows], pick[1][rows],
                                           [listings[i].group_id for i in rows])
    joint = {"image": emb.image, "text": emb.text, "both": fuse(emb.image, emb.text, weight)}
    # probes learn their own weighting of the halves: they read the tower features fused evenly
    features = {"image": image, "text": text, "both": fuse(image, text, FUSION_WEIGHT)}
    task = {"image": image, "text": text, "both": fuse(image, text, weight)} if tower else joint
    composer = model_composer(model)
    return ModelViews(name, kind, task, joint,
                      lambda texts: embed_texts(model, list(texts), batch_size=batch_size),
                      composer.config.attribute_format, features, weight, source)


def clean_titles(listings: list[Listing]) -> list[str]:
    return [normalize_title(x.title) or x.title for x in listings]


def tfidf_views(listings: list[Listing], fit_rows: np.ndarray, *,
                name: str = "tfidf") -> ModelViews:
    """Character 2-4-grams (within words) of cleaned titles, sublinear tf, IDF from ``fit_rows``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    titles = clean_titles(listings)
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True,
                                 lowercase=True, dtype=np.float32)
    vectorizer.fit([titles[i] for i in fit_rows])
    return ModelViews(name, "tfidf", {"text": vectorizer.transform(titles).tocsr()})
