"""One cell of a catalog row as a listing's field: the rules every reader shares.

Missing values: ``None``, a float NaN, an empty or blank string, and the strings ``nan``, ``none``
and ``null`` (any case) all count as "not given". Numbers become text (``12.0`` -> ``"12"`` for
ids); image lists are a JSON list or paths separated by ``|`` / ``;``; categories ``A > B > C`` or a
list; attributes a JSON object or ``key:value;key:value``; adult flags true/false, yes/no, 1/0,
19+. A value that breaks a rule raises :class:`BadValue` (the field and the reason), which the
catalog reader turns into a skipped row and :func:`cell_text` / :func:`cell_identifier` into a
:class:`~eclip.errors.CatalogError` naming the file, row and field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from eclip.catalog.schema import join_category
from eclip.errors import CatalogError

NULL_TEXT = frozenset({"", "nan", "none", "null"})
TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1", "19+", "18+", "adult"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0"})
INTEGRAL_TEXT = re.compile(r"-?\d+\.0+")
TOO_DEEP = "malformed JSON: nested too deeply to read"


class BadValue(Exception):
    """A value (or a whole row, ``field`` None) that cannot become a listing's field."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def cell_text(value: Any, *, file: str, row: int, field: str) -> str | None:
    """A cell as text by the catalog's rules (missing values are ``None``, numbers become text);
    anything else is a :class:`CatalogError` naming the file, row and field."""
    try:
        return as_text(value, field)
    except BadValue as bad:
        raise CatalogError(bad.reason, file=file, row=row, field=field) from None


def cell_identifier(value: Any, *, file: str, row: int, field: str) -> str | None:
    """An id cell as text by the catalog's rules (``12``, ``12.0`` and ``"12.0"`` are ``"12"``)."""
    try:
        return identifier(value, field)
    except BadValue as bad:
        raise CatalogError(bad.reason, file=file, row=row, field=field) from None


# ---------------------------------------------------------------------------------------------
# Row parsing


def missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in NULL_TEXT


def as_text(value: Any, name: str) -> str | None:
    if missing(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_text(value)
    raise BadValue(name, f"not text: '{name}' must be a string, got {type(value).__name__}")


def number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def identifier(value: Any, name: str) -> str | None:
    """An id as text: ``12``, ``12.0`` and ``"12.0"`` all become ``"12"`` (float columns of ids)."""
    text = as_text(value, name)
    if text is not None and INTEGRAL_TEXT.fullmatch(text):
        return text.split(".", 1)[0]
    return text


def image_list(value: Any) -> list[str]:
    if missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadValue("images", f"malformed image list: {exc.msg} in {text[:200]!r}") from None
            except RecursionError:
                raise BadValue("images", f"malformed image list: {TOO_DEEP}") from None
        else:
            return [p.strip() for p in re.split(r"[|;]", text) if p.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(p, str) for p in value):
            raise BadValue("images", "malformed image list: every image must be a path string")
        return [p.strip() for p in value if p.strip()]
    raise BadValue("images", f"malformed image list: expected a list or a string, got "
                            f"{type(value).__name__}")


def category(value: Any) -> str | None:
    if missing(value):
        return None
    if isinstance(value, str):
        parts = value.split(">")
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        raise BadValue("category", f"bad category: expected 'A > B > C' or a list of names, got "
                                  f"{type(value).__name__}")
    return join_category(parts) or None


def attributes(value: Any) -> dict[str, str]:
    if missing(value):
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadValue("attributes", f"bad attributes: malformed JSON ({exc.msg})") from None
            except RecursionError:
                raise BadValue("attributes", f"bad attributes: {TOO_DEEP}") from None
        else:
            value = key_value_pairs(text)
    if not isinstance(value, dict):
        raise BadValue("attributes", f"bad attributes: expected an object or 'key:value;key:value', "
                                    f"got {type(value).__name__}")
    attributes: dict[str, str] = {}
    for key, item in value.items():
        key = str(key).strip()
        if not key:
            raise BadValue("attributes", "bad attributes: an attribute has an empty name")
        if not missing(item):
            attributes[key] = attribute_value(item)
    return attributes


def key_value_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, item = part.partition(":")
        if not sep:
            raise BadValue("attributes", f"bad attributes: '{part.strip()}' is not 'key:value' (write "
                                        f"'key:value;key2:value2' or a JSON object)")
        pairs[key.strip()] = item.strip()
    return pairs


def attribute_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number_text(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value).strip()


def adult(value: Any) -> bool | None:
    if missing(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXT:
            return True
        if text in FALSE_TEXT:
            return False
    raise BadValue("adult", f"bad adult value: {value!r} (use true/false, yes/no, 1/0 or 19+)")

