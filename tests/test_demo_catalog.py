"""The simulated demo catalog: structure, determinism, splits, adult products, titles, colour."""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eclip.catalog import demo_vocab as vocab
from eclip.catalog.demo import (
    DEMO_LICENSE_NOTE,
    load_emoji_pool,
    make_demo_catalog,
)
from eclip.catalog.demo_photos import tint_artwork
from eclip.catalog.schema import FIELDS, Listing
from eclip.errors import ConfigError

N = 200
SIZE = 48
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _plain(title: str) -> str:
    """The title with HTML entities, full-width characters and repeated spaces undone."""
    return " ".join(unicodedata.normalize("NFKC", html.unescape(title)).split())


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("demo_a")
    path = make_demo_catalog(out, n_listings=N, seed=0, image_size=SIZE, progress=False)
    return out, _read(path)


@pytest.fixture(scope="module")
def groups(catalog) -> dict[str, list[dict]]:
    by_group: dict[str, list[dict]] = defaultdict(list)
    for row in catalog[1]:
        by_group[row["catalog_id"] or row["product_id"]].append(row)
    return by_group


def test_rows_have_exactly_the_standard_fields(catalog):
    out, rows = catalog
    assert len(rows) == N
    assert (out / "listings.jsonl").read_text(encoding="utf-8").endswith("\n")
    ids = [row["product_id"] for row in rows]
    assert len(set(ids)) == N and all(re.fullmatch(r"p\d{6}", pid) for pid in ids)
    for row in rows:
        assert list(row) == list(FIELDS)
        assert row["lang"] in ("ko", "en", "mixed") and row["split"] in ("train", "val", "test")
        assert isinstance(row["adult"], bool) and row["brand"] and row["title"]
        assert len(row["category"].split(" > ")) == 2
        assert Listing.from_dict(row).to_dict() == row


def test_same_seed_same_bytes_other_seed_differs(catalog, tmp_path):
    out_a, rows = catalog
    out_b = tmp_path / "b"
    make_demo_catalog(out_b, n_listings=N, seed=0, image_size=SIZE, progress=False)
    assert (out_a / "listings.jsonl").read_bytes() == (out_b / "listings.jsonl").read_bytes()
    sample = [img for row in rows[::7] for img in row["images"]]
    assert all((out_a / img).read_bytes() == (out_b / img).read_bytes() for img in sample)

    out_c = tmp_path / "c"
    make_demo_catalog(out_c, n_listings=N, seed=1, image_size=SIZE, progress=False)
    assert (out_a / "listings.jsonl").read_bytes() != (out_c / "listings.jsonl").read_bytes()
    first = rows[0]["images"][0]
    assert (out_a / first).read_bytes() != (out_c / first).read_bytes()


def test_catalogs_sizes_and_singletons(groups):
    catalogs = {g: rows for g, rows in groups.items() if rows[0]["catalog_id"] is not None}
    singletons = [rows for rows in groups.values() if rows[0]["catalog_id"] is None]
    assert catalogs and singletons
    for rows in catalogs.values():
        assert 2 <= len(rows) <= 8
        # one product: same brand, category, attributes and adult flag for every seller
        assert len({json.dumps([r["brand"], r["category"], r["attributes"], r["adult"]])
                    for r in rows}) == 1
    assert all(len(rows) == 1 for rows in singletons)
    n_single = sum(len(rows) for rows in singletons)
    assert 0.05 * N <= n_single <= 0.15 * N


def test_no_catalog_in_two_splits_and_fractions_hold(groups):
    assert all(len({r["split"] for r in rows}) == 1 for rows in groups.values())
    per_split = defaultdict(int)
    for rows in groups.values():
        per_split[rows[0]["split"]] += 1
    total = len(groups)
    assert abs(per_split["train"] / total - 0.7) < 0.08
    assert abs(per_split["val"] / total - 0.1) < 0.06
    assert abs(per_split["test"] / total - 0.2) < 0.06
    test_categories = {rs[0]["category"] for rs in groups.values() if rs[0]["split"] == "test"}
    assert len(test_categories) >= 0.8 * per_split["test"]  # spread over categories


def test_images_exist_and_decode_as_rgb_of_image_size(catalog):
    out, rows = catalog
    for row in rows:
        assert row["images"]
        for rel in row["images"]:
            assert not Path(rel).is_absolute()
            assert rel.startswith("images/") and rel.endswith(".jpg")
            with Image.open(out / rel) as img:
                img.load()
                assert img.mode == "RGB" and img.size == (SIZE, SIZE)
    assert (out / "ATTRIBUTION.txt").read_text(encoding="utf-8").strip() == DEMO_LICENSE_NOTE
    assert "CC-BY 4.0" in DEMO_LICENSE_NOTE and "Twemoji" in DEMO_LICENSE_NOTE


