"""Title normalisation for marketplace noise (Korean and English).

Sellers decorate titles to win clicks: ``[무료배송]★특가★ 나이키 에어맥스 270 (블랙) 250mm!!!``. The
decoration says nothing about the product and differs from seller to seller, so it is noise for a
contrastive model. :func:`normalize_title` removes it and keeps every product word, model number,
size and unit: ``나이키 에어맥스 270 (블랙) 250mm``.

The steps, in order:

1. **HTML**: entities are decoded until stable (``&amp;quot;`` -> ``"``), then known HTML tags are
   removed (``<b>``, ``<br/>``, ...). ``<특가>`` or ``<BEST>`` are not HTML tags; they are brackets.
2. **Unicode**: NFKC (full-width ``ＮＩＫＥ　２７０`` -> ``NIKE 270``, ``㎜`` -> ``mm``). Plain NFKC would
   turn Hangul compatibility jamo (``ㅋ``, ``ㆍ``) into conjoining jamo that glue onto neighbours, so
   those are left as they are, and half-width jamo become compatibility jamo. Invisible characters
   (zero-width spaces, BOM, soft hyphen, Hangul fillers) and the marks ``™ ® © ℠`` are removed.
3. **Bracketed tags**: each bracketed segment - ``() [] {} <> 【】 〔〕 〈〉 《》 「」 『』 〖〗 〘〙`` - is
   judged by its content, innermost first. It is a seller/promo tag, and removed with its brackets,
   when after cleaning (promo phrases, symbols and stray punctuation removed) its content

   * is empty (``[무료배송]``, ``(당일발송)``, ``<특가>``, ``[]``), or
   * contains a seller word (:data:`SELLER_WORDS`: 공식, 판매, 스토어, 샵, official, store, shop, ...;
     ``【공식판매】``, ``[나이키 공식스토어]``), or
   * consists only of tag words (:data:`TAG_WORDS`: BEST, NEW, HOT, MD추천, 신상, 정품, ...), or
   * held a promo phrase and what is left is only tag words and numbers (``[50% 할인]``, ``[1+1]``).

   Otherwise the bracket is informative and kept with its cleaned content: ``(250mm)``, ``(Black)``,
   ``[2 pack]``, ``(블랙 무료배송)`` -> ``(블랙)``. A segment delimited by a pair of the same
   decorative symbol (``★오늘출발★``, ``◆BEST◆``) is judged the same way; when kept, only its text
   stays (the symbols are decoration).
4. **Promo phrases** (:data:`PROMO_PHRASES`, plus ``extra_promo``) are removed anywhere,
   case-insensitively. Phrases that start or end with a Latin letter or digit match only on that
   boundary (``sale`` leaves ``wholesale`` and ``salesman`` alone; ``1+1`` leaves ``11+12``).
   Korean has no spaces between words, so Korean phrases match as substrings, except inside the
   words of :data:`PROMO_EXCEPTIONS` (``세일러`` is "sailor", not "sale" + "러"). A space inside a
   phrase matches any spacing, none included (``무료 배송`` matches ``무료배송``). Discounts such as
   ``50% OFF``, ``최대 70% 할인`` are promo too; ``100% cotton`` is not.
5. **Symbols**: decorative symbols (arrows, geometric shapes, box drawing, stars, hearts, dingbats,
   ``※``, ``•``) are always removed. Emoji (pictographs, flags, keycaps, skin tones) are removed
   unless ``keep_emoji``. Each becomes a space, so words on either side do not merge.
6. **Punctuation runs**: ``!!!`` -> ``!``, ``??`` -> ``?``, ``,,`` -> ``,``. Runs of two or more
   ``~ . - _ = * # / | ^`` are decoration and removed (so ``...`` and ``…`` are removed, while
   ``0.5``, ``250~260mm``, ``AJ1-85`` and ``블랙/화이트`` keep their single character). A separator
   repeated with only spaces between (``나이키 / / 운동화``, left by a removed phrase) is kept once.
7. **Spacing**: whitespace collapses to single spaces; separators and stray punctuation at either
   end are stripped (``- | / \\ , ; : · ~ ! ? . * = ^``).

The result can be empty: a title made only of promo (``★무료배송★ 특가!!``) has nothing left. The
callers (the catalog reader, :class:`eclip.catalog.compose.TextComposer`) then fall back to the raw
title with its whitespace collapsed; :func:`is_promo_only` tells this case apart.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "PROMO_PHRASES", "PROMO_EXCEPTIONS", "SELLER_WORDS", "TAG_WORDS",
    "normalize_title", "basic_normalize", "collapse_whitespace", "is_promo_only",
]

# Promo phrases, removed wherever they occur. A space means "any spacing, none included".
# Extend per call with ``normalize_title(..., extra_promo=[...])``.
PROMO_PHRASES: tuple[str, ...] = (
    # Korean
    "무료 배송", "무료 반품", "당일 발송", "당일 배송", "당일 출고", "오늘 출발", "오늘 발송",
    "빠른 배송", "최저가 보장", "최저가", "초특가", "특가", "특별 할인", "파격 할인", "파격 세일",
    "빅세일", "타임 세일", "할인", "세일", "한정 수량", "정품 보장", "사은품 증정", "사은품",
    "이벤트", "핫딜", "반값", "땡처리", "재고 정리", "품절 임박", "주문 폭주", "1+1", "2+1",
    # English
    "free shipping", "free delivery", "fast shipping", "fast delivery", "same day shipping",
    "best price", "lowest price", "hot deal", "hot deals", "hot item", "hot sale", "big sale",
    "flash sale", "mega sale", "on sale", "sale", "clearance", "limited offer",
    "limited time offer", "special offer", "new arrival", "new arrivals", "best seller",
    "best sellers", "100% authentic", "100% genuine", "100% 정품",
)

# Words that contain a Korean promo phrase but are product words.
PROMO_EXCEPTIONS: tuple[str, ...] = ("세일러", "세일즈", "세일링", "이벤트용")

# A bracket whose cleaned content holds one of these is a seller tag. Korean ones match as
# substrings, except when followed by 용 ("for use in": 매장용, 네일샵용 are product words).
SELLER_WORDS: tuple[str, ...] = (
    "공식", "판매", "스토어", "셀러", "직영", "대리점", "총판", "본사", "쇼핑몰", "샵",
    "official", "store", "shop", "seller", "mall",
)

# Words that make a bracket a tag when they are all it holds (BEST, MD추천, 신상).
# Outside brackets they are left alone: "Best Friend Necklace" keeps its "Best".
TAG_WORDS: tuple[str, ...] = (
    "best", "new", "hot", "hit", "pick", "md", "deal", "free", "genuine", "authentic",
    "베스트", "추천", "강추", "인기", "인기상품", "신상", "신상품", "신제품", "단독", "정품", "국내정품",
    "당일", "무료", "무배", "한정", "오늘", "특별", "대박", "핫", "쿠폰", "적립", "증정", "최대", "행사",
    "상품",
)

_BRACKETS = {
    "(": ")", "[": "]", "{": "}", "<": ">", "【": "】", "〔": "〕", "〈": "〉", "《": "》",
    "「": "」", "『": "』", "〖": "〗", "〘": "〙",
}
_CLOSERS = set(_BRACKETS.values())

_HTML_TAG = re.compile(r"<!--.*?-->|</?([A-Za-z][A-Za-z0-9]*)(?:\s[^<>]*)?/?>", re.DOTALL)
_HTML_INLINE = {"a", "abbr", "b", "big", "del", "em", "font", "i", "ins", "mark", "s", "small",
                "span", "strike", "strong", "sub", "sup", "u"}
_HTML_BLOCK = {"br", "hr", "p", "div", "img", "li", "ul", "ol", "table", "tbody", "thead", "tr",
               "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "center", "section", "label",
               "wbr", "nobr", "blockquote", "pre", "dd", "dt", "dl", "article", "header", "footer"}

_COMPAT_JAMO = re.compile(r"([\u3131-\u318e]+)")
# Removed before NFKC: invisible characters and trademark marks (NFKC would spell ™ as "TM").
_INVISIBLE = ("\u00ad\u034f\u115f\u1160\u180e\u200b\u200c\u200e\u200f\u2060\u2061\u2062\u2063"
              "\u2064\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u3164\ufeff\uffa0")
_MARKS = "\u2122\u00ae\u00a9\u2120"
_EMOJI_JOINERS = "\u200d\ufe0e\ufe0f\u20e3"


def _halfwidth_jamo_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in range(0xFFA1, 0xFFDD):
        name = unicodedata.name(chr(cp), "")
        if name.startswith("HALFWIDTH HANGUL LETTER"):
            table[cp] = unicodedata.lookup(name.removeprefix("HALFWIDTH "))
    return table


_PRE_NFKC = str.maketrans({**{ord(c): None for c in _INVISIBLE + _MARKS},
                           **_halfwidth_jamo_table()})

_DECOR_RANGES = (
    "\u2190-\u21ff\u2300\u2302-\u2307\u2310-\u2319\u231a\u231b\u2328\u23cf\u23e9-\u23fa"
    "\u2500-\u25ff\u2600-\u27bf\u27f0-\u27ff\u2900-\u297f\u2b00-\u2bff"
    "\u203b\u2022\u2023\u2043\u204c\u204d\u2055\u3012\u3020\u303d"
)
_EMOJI_RANGES = "\U0001f000-\U0001faff\U000e0020-\U000e007f"
_DECOR = re.compile(f"[{_DECOR_RANGES}]+")
_EMOJI = re.compile(f"[{_EMOJI_RANGES}]+")
_EMOJI_JOINER = re.compile(f"[{_EMOJI_JOINERS}]")
# With keep_emoji, a joiner survives only after an emoji, a keycap base or another joiner.
_STRAY_JOINER = re.compile(f"(?<![{_EMOJI_RANGES}0-9#*{_EMOJI_JOINERS}])[{_EMOJI_JOINERS}]+")
# A segment between two of the same decorative symbol: ★오늘출발★, ◆◆BEST◆◆.
_DECOR_PAIR = re.compile(f"([{_DECOR_RANGES}])\\1*([^{_DECOR_RANGES}]{{1,40}}?)\\1+")

_BANG_RUN = re.compile(r"([!?,])[!?,]*")
_DECOR_PUNCT_RUN = re.compile(r"([~.\-_=*#/|^\\])\1+|[~.\-_=*#/|^\\]{3,}")
_REPEATED_SEP = re.compile(r"([/|,·:;\-])(?:\s*\1)+")
_WS = re.compile(r"\s+")
_EDGE = " -|/\\,;:·~!?.*=^_"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,!?])")

_TOKEN_SPLIT = re.compile(r"[\s/,|·:;]+")
_NUMBER = re.compile(r"[~+\-]?\d[\d.,%+~\-]*")
_PUNCT_ONLY = re.compile(r"[\W_]+")


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace becomes one space; the ends are stripped."""
    return _WS.sub(" ", text).strip()


