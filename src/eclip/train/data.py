"""From listings to training batches: composed text, image tensors (or cached tower features), group ids.

Randomness (text dropout, augmentation, which of a listing's images) is derived from
``(seed, epoch, index)``, never from global state, so that a resumed run sees the very same batches.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import Dataset

from eclip.catalog.compose import TextComposer
from eclip.catalog.images import ImageTransform, load_image
from eclip.catalog.schema import Listing, catalog_group_id


def group_index(listings: list[Listing]) -> torch.Tensor:
    """One integer per listing: equal for listings of one catalog, -1 for listings without one."""
    return torch.tensor([catalog_group_id(x.catalog_id) for x in listings], dtype=torch.long)


def item_rng(seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{epoch}:{index}")


class ListingDataset(Dataset):
    """Items are dicts with ``text``, ``group``, ``index`` and either ``pixel_values`` or ``image_ref``.

    With ``images_as_refs`` the dataset does not decode images: it returns the position of the chosen
    image in ``self.image_paths`` so that a feature cache can stand in for a locked image tower.
    """

    def __init__(self, listings: list[Listing], composer: TextComposer, transform: ImageTransform,
                 *, seed: int = 0, images_as_refs: bool = False):
        self.listings = listings
        self.composer = composer
        self.transform = transform
        self.seed = seed
        self.images_as_refs = images_as_refs
        self.groups = group_index(listings)
        self.epoch = 0
        self.image_paths: list[str] = []
        self._first_image: list[int] = []
        for listing in listings:
            self._first_image.append(len(self.image_paths))
            self.image_paths.extend(listing.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.listings)

    def __getitem__(self, index: int) -> dict[str, Any]:
        listing = self.listings[index]
        rng = item_rng(self.seed, self.epoch, index)
        text = self.composer.compose(listing, rng)
        which = rng.randrange(len(listing.images))
        item: dict[str, Any] = {"text": text, "group": self.groups[index], "index": index}
        if self.images_as_refs:
            item["image_ref"] = self._first_image[index] + which
        else:
            generator = None
            if self.transform.train:
                generator = torch.Generator().manual_seed(rng.getrandbits(63))
            image = load_image(listing.images[which])
            item["pixel_values"] = self.transform(image, generator)
        return item


class Collator:
    """Stacks items and tokenizes their texts with the model's tokenizer."""

    def __init__(self, tokenize):
        self.tokenize = tokenize

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenize([it["text"] for it in items]))
        batch["group"] = torch.stack([it["group"] for it in items])
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        if "pixel_values" in items[0]:
            batch["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        else:
            batch["image_ref"] = torch.tensor([it["image_ref"] for it in items], dtype=torch.long)
        return batch
