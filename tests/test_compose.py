"""Training text composition: exact outputs, dropout, configuration errors."""

from __future__ import annotations

import random

import pytest

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing
from eclip.errors import ConfigError


def _korean() -> Listing:
    return Listing(
        product_id="p1",
        title="[무료배송]★특가★ 나이키 에어맥스 270 운동화 (블랙) 250mm!!!",
        images=["a.jpg"],
        brand="나이키",
        category="패션 > 신발 > 운동화",
        attributes={"소재": "메쉬", "색상": "블랙", "사이즈": " 250 "},
    )


def _english() -> Listing:
    return Listing(
        product_id="p2",
        title="Samsung Galaxy S24 Ultra 256GB - FREE SHIPPING",
        images=["b.jpg"],
        brand="Samsung",
        category="Electronics > Phones > Smartphones",
        attributes={"storage": "256GB", "color": "Titanium Black"},
    )


def test_default_config_all_fields_korean() -> None:
    assert TextComposer().compose(_korean()) == (
        "나이키 에어맥스 270 운동화 (블랙) 250mm | 나이키 | 패션 > 신발 > 운동화"
        " | 사이즈 250, 색상 블랙, 소재 메쉬")


def test_default_config_all_fields_english() -> None:
    assert TextComposer().compose(_english()) == (
        "Samsung Galaxy S24 Ultra 256GB | Samsung | Electronics > Phones > Smartphones"
        " | color Titanium Black, storage 256GB")


def test_missing_fields_leave_no_segment_and_no_dangling_separator() -> None:
    listing = Listing(product_id="p3", title="Lego Technic 42115", images=[],
                      brand=None, category="", attributes={"pieces": "3696", "age": " "})
    config = ComposerConfig(segments=["{title}", "brand: {brand}", "in {leaf}", "{attributes}"])
    assert TextComposer(config).compose(listing) == "Lego Technic 42115 | pieces 3696"


def test_literal_text_segments_and_leaf_top() -> None:
    config = ComposerConfig(segments=["{title}", "brand: {brand}", "{top} / {leaf}"],
                            separator=". ")
    assert TextComposer(config).compose(_english()) == (
        "Samsung Galaxy S24 Ultra 256GB. brand: Samsung. Electronics / Smartphones")


def test_category_levels_and_separator() -> None:
    config = ComposerConfig(segments=["{category}"], category_levels=2, category_separator="/")
    assert TextComposer(config).compose(_korean()) == "신발/운동화"
    config = ComposerConfig(segments=["{category}"], category_levels=5)
    assert TextComposer(config).compose(_korean()) == "패션 > 신발 > 운동화"


def test_attribute_format_max_and_lowercase() -> None:
    config = ComposerConfig(segments=["{title}", "{attributes}"], attribute_format="{key}: {value}",
                            attribute_separator="; ", max_attributes=1, lowercase=True)
    assert TextComposer(config).compose(_english()) == (
        "samsung galaxy s24 ultra 256gb | color: titanium black")


def test_clean_title_false_keeps_raw_title_and_promo_only_title_falls_back() -> None:
    raw = ComposerConfig(segments=["{title}"], clean_title=False)
    assert TextComposer(raw).compose(_english()) == "Samsung Galaxy S24 Ultra 256GB - FREE SHIPPING"
    promo_only = Listing(product_id="p4", title="  ★무료배송★   특가!! ", images=[])
    assert TextComposer().compose(promo_only) == "★무료배송★ 특가!!"


def test_other_fields_get_light_normalisation() -> None:
    listing = Listing(product_id="p5", title="운동화", images=[], brand="ＮＩＫＥ &amp; Co",
                      attributes={"색상": "블랙&nbsp;화이트"})
    assert TextComposer().compose(listing) == "운동화 | NIKE & Co | 색상 블랙 화이트"


def test_no_rng_means_no_dropout() -> None:
    config = ComposerConfig(field_dropout={"brand": 1.0, "category": 1.0, "attributes": 1.0})
    composer = TextComposer(config)
    assert composer.compose(_english()) == TextComposer().compose(_english())
    assert composer.compose(_english(), random.Random(0)) == "Samsung Galaxy S24 Ultra 256GB"


