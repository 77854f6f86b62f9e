"""Training text composed from a listing's title, brand, category and attributes.

Titles are short and irregular; the seller's structured fields add what the title leaves out.
A :class:`ComposerConfig` lists *segments*, templates such as ``"{title}"`` or ``"brand: {brand}"``
that may use the placeholders of :data:`PLACEHOLDERS`; the rendered segments are joined with
``separator``::

    나이키 에어맥스 270 운동화 (블랙) 250mm | 나이키 | 패션 > 신발 > 운동화 | 색상 블랙, 소재 메쉬

A segment whose placeholders are all empty (missing or dropped) disappears with its separator, so
``brand: None`` or ``a |  | b`` never appears. When only some of a segment's placeholders are empty
they render as nothing and the spacing is collapsed; give each field its own segment when literal
text must not be left alone.

With a ``random.Random``, :meth:`TextComposer.compose` drops fields at the rates of
``field_dropout`` (training: the model also learns from title-only text); without one, nothing is
dropped (evaluation). Dropping ``category`` also empties ``{leaf}`` and ``{top}``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from string import Formatter
from typing import Any

from eclip.catalog.schema import Listing
from eclip.catalog.text import basic_normalize, collapse_whitespace, normalize_title
from eclip.errors import ConfigError

__all__ = ["PLACEHOLDERS", "DROPOUT_FIELDS", "ComposerConfig", "TextComposer"]

PLACEHOLDERS = ("title", "brand", "category", "attributes", "leaf", "top")
# Fields that can be dropped; {leaf} and {top} go with "category".
DROPOUT_FIELDS = ("title", "brand", "category", "attributes")


def _placeholders(template: str, what: str) -> list[str]:
    """The names a format template uses; ConfigError for anything but plain ``{name}``."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{what} {template!r} is not a valid template ({exc}); "
                          "write literal braces as '{{' and '}}'") from exc
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or spec or conversion:
            raise ConfigError(f"{what} {template!r}: use plain placeholders such as '{{title}}', "
                              f"without positions, format specs or conversions")
        names.append(name)
    return names