def _strip_html(text: str) -> str:
    def replace(m: re.Match[str]) -> str:
        name = (m.group(1) or "").lower()
        if name in _HTML_INLINE:
            return ""
        if name in _HTML_BLOCK or not name:  # a comment has no name
            return " "
        return m.group(0)  # <BEST>, <Black>: a bracket, judged later
    return _HTML_TAG.sub(replace, text)


def _nfkc(text: str) -> str:
    """NFKC that leaves Hangul compatibility jamo (ㅋ, ㆍ) as they are."""
    parts = _COMPAT_JAMO.split(text)
    return "".join(p if i % 2 else unicodedata.normalize("NFKC", p) for i, p in enumerate(parts))


@lru_cache(maxsize=1 << 16)  # a pure function of the text; training composes each listing per epoch
def basic_normalize(text: str) -> str:
    """Steps 1-2 and spacing only: HTML entities and tags, NFKC, invisible characters, whitespace.

    Safe for any field (brand, category, attribute values): it removes no words.
    """
    for _ in range(4):  # entities nested up to four deep: &amp;amp;quot;
        decoded = _strip_html(html.unescape(text))
        if decoded == text:
            break
        text = decoded
    text = _nfkc(text.translate(_PRE_NFKC))
    if _ascii(text):  # the common case, without a look-up per character
        text = text.translate(_ASCII_CONTROL)
    else:
        text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    return collapse_whitespace(text)


