"""The lexical half of search: how titles, brands and categories become SQLite FTS5 terms.

Korean writes compounds without spaces (``나이키에어맥스운동화``) and many of its words are two
syllables long (``가방``, ``신발``), so neither of SQLite's stock tokenisers fits a Korean and
English catalog on its own: ``unicode61`` cuts only at spaces and punctuation (``에어맥스`` does
not find ``나이키에어맥스``), and ``trigram`` finds any substring but none shorter than three
characters (``가방`` finds nothing). The tokeniser used by default, ``bigram``, is the classic
answer for CJK text: words of Latin letters and digits are kept whole (case-folded, accents
removed), and every run of Hangul, Han or Kana becomes its overlapping two-character pieces
(``에어맥스`` -> ``에어 어맥 맥스``; a single character stays as it is). Titles and queries are cut
the same way in Python, and FTS5 (``porter`` over ``unicode61``) indexes the space-separated pieces;
a query is the OR of its pieces, ranked by ``bm25`` (listings sharing more and rarer pieces first).
FTS5's ``porter`` stems English words on both sides (``shoes`` finds ``shoe``, ``running`` finds
``run``) and passes other pieces through unchanged, so Korean bigrams are indexed as they are. An
index built before stemming keeps its own tokeniser (stored with its table) and stays unstemmed.
``unicode61`` and ``trigram`` remain selectable (``TOKENIZERS``) so that the choice can be
measured (``benchmarks/hybrid_search.py``; the figures are in docs/SEARCH.md).

A query never reaches FTS5 as syntax: it is cut into terms, each term is written as an FTS5 string
(in double quotes, quotes doubled), and the terms are joined by ``OR``. ``"``, ``*``, ``NEAR(``,
``AND``, ``-`` or an empty query are only text (or nothing) and never an FTS5 syntax error.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from eclip.catalog.text import basic_normalize

TABLE = "lexical"
COLUMNS = ("title", "brand", "category")
TOKENIZERS = ("bigram", "unicode61", "trigram")
DEFAULT_TOKENIZER = "bigram"
# bm25 weight of each column (title, brand, category); FTS5's default is 1 for every column
COLUMN_WEIGHTS = (1.0, 1.0, 1.0)
MAX_QUERY_TERMS = 64  # a 500-character query cannot become an expression of thousands of terms

_FTS_TOKENIZE = {"bigram": "porter unicode61 remove_diacritics 2",
                 "unicode61": "unicode61 remove_diacritics 2",
                 "trigram": "trigram"}
_WORD = re.compile(r"[^\W_]+")
# Hangul syllables and jamo, CJK ideographs, Hiragana, Katakana: scripts written without spaces
_CJK = re.compile("([\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff"
                  "\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uf900-\ufaff]+)")


_ascii = str.isascii


def normalize(text: str | None) -> str:
    """HTML entities and tags, NFKC, case folding and accents removed; "" for None."""
    if not text:
        return ""
    text = basic_normalize(text).casefold()
    if _ascii(text):  # no accents to remove: NFD and NFC leave ASCII as it is
        return text
    decomposed = unicodedata.normalize("NFD", text)
    # accents go (é -> e), Hangul stays composed (NFD would split syllables into jamo)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped)


def bigram_terms(text: str | None) -> list[str]:
    """``text`` as the ``bigram`` tokeniser's terms, in order (repeats kept)."""
    terms: list[str] = []
    for word in _WORD.findall(normalize(text)):
        for i, part in enumerate(_CJK.split(word)):
            if not part:
                continue
            if i % 2 == 0:  # not a CJK run
                terms.append(part)
            elif len(part) == 1:
                terms.append(part)
            else:
                terms.extend(part[j:j + 2] for j in range(len(part) - 1))
    return terms


def words(text: str | None) -> list[str]:
    """The words of ``text`` (letters and digits between spaces and punctuation), normalised."""
    return _WORD.findall(normalize(text))


