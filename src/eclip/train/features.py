"""Where image embeddings come from during a step: pixels through the tower, or cached tower features.

A locked tower computes the same features for the same image every epoch, so they are computed once
(``eclip.encode.images.ImageFeatureCache``) and the step only runs the projection (and the top blocks
of the tower when ``train.image_trainable_layers`` is set on the locked tower).
"""

from __future__ import annotations

from typing import Protocol

import torch

from eclip.encode.images import ImageFeatureCache


class ImageInput(Protocol):
    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...


def pixel_input(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.encode_image(batch["pixel_values"])


class CachedImageInput:
    """Serves batches whose items carry ``image_ref`` positions into ``image_paths``."""

    def __init__(self, cache: ImageFeatureCache, image_paths: list[str]):
        self.cache = cache
        self.features = cache.lookup(image_paths)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.project_image(self.cache.pooled(model, self.features[batch["image_ref"]]))
