"""Images as a model sees them: the evaluation transform and the feature cache of a locked tower.

A locked tower computes the same features for the same image every time, so they are computed once
(LiT-style) and shared: by the steps of a training run, by the runs that start from the same tower
(the demo's CLIP and e-CLIP), and by the evaluation of every model built on it. When only the top
blocks of the tower train (``train.image_trainable_layers`` with ``lock_image``), the cache holds
the activations at the cut below them and a model runs its own top blocks on them. The cache remembers a fingerprint of the
tower's weights below the cut and refuses to serve a different tower.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from eclip.catalog.images import ImageTransform
from eclip.encode.loader import photo_batches


def eval_transform(model) -> ImageTransform:
    """The transform that evaluation, embedding, search and the feature cache apply to a photo:
    the model config's own (``DualEncoderConfig.image_transform``: size, resize mode, filter,
    normalisation, as a checkpoint's image processor has them), no augmentation."""
    return model.config.image_transform(train=False)


def caches_locked_tower(lock_image: bool, cache_locked_features: bool, augment: bool) -> bool:
    """Whether a run serves its image tower from an :class:`ImageFeatureCache`: the tower (below
    the trainable top blocks) is locked, caching is on and no augmentation changes the pixels."""
    return lock_image and cache_locked_features and not augment


def tower_fingerprint(module: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """A digest of ``module``'s weights, leaving out the entries whose names start with ``skip``."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        if skip and name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def locked_fingerprint(model, top_blocks: int = 0) -> str:
    """The fingerprint of the part of ``model``'s image tower below its top ``top_blocks`` blocks."""
    tower = model.image_tower
    return tower_fingerprint(tower, tower.top_prefixes(top_blocks) if top_blocks else ())


class ImageFeatureCache:
    """Per image path: the image tower's pooled features (``top_blocks=0``) or the activations that
    enter its top ``top_blocks`` blocks."""

    def __init__(self, paths: list[str], features: torch.Tensor, fingerprint: str,
                 top_blocks: int = 0):
        self.index = {p: i for i, p in enumerate(paths)}
        self.features = features
        self.fingerprint = fingerprint
        self.top_blocks = top_blocks

    @classmethod
    @torch.no_grad()
    def compute(cls, model, paths: list[str], transform: ImageTransform, *, top_blocks: int = 0,
                batch_size: int = 128, progress: bool = True,
                desc: str = "image features") -> "ImageFeatureCache":
        unique = list(dict.fromkeys(paths))
        was_training = model.training
        model.eval()
        run = ((lambda pixels: model.image_tower.below(pixels, top_blocks)) if top_blocks
               else model.image_features)
        chunks = photo_batches(unique, transform, run, batch_size=batch_size, progress=progress,
                               desc=desc)
        model.train(was_training)
        features = torch.cat(chunks) if chunks else torch.empty(0)
        return cls(unique, features, locked_fingerprint(model, top_blocks), top_blocks)

    def serves(self, model) -> bool:
        """Whether ``model``'s image tower (below the cut) is the one these features came from."""
        return locked_fingerprint(model, self.top_blocks) == self.fingerprint

    def check(self, model) -> None:
        if not self.serves(model):
            raise ValueError("the cached image features were computed with a different image tower")

    def lookup(self, paths: list[str]) -> torch.Tensor:
        return self.features[[self.index[p] for p in paths]]

    def pooled(self, model, features: torch.Tensor) -> torch.Tensor:
        """The tower's pooled features from cached ``features`` (runs the top blocks, if any)."""
        return model.image_tower.above(features, self.top_blocks) if self.top_blocks else features

    @torch.no_grad()
    def tower_features(self, model, paths: list[str], batch_size: int = 256) -> torch.Tensor:
        """Pooled tower features of ``paths`` (no gradients), ``batch_size`` images at a time."""
        if not self.top_blocks:
            return self.lookup(paths)
        chunks = [self.pooled(model, self.lookup(paths[i:i + batch_size]).to(model.device)).cpu()
                  for i in range(0, len(paths), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, model.image_tower.out_dim)


def image_cache_for(model, paths: list[str], caches: list[ImageFeatureCache], *,
                    top_blocks: int = 0, batch_size: int = 128, progress: bool = True,
                    desc: str = "image features") -> ImageFeatureCache:
    """A cache of ``model``'s image tower for ``paths``: one of ``caches`` computed with the same
    tower below its cut (models that share a locked tower share it, whatever their trained top
    blocks) that holds every path, else a new one (cut below ``top_blocks``), appended to
    ``caches``."""
    for cache in caches:
        if cache.serves(model) and all(p in cache.index for p in paths):
            return cache
    cache = ImageFeatureCache.compute(model, paths, eval_transform(model), top_blocks=top_blocks,
                                      batch_size=batch_size, progress=progress, desc=desc)
    caches.append(cache)
    return cache