def indexed_text(text: str | None, tokenizer: str) -> str:
    """What is stored in the FTS5 column for ``text``."""
    if tokenizer == "bigram":
        return " ".join(bigram_terms(text))
    return normalize(text)


def query_terms(query: str, tokenizer: str) -> list[str]:
    """The distinct terms of a query, in order. With ``trigram`` words shorter than three
    characters are dropped: FTS5's trigram index cannot look them up."""
    if tokenizer == "bigram":
        terms = bigram_terms(query)
    elif tokenizer == "trigram":
        terms = [w for w in words(query) if len(w) >= 3]
    else:
        terms = words(query)
    return list(dict.fromkeys(terms))[:MAX_QUERY_TERMS]


def match_expression(query: str, tokenizer: str = DEFAULT_TOKENIZER) -> str | None:
    """The FTS5 ``MATCH`` expression of a user's query (the OR of its terms, each quoted), or None
    when the query has no term that could match anything."""
    terms = query_terms(query, tokenizer)
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _check(tokenizer: str) -> None:
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown lexical tokenizer {tokenizer!r}; choose one of "
                         f"{', '.join(TOKENIZERS)}")


# ----------------------------------------------------------------------------- the FTS5 table
def has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone() \
        is not None


def create_table(conn: sqlite3.Connection, tokenizer: str) -> None:
    """The FTS5 table, rowid = the listing's vid. It keeps its own copy of the indexed text (a few
    hundred bytes a listing) so that rows can be deleted by vid alone."""
    _check(tokenizer)
    conn.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5({', '.join(COLUMNS)}, "
                 f"tokenize = '{_FTS_TOKENIZE[tokenizer]}')")


def write_rows(conn: sqlite3.Connection, rows: Iterable[tuple[int, str, str | None, str | None]],
               tokenizer: str, *, replace: bool = True) -> None:
    """Insert or replace ``(vid, title, brand, category)`` rows (``replace=False``: the vids are
    known not to be in the table, as in a store being filled for the first time). Brands and
    categories repeat across listings: each distinct one is normalised once."""
    repeated = lru_cache(maxsize=1 << 16)(lambda text: indexed_text(text, tokenizer))
    prepared = [(int(vid), indexed_text(title, tokenizer), repeated(brand), repeated(category))
                for vid, title, brand, category in rows]
    if replace:
        delete_rows(conn, [row[0] for row in prepared])
    conn.executemany(f"INSERT INTO {TABLE}(rowid, {', '.join(COLUMNS)}) VALUES (?, ?, ?, ?)",
                     prepared)


def delete_rows(conn: sqlite3.Connection, vids: Iterable[int]) -> None:
    conn.executemany(f"DELETE FROM {TABLE} WHERE rowid = ?", [(int(v),) for v in vids])


def search_sql(with_category: bool, *, with_catalog: bool = False,
               adult: bool | None = None) -> str:
    """The ranked lookup: vids and ``-bm25`` (higher is better), best first, ties by vid.

    The filters are SQL on the ``listings`` table, the same ones the vector stores apply
    (``stores.Where``): a category and those below it (three parameters: the category, the start
    and the end of the range of paths below it), one catalog id (one parameter), and the adult
    flag: ``True`` keeps only listings flagged adult, ``False`` every other one, those whose flag
    is unknown (NULL) included."""
    weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
    where = f"{TABLE} MATCH ?"
    if with_category:
        where += (" AND (listings.category = ? OR "
                  "(listings.category >= ? AND listings.category < ?))")
    if with_catalog:
        where += " AND listings.catalog_id = ?"
    if adult is not None:
        where += " AND listings.adult = 1" if adult else " AND listings.adult IS NOT 1"
    join = ""
    if with_category or with_catalog or adult is not None:
        join = f" JOIN listings ON listings.vid = {TABLE}.rowid"
    return (f"SELECT {TABLE}.rowid, -bm25({TABLE}, {weights}) AS score FROM {TABLE}{join} "
            f"WHERE {where} ORDER BY score DESC, {TABLE}.rowid LIMIT ?")
