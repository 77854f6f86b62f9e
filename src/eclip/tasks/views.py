"""Every model's vectors for every listing, computed once: the *views* that the tasks read.

A view is one matrix per modality with unit rows:

- ``image``: the normalised mean of a listing's image vectors;
- ``text``: the listing's **title** alone (the composer's other fields, category and attributes
  above all, are labels of the tasks and would leak them);
- ``both``: ``[sqrt(w) image; sqrt(1 - w) text]``, so that a dot product is the weighted mean of
  the image and the text similarities, for aligned and unaligned towers alike. The view holds
  ``w = 0.5`` (probes weigh the halves themselves); the similarity-based heads (matching,
  clustering) choose ``w`` on val for each model (``fusion_weight``).

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
from tqdm.auto import tqdm

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing
from eclip.catalog.text import normalize_title
from eclip.tasks.embed import embed_texts, eval_transform, model_composer
from eclip.train.features import ImageFeatureCache

MODALITIES = ("image", "text", "both")
VIEW_KINDS = ("joint", "tower", "tfidf")


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fuse(image: np.ndarray, text: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``[sqrt(w) image; sqrt(1 - w) text]`` of unit rows: a unit row whose dot product is
    ``w * image similarity + (1 - w) * text similarity``."""
    return np.hstack([np.sqrt(weight) * image, np.sqrt(1.0 - weight) * text]).astype(np.float32)


@dataclass
class ModelViews:
    name: str
    kind: str  # one of VIEW_KINDS
    task: dict[str, np.ndarray | sp.csr_matrix]  # modality -> [N, D] unit rows (what tasks read)
    joint: dict[str, np.ndarray] = field(default_factory=dict)  # shared space (zero-shot)
    retrieval_text: np.ndarray | None = None  # the model's full composed text, shared space
    encode_prompts: Callable[[list[str]], np.ndarray] | None = None  # texts -> shared space
    attribute_format: str = "{key} {value}"
    # modality -> what probes train on, when not ``task``: a dual encoder's towers' pooled features
    # (the representation; the joint space is the projection of it that the contrastive loss shapes)
    features: dict[str, np.ndarray] | None = None

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.task]

    def probe_input(self, modality: str) -> np.ndarray | sp.csr_matrix:
        return (self.features or self.task)[modality]


FUSION_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)  # image weights of "both" tried on val


def fusion_weight(score: Callable[[float], float],
                  grid: tuple[float, ...] = FUSION_GRID) -> float:
    """The image weight with the best ``score`` (measured on val); of equally good weights, the
    one nearest 0.5."""
    scores = np.array([score(w) for w in grid])
    best = [w for w, value in zip(grid, scores) if value >= scores.max() - 1e-12]
    return float(min(best, key=lambda w: abs(w - 0.5)))


def title_composer(model) -> TextComposer:
    """The model's own composer (cleaning, case) reduced to the title."""
    config = model_composer(model).config.to_dict()
    config.update(segments=["{title}"], field_dropout={})
    return TextComposer(ComposerConfig.from_dict(config))


def image_cache_for(model, listings: list[Listing], caches: list[ImageFeatureCache], *,
                    progress: bool = True) -> ImageFeatureCache:
    """A cache of this model's image-tower features: one in ``caches`` computed with the same tower
    below its cut (models that share a locked tower share it, whatever their trained top blocks),
    else a new one, which is appended to ``caches``."""
    for cache in caches:
        if cache.serves(model) and all(p in cache.index for x in listings for p in x.images):
            return cache
    paths = [p for x in listings for p in x.images]
    cache = ImageFeatureCache.compute(model, paths, eval_transform(model), progress=progress,
                                      desc="image features")
    caches.append(cache)
    return cache


def _per_listing_mean(per_image: torch.Tensor, listings: list[Listing]) -> torch.Tensor:
    counts = torch.tensor([len(x.images) for x in listings])
    owner = torch.repeat_interleave(torch.arange(len(listings)), counts)
    sums = torch.zeros(len(listings), per_image.shape[1]).index_add_(0, owner, per_image)
    return sums / counts[:, None].clamp(min=1)


@torch.no_grad()
def _text_features(model, texts: list[str], batch_size: int, progress: bool,
                   desc: str) -> torch.Tensor:
    """Text-tower features in the order of ``texts``; batches hold texts of similar length, so
    that little compute goes to padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), 0)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress,
                      unit="batch"):
        rows = order[start:start + batch_size]
        tokens = model.tokenize([texts[i] for i in rows])
        features = model.text_features(tokens["input_ids"], tokens["attention_mask"])
        if out.shape[1] == 0:
            out = torch.zeros(len(texts), features.shape[1])
        out[rows] = features
    return out


@torch.no_grad()
def model_views(name: str, model, listings: list[Listing], cache: ImageFeatureCache, *,
                tower: bool = False, retrieval_rows: np.ndarray | None = None,
                batch_size: int = 128, progress: bool = True) -> ModelViews:
    """The views of a dual encoder: joint-space task views, or tower features when ``tower``.

    ``retrieval_text`` (the model's full composed text) is embedded for ``retrieval_rows`` only
    (default: all listings) and is zero elsewhere.
    """
    model.eval()
    cache.check(model)
    paths = [p for x in listings for p in x.images]
    image_features = cache.tower_features(model, paths)
    joint_image = _per_listing_mean(model.project_image(image_features), listings)
    joint_image = unit_rows(joint_image.numpy())
    short = title_composer(model)
    titles = [short.compose(x) for x in listings]
    title_features = _text_features(model, titles, batch_size, progress, f"titles ({name})")
    joint_text = unit_rows(model.project_text(title_features).numpy())
    joint = {"image": joint_image, "text": joint_text, "both": fuse(joint_image, joint_text)}
    image = unit_rows(_per_listing_mean(image_features, listings).numpy())
    text = unit_rows(title_features.numpy())
    towers = {"image": image, "text": text, "both": fuse(image, text)}
    if tower:
        task, kind, features = towers, "tower", None
    else:
        task, kind, features = joint, "joint", towers
    composer = model_composer(model)
    rows = np.arange(len(listings)) if retrieval_rows is None else np.asarray(retrieval_rows)
    retrieval_text = np.zeros_like(joint_text)
    if len(rows):
        full = _text_features(model, [composer.compose(listings[i]) for i in rows], batch_size,
                              progress, f"texts ({name})")
        retrieval_text[rows] = unit_rows(model.project_text(full).numpy())
    return ModelViews(name, kind, task, joint, retrieval_text,
                      lambda texts: embed_texts(model, list(texts), batch_size=batch_size),
                      composer.config.attribute_format, features)


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