_ascii = str.isascii
_ASCII_CONTROL = {c: " " for c in range(128) if unicodedata.category(chr(c)) == "Cc"}


def _phrase_pattern(phrase: str) -> str:
    parts = [re.escape(p) for p in phrase.split()]
    body = r"\s*".join(parts)
    head = r"(?<![A-Za-z0-9])" if phrase[0].isascii() and phrase[0].isalnum() else ""
    tail = r"(?![A-Za-z0-9])" if phrase[-1].isascii() and phrase[-1].isalnum() else ""
    return head + body + tail


def _word_alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


@dataclass(frozen=True)
class _Rules:
    promo: re.Pattern[str]
    seller: re.Pattern[str]
    tag: re.Pattern[str]


@lru_cache(maxsize=32)
def _rules(extra: tuple[str, ...]) -> _Rules:
    phrases = sorted({collapse_whitespace(p) for p in (*PROMO_PHRASES, *extra) if p.strip()},
                     key=len, reverse=True)
    discount = (r"(?<![A-Za-z0-9.])(?:(?:최대|up\s*to)\s*)?\d{1,3}\s*%\s*"
                r"(?:할인|세일|off|sale|dc|down)(?![A-Za-z0-9])")
    promo = re.compile(
        f"(?P<keep>{_word_alternation(PROMO_EXCEPTIONS)})|{discount}|"
        + "|".join(_phrase_pattern(p) for p in phrases),
        re.IGNORECASE,
    )
    korean = [w for w in SELLER_WORDS if not w.isascii()]
    english = [w for w in SELLER_WORDS if w.isascii()]
    seller = re.compile(
        f"(?:{_word_alternation(korean)})(?!용)|"
        f"(?<![A-Za-z])(?:{_word_alternation(english)})s?(?![A-Za-z])",
        re.IGNORECASE,
    )
    tag = re.compile(f"(?:{_word_alternation(TAG_WORDS)})+", re.IGNORECASE)
    return _Rules(promo, seller, tag)