@dataclass
class ComposerConfig:
    """How a listing becomes one line of training text. All fields are plain data (YAML-ready).

    ``category_levels``: 0 keeps the whole category path, n keeps its last n levels.
    ``field_dropout``: drop probability per field (``title``, ``brand``, ``category``,
    ``attributes``), applied only when ``compose`` gets an rng; the title is never dropped unless it
    is listed here. ``clean_title``: run the title through :func:`normalize_title` (falling back to
    the raw title when that leaves nothing) and the other fields through :func:`basic_normalize`
    (entities, NFKC, invisible characters); False only collapses whitespace.
    ``max_attributes``: keep the first n attributes in key order (None keeps all).
    """

    segments: list[str] = field(
        default_factory=lambda: ["{title}", "{brand}", "{category}", "{attributes}"])
    separator: str = " | "
    attribute_format: str = "{key} {value}"
    attribute_separator: str = ", "
    category_levels: int = 0
    category_separator: str = " > "
    field_dropout: dict[str, float] = field(default_factory=dict)
    clean_title: bool = True
    max_attributes: int | None = None
    lowercase: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.segments, str) or not isinstance(self.segments, (list, tuple)):
            raise ConfigError("composer 'segments' must be a list of templates, "
                              "e.g. ['{title}', 'brand: {brand}']")
        if not self.segments:
            raise ConfigError("composer 'segments' is empty; give at least ['{title}']")
        self.segments = list(self.segments)
        for segment in self.segments:
            if not isinstance(segment, str):
                raise ConfigError(f"composer segment {segment!r} is not a string")
            names = _placeholders(segment, "composer segment")
            if not names:
                raise ConfigError(f"composer segment {segment!r} has no placeholder; it would be "
                                  f"the same for every listing. Use one of "
                                  f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
            for name in names:
                if name not in PLACEHOLDERS:
                    raise ConfigError(f"composer segment {segment!r}: unknown placeholder "
                                      f"'{{{name}}}'; known: "
                                      f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        for name in ("separator", "attribute_format", "attribute_separator", "category_separator"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"composer '{name}' must be a string")
        unknown = set(_placeholders(self.attribute_format, "composer attribute_format"))
        unknown -= {"key", "value"}
        if unknown:
            raise ConfigError(f"composer attribute_format {self.attribute_format!r}: unknown "
                              f"placeholder '{{{sorted(unknown)[0]}}}'; known: {{key}}, {{value}}")
        if (not isinstance(self.category_levels, int) or isinstance(self.category_levels, bool)
                or self.category_levels < 0):
            raise ConfigError(f"composer 'category_levels' must be an integer >= 0 "
                              f"(0 = whole path), got {self.category_levels!r}")
        if self.max_attributes is not None and (
                not isinstance(self.max_attributes, int) or isinstance(self.max_attributes, bool)
                or self.max_attributes < 0):
            raise ConfigError(f"composer 'max_attributes' must be null or an integer >= 0, "
                              f"got {self.max_attributes!r}")
        if not isinstance(self.field_dropout, dict):
            raise ConfigError("composer 'field_dropout' must be a mapping such as {brand: 0.3}")
        self.field_dropout = dict(self.field_dropout)
        for name, rate in self.field_dropout.items():
            if name not in DROPOUT_FIELDS:
                raise ConfigError(f"composer field_dropout: unknown field '{name}'; "
                                  f"known: {', '.join(DROPOUT_FIELDS)}")
            if (not isinstance(rate, (int, float)) or isinstance(rate, bool)
                    or not 0.0 <= rate <= 1.0):
                raise ConfigError(f"composer field_dropout['{name}'] must be a number in [0, 1], "
                                  f"got {rate!r}")
        for name in ("clean_title", "lowercase"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"composer '{name}' must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComposerConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"composer settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"composer: unknown key '{key}'; "
                                  f"known: {', '.join(sorted(known))}")
        return cls(**data)


class TextComposer:
    """Renders a listing as text following a :class:`ComposerConfig`."""

    def __init__(self, config: ComposerConfig | None = None):
        self.config = config if config is not None else ComposerConfig()
        self._segments = [(s, set(_placeholders(s, "composer segment")))
                          for s in self.config.segments]

    def _clean(self, text: Any) -> str:
        if text is None:
            return ""
        text = str(text)
        return basic_normalize(text) if self.config.clean_title else collapse_whitespace(text)

    def _title(self, raw: str) -> str:
        raw = raw or ""
        if self.config.clean_title:
            cleaned = normalize_title(raw)
            if cleaned:
                return cleaned
        return collapse_whitespace(raw)

    def _attributes(self, attributes: dict[str, Any]) -> str:
        cfg = self.config
        pairs = [(self._clean(k), self._clean(v)) for k, v in (attributes or {}).items()]
        pairs = sorted((k, v) for k, v in pairs if k and v)
        if cfg.max_attributes is not None:
            pairs = pairs[:cfg.max_attributes]
        rendered = (collapse_whitespace(cfg.attribute_format.format(key=k, value=v))
                    for k, v in pairs)
        return cfg.attribute_separator.join(r for r in rendered if r)

    def values(self, listing: Listing) -> dict[str, str]:
        """The placeholder values of a listing, before dropout ("" where missing)."""
        cfg = self.config
        path = [p for p in (self._clean(p) for p in listing.category_path) if p]
        shown = path[-cfg.category_levels:] if cfg.category_levels else path
        return {
            "title": self._title(listing.title),
            "brand": self._clean(listing.brand),
            "category": cfg.category_separator.join(shown),
            "attributes": self._attributes(listing.attributes),
            "leaf": path[-1] if path else "",
            "top": path[0] if path else "",
        }

    def _dropped(self, rng: random.Random | None) -> set[str]:
        if rng is None:
            return set()
        # One draw per configured field, in a fixed order, so a seeded rng gives the same text.
        return {name for name in DROPOUT_FIELDS
                if self.config.field_dropout.get(name, 0.0) > 0.0
                and rng.random() < self.config.field_dropout[name]}

    def compose(self, listing: Listing, rng: random.Random | None = None) -> str:
        """The training text of ``listing``; ``rng`` enables field dropout (None: no dropout).

        When dropout leaves no segment at all, the title alone is returned.
        """
        values = self.values(listing)
        title = values["title"]
        dropped = self._dropped(rng)
        if "category" in dropped:
            dropped |= {"leaf", "top"}
        for name in dropped:
            values[name] = ""
        parts = []
        for template, names in self._segments:
            if all(not values[n] for n in names):
                continue
            rendered = collapse_whitespace(template.format_map(values))
            if rendered:
                parts.append(rendered)
        text = self.config.separator.join(parts) if parts else title
        return text.lower() if self.config.lowercase else text

    __call__ = compose