def test_dropout_is_deterministic_for_a_seeded_rng() -> None:
    composer = TextComposer(ComposerConfig(
        field_dropout={"brand": 0.5, "category": 0.5, "attributes": 0.5}))
    first = [composer.compose(_korean(), random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng_a, rng_b = random.Random(123), random.Random(123)
    texts_a = [composer.compose(_korean(), rng_a) for _ in range(50)]
    texts_b = [composer.compose(_korean(), rng_b) for _ in range(50)]
    assert texts_a == texts_b
    assert len(set(texts_a)) > 1  # dropout really varies the text


def test_dropout_rate_is_honoured_and_title_is_kept() -> None:
    composer = TextComposer(ComposerConfig(field_dropout={"brand": 0.5, "attributes": 0.2}))
    rng = random.Random(2024)
    texts = [composer.compose(_english(), rng) for _ in range(1000)]
    with_brand = sum("| Samsung |" in t for t in texts)
    with_attributes = sum("storage 256GB" in t for t in texts)
    assert 400 <= with_brand <= 600
    assert 740 <= with_attributes <= 860
    assert all(t.startswith("Samsung Galaxy S24 Ultra 256GB") for t in texts)
    assert all("Electronics > Phones > Smartphones" in t for t in texts)


def test_dropping_category_also_empties_leaf_and_top() -> None:
    config = ComposerConfig(segments=["{title}", "{leaf}", "{top}"],
                            field_dropout={"category": 1.0})
    assert TextComposer(config).compose(_english(), random.Random(1)) == (
        "Samsung Galaxy S24 Ultra 256GB")


def test_when_dropout_leaves_nothing_the_title_is_returned() -> None:
    config = ComposerConfig(segments=["{title}", "{brand}"], field_dropout={"title": 1.0})
    listing = Listing(product_id="p6", title="Logitech MX Master 3S", images=[])
    assert TextComposer(config).compose(listing, random.Random(3)) == "Logitech MX Master 3S"
    with_brand = Listing(product_id="p7", title="MX Master 3S", images=[], brand="Logitech")
    assert TextComposer(config).compose(with_brand, random.Random(3)) == "Logitech"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"segments": ["{title}", "{price}"]}, "{price}"),
    ({"segments": ["{title}", "{0}"]}, "'{0}'"),
    ({"segments": ["{title.upper}"]}, "'{title.upper}'"),
    ({"segments": ["{title!r}"]}, "plain placeholders"),
    ({"segments": ["{title"]}, "not a valid template"),
    ({"segments": ["just text"]}, "no placeholder"),
    ({"segments": []}, "empty"),
    ({"segments": "{title}"}, "list of templates"),
    ({"attribute_format": "{name}={value}"}, "{name}"),
    ({"category_levels": -1}, "category_levels"),
    ({"max_attributes": -2}, "max_attributes"),
    ({"field_dropout": {"price": 0.1}}, "price"),
    ({"field_dropout": {"brand": 1.5}}, "brand"),
    ({"lowercase": "yes"}, "lowercase"),
])
def test_invalid_config_raises_config_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        ComposerConfig(**kwargs)
    assert needle in str(info.value)


def test_to_dict_from_dict_round_trip_and_unknown_key() -> None:
    config = ComposerConfig(segments=["{title}", "brand: {brand}"], separator=" ; ",
                            category_levels=2, field_dropout={"brand": 0.3}, max_attributes=4,
                            lowercase=True)
    data = config.to_dict()
    assert data["field_dropout"] == {"brand": 0.3}
    assert ComposerConfig.from_dict(data) == config
    data["field_dropout"]["brand"] = 0.9  # the dict is a copy, not the config's own
    assert config.field_dropout == {"brand": 0.3}
    with pytest.raises(ConfigError, match="'max_attribute'"):
        ComposerConfig.from_dict({"max_attribute": 3})