def _tidy(text: str) -> str:
    text = _BANG_RUN.sub(r"\1", text)
    text = _DECOR_PUNCT_RUN.sub(" ", text)
    text = collapse_whitespace(text)
    text = _REPEATED_SEP.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return text.strip(_EDGE)


def _clean_fragment(text: str, rules: _Rules, keep_emoji: bool) -> tuple[str, bool]:
    """Steps 4-7 on a piece of text; also says whether a promo phrase was found."""
    found = False

    def drop_promo(m: re.Match[str]) -> str:
        nonlocal found
        if m.group("keep"):
            return m.group(0)
        found = True
        return " "

    text = rules.promo.sub(drop_promo, text)
    text = _DECOR.sub(" ", text)
    if keep_emoji:
        text = _STRAY_JOINER.sub("", text)
    else:
        text = _EMOJI_JOINER.sub("", _EMOJI.sub(" ", text))
    return _tidy(text), found


def _is_tag(cleaned: str, found_promo: bool, rules: _Rules) -> bool:
    """The bracket rule of the module docstring, on already-cleaned content."""
    if not cleaned or rules.seller.search(cleaned):
        return True
    tokens = [t for t in _TOKEN_SPLIT.split(cleaned) if t and not _PUNCT_ONLY.fullmatch(t)]
    if not tokens or all(rules.tag.fullmatch(t) for t in tokens):
        return True
    return found_promo and all(rules.tag.fullmatch(t) or _NUMBER.fullmatch(t) for t in tokens)


def _resolve_brackets(text: str, rules: _Rules, keep_emoji: bool) -> str:
    """Judge every bracketed segment, innermost first; unbalanced brackets stay as literal text."""
    if not any(c in _BRACKETS for c in text):
        return text
    buffers: list[list[str]] = [[]]
    opens: list[str] = []
    for ch in text:
        if ch in _BRACKETS:
            opens.append(ch)
            buffers.append([])
        elif ch in _CLOSERS and opens and _BRACKETS[opens[-1]] == ch:
            body = "".join(buffers.pop())
            opener = opens.pop()
            cleaned, found = _clean_fragment(body, rules, keep_emoji)
            kept = not _is_tag(cleaned, found, rules)
            buffers[-1].append(f"{opener}{cleaned}{ch}" if kept else " ")
        else:
            buffers[-1].append(ch)
    while opens:  # never closed: put the opener back as plain text
        body = "".join(buffers.pop())
        buffers[-1].append(opens.pop() + body)
    return "".join(buffers[0])


def _resolve_decor_pairs(text: str, rules: _Rules, keep_emoji: bool) -> str:
    def replace(m: re.Match[str]) -> str:
        cleaned, found = _clean_fragment(m.group(2), rules, keep_emoji)
        return " " if _is_tag(cleaned, found, rules) else f" {cleaned} "
    return _DECOR_PAIR.sub(replace, text)


def normalize_title(title: str, *, extra_promo: Iterable[str] = (),
                    keep_emoji: bool = False) -> str:
    """Remove marketplace noise from a listing title; see the module docstring for the rules.

    ``extra_promo`` adds phrases to :data:`PROMO_PHRASES` for this call. The result has no doubled
    spaces and may be empty when the title was only promo.
    """
    return _normalized_title(title, tuple(extra_promo), keep_emoji)


@lru_cache(maxsize=1 << 16)  # pure: the same title, phrases and flag give the same text
def _normalized_title(title: str, extra_promo: tuple[str, ...], keep_emoji: bool) -> str:
    rules = _rules(extra_promo)
    text = basic_normalize(title)
    text = _resolve_brackets(text, rules, keep_emoji)
    text = _resolve_decor_pairs(text, rules, keep_emoji)
    return _clean_fragment(text, rules, keep_emoji)[0]


def is_promo_only(text: str, *, extra_promo: Iterable[str] = ()) -> bool:
    """True when ``text`` has visible content and all of it is promo or decoration.

    Blank text is not promo-only (there is nothing there at all).
    """
    if not basic_normalize(text):
        return False
    return normalize_title(text, extra_promo=extra_promo) == ""
