"""The listing: one seller's offer of a product, as eclip sees it after reading a catalog file.

Only ``title`` and one image are required. ``catalog_id`` groups listings of the same product sold by
different sellers; a listing without one is a product of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

CATEGORY_SEP = " > "

# The standard field names; a column mapping renames a user's columns to these.
FIELDS = ("product_id", "catalog_id", "title", "brand", "category", "attributes", "images",
          "adult", "lang", "split")


def category_parts(category: str | None) -> list[str]:
    """``"Fashion > Shoes > Sneakers"`` -> ``["Fashion", "Shoes", "Sneakers"]`` (empty parts dropped)."""
    if not category:
        return []
    return [part.strip() for part in category.split(">") if part.strip()]


def group_key(catalog_id: str | None, product_id: str) -> str:
    """The product a listing belongs to, as a string: its catalog id, or the listing itself when it
    has none (so two listings without a catalog id are never the same product)."""
    return catalog_id if catalog_id else f"__listing__:{product_id}"


def catalog_group_id(catalog_id: str | None) -> int:
    """A catalog id as a non-negative 63-bit integer, the same in every process and on every rank
    (so that gathered batches agree on who is a positive of whom); -1 for a listing without one.
    The one integer form of a catalog id: the sampler, the loss and the shard stream use it."""
    if not catalog_id:
        return -1
    digest = hashlib.blake2b(catalog_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def join_category(parts: list[str] | tuple[str, ...]) -> str:
    return CATEGORY_SEP.join(p.strip() for p in parts if p and p.strip())


@dataclass
class Listing:
    product_id: str
    title: str
    images: list[str]
    catalog_id: str | None = None
    brand: str | None = None
    category: str | None = None  # a path, parts joined by " > "
    attributes: dict[str, str] = field(default_factory=dict)
    adult: bool | None = None
    lang: str | None = None
    split: str | None = None  # "train" / "val" / "test" where the catalog file says so

    @property
    def category_path(self) -> list[str]:
        return category_parts(self.category)

    @property
    def leaf_category(self) -> str | None:
        parts = self.category_path
        return parts[-1] if parts else None

    @property
    def top_category(self) -> str | None:
        parts = self.category_path
        return parts[0] if parts else None

    @property
    def group_id(self) -> str:
        """The product this listing belongs to: its catalog id, or itself when it has none."""
        return group_key(self.catalog_id, self.product_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Listing":
        return cls(**{k: row[k] for k in FIELDS if k in row})
