"""Where image embeddings come from during a step: pixels through the tower, or cached tower features.

A locked tower computes the same features for the same image every epoch, so they are computed once
(LiT-style) and the step only runs the projection. The cache remembers a fingerprint of the tower's
weights and refuses to serve a different tower.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from eclip.catalog.images import ImageTransform, load_image


def tower_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ImageFeatureCache:
    """Image-tower features (before projection) for a list of image paths."""

    def __init__(self, paths: list[str], features: torch.Tensor, fingerprint: str):
        self.index = {p: i for i, p in enumerate(paths)}
        self.features = features
        self.fingerprint = fingerprint

    @classmethod
    @torch.no_grad()
    def compute(cls, model, paths: list[str], transform: ImageTransform, *, batch_size: int = 128,
                progress: bool = True, desc: str = "image features") -> "ImageFeatureCache":
        unique = list(dict.fromkeys(paths))
        was_training = model.training
        model.eval()
        chunks = []
        for start in tqdm(range(0, len(unique), batch_size), desc=desc, disable=not progress,
                          unit="batch"):
            pixels = torch.stack([transform(load_image(p)) for p in unique[start:start + batch_size]])
            chunks.append(model.image_features(pixels))
        model.train(was_training)
        features = torch.cat(chunks) if chunks else torch.empty(0)
        return cls(unique, features, tower_fingerprint(model.image_tower))

    def check(self, model) -> None:
        if tower_fingerprint(model.image_tower) != self.fingerprint:
            raise ValueError("the cached image features were computed with a different image tower")

    def lookup(self, paths: list[str]) -> torch.Tensor:
        return self.features[[self.index[p] for p in paths]]


class ImageInput(Protocol):
    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def pixel_input(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.encode_image(batch["pixel_values"])


class CachedImageInput:
    """Serves batches whose items carry ``image_ref`` positions into ``image_paths``."""

    def __init__(self, cache: ImageFeatureCache, image_paths: list[str]):
        self.features = cache.lookup(image_paths)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.project_image(self.features[batch["image_ref"]])