def test_adult_products_are_the_age_restricted_ones(catalog, groups):
    _, rows = catalog
    adult_categories = {art.category for art in load_emoji_pool() if art.adult}
    adult_rows = [row for row in rows if row["adult"]]
    assert 0.03 <= len(adult_rows) / N <= 0.15
    assert {row["category"] for row in adult_rows} <= adult_categories
    for row in rows:
        if row["lang"] == "en":  # the English product name is in every English title
            title = _plain(row["title"]).lower()
            named = any(name in title for name in vocab.ADULT_EMOJI_NAMES)
            assert named == row["adult"], row["title"]
    for split in ("train", "val", "test"):
        assert any(rs[0]["adult"] and rs[0]["split"] == split for rs in groups.values())


def test_attributes_have_color_and_more(catalog):
    for row in catalog[1]:
        attrs = row["attributes"]
        assert attrs["color"] in vocab.COLORS
        assert attrs["pack"] in ("1", "2", "3") and attrs["size"] in vocab.SIZES
        assert all(isinstance(v, str) for v in attrs.values())
        assert ("material" in attrs) == (not row["category"].startswith("Food & Drink"))


def test_title_language_matches_lang(catalog):
    rows = catalog[1]
    assert {row["lang"] for row in rows} == {"ko", "en", "mixed"}
    for row in rows:
        title = _plain(row["title"])
        if row["lang"] == "en":
            assert not HANGUL.search(title), title
        else:
            assert HANGUL.search(title), title
        if row["lang"] == "mixed":
            assert re.search(r"[A-Za-z]", title), title
    # titles are seller-specific: the listings of a catalog do not all share one title
    by_catalog = defaultdict(set)
    for row in rows:
        if row["catalog_id"]:
            by_catalog[row["catalog_id"]].add(row["title"])
    assert np.mean([len(titles) > 1 for titles in by_catalog.values()]) > 0.9


def test_colour_variants_differ_in_the_artwork():
    art = next(a for a in load_emoji_pool() if a.name_en == "beer mug")
    means = {}
    for color in ("red", "blue", "green"):
        rgba = np.asarray(tint_artwork(art.png, color), dtype=float)
        means[color] = rgba[rgba[..., 3] > 128][:, :3].mean(axis=0)
    red, blue, green = means["red"], means["blue"], means["green"]
    assert red[0] - red[2] > 60 and blue[2] - blue[0] > 60 and green[1] - green[0] > 40
    assert np.abs(red - blue).max() > 100


def test_colour_shows_in_the_listing_photos(catalog):
    out, rows = catalog
    red_minus_blue: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        color = row["attributes"]["color"]
        if color in ("red", "blue"):
            pixels = np.asarray(Image.open(out / row["images"][0]), dtype=float)
            centre = pixels[SIZE // 4: 3 * SIZE // 4, SIZE // 4: 3 * SIZE // 4]
            centre = centre.reshape(-1, 3).mean(axis=0)
            red_minus_blue[color].append(centre[0] - centre[2])
    assert len(red_minus_blue["red"]) >= 5 and len(red_minus_blue["blue"]) >= 5
    assert np.mean(red_minus_blue["red"]) - np.mean(red_minus_blue["blue"]) > 60


def test_emoji_pool_is_a_usable_category_tree():
    pool = load_emoji_pool()
    per_category = defaultdict(int)
    for art in pool:
        per_category[art.category] += 1
        assert "\u200d" not in art.char and art.png.is_file()
        assert HANGUL.search(art.name_ko) and not HANGUL.search(art.name_en)
        assert art.group != "Flags" and art.group != "Component"
    assert len(per_category) >= 30 and min(per_category.values()) >= vocab.MIN_EMOJI_PER_SUBGROUP
    assert {a.name_en for a in pool if a.adult} == vocab.ADULT_EMOJI_NAMES


@pytest.mark.parametrize("kwargs", [
    {"n_listings": 5},
    {"seed": -1},
    {"image_size": 8},
    {"split_fractions": (0.5, 0.2, 0.2)},
    {"split_fractions": (1.2, -0.1, -0.1)},
])
def test_bad_arguments_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        make_demo_catalog(tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "listings.jsonl").exists()
