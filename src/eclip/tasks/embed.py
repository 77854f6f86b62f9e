"""Embed listings once: image, text and fused (product) vectors, L2-normalised, as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.images import ImageTransform, load_image
from eclip.catalog.schema import Listing


@dataclass
class Embeddings:
    product_ids: list[str]
    image: np.ndarray  # [N, D] float32, unit rows
    text: np.ndarray
    product: np.ndarray

    def modality(self, name: str) -> np.ndarray:
        return {"image": self.image, "text": self.text, "both": self.product}[name]


def eval_transform(model) -> ImageTransform:
    cfg = model.config
    return ImageTransform(cfg.image_size, tuple(cfg.image_mean), tuple(cfg.image_std), train=False)


def model_composer(model) -> TextComposer:
    """The text composer the model was trained with (no dropout: evaluation passes no rng)."""
    return TextComposer(ComposerConfig.from_dict(model.config.text_composer or {}))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def embed_texts(model, texts: list[str], *, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenize(texts[start:start + batch_size])
        out.append(model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.embed_dim), np.float32)


@torch.no_grad()
def embed_listings(model, listings: list[Listing], composer: TextComposer | None = None, *,
                   batch_size: int = 128, image_cache=None, progress: bool = True,
                   desc: str = "embedding") -> Embeddings:
    """A listing's image vector is the normalised mean of its images' vectors.

    ``image_cache`` (an ``ImageFeatureCache`` of this model's image tower) skips the tower.
    """
    model.eval()
    composer = composer or model_composer(model)
    transform = eval_transform(model)
    if image_cache is not None:
        image_cache.check(model)
    texts = [composer.compose(listing) for listing in listings]
    images, text_vecs = [], []
    for start in tqdm(range(0, len(listings), batch_size), desc=desc, disable=not progress,
                      unit="batch"):
        chunk = listings[start:start + batch_size]
        paths = [p for listing in chunk for p in listing.images]
        if image_cache is not None:
            per_image = model.project_image(image_cache.tower_features(model, paths))
        else:
            pixels = torch.stack([transform(load_image(p)) for p in paths])
            per_image = model.encode_image(pixels)
        offset = 0
        for listing in chunk:
            n = len(listing.images)
            images.append(_normalize(per_image[offset:offset + n].mean(0)))
            offset += n
        tokens = model.tokenize(texts[start:start + batch_size])
        text_vecs.append(model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
    image = torch.stack(images) if images else torch.zeros(0, model.config.embed_dim)
    text = torch.cat(text_vecs) if text_vecs else torch.zeros(0, model.config.embed_dim)
    product = _normalize(image + text)
    return Embeddings([listing.product_id for listing in listings], image.numpy(), text.numpy(),
                      product.numpy())


def write_embeddings(emb: Embeddings, path: str | Path, listings: list[Listing] | None = None) -> Path:
    """Parquet with product_id, catalog_id (when listings are given) and the three vectors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"product_id": pa.array(emb.product_ids, pa.string())}
    if listings is not None:
        columns["catalog_id"] = pa.array([x.catalog_id for x in listings], pa.string())
    dim = emb.image.shape[1]
    for name, values in (("image_embedding", emb.image), ("text_embedding", emb.text),
                         ("product_embedding", emb.product)):
        flat = pa.array(values.astype(np.float32).reshape(-1))
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, dim)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(path)
    return path
