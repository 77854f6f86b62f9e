"""Listing metadata in SQLite: one row per indexed listing under a stable integer id (``vid``).

The vid is the FAISS id of the listing's vectors. A listing keeps its vid when it is updated; new
listings get ids above every id ever given out (``meta.next_vid``), so an id is never reused.

The same file holds the lexical index (``lexical.py``): an FTS5 table of every listing's title,
brand and category under its vid, written in the same transaction as the listing's row by
``upsert`` and ``delete``, so that it never disagrees with the metadata. Its tokeniser is recorded
in ``meta.lexical_tokenizer``. A store written before the lexical index existed gets one, filled
from its rows, when it is copied into a new generation (any ``eclip index --update``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from eclip.catalog.schema import CATEGORY_SEP, Listing
import eclip.search.lexical as lexical

SCHEMA = """
CREATE TABLE listings (
    vid INTEGER PRIMARY KEY,
    product_id TEXT NOT NULL UNIQUE,
    catalog_id TEXT,
    title TEXT NOT NULL,
    brand TEXT,
    category TEXT,
    attributes TEXT NOT NULL,
    adult INTEGER,
    lang TEXT,
    split TEXT,
    images TEXT NOT NULL
);
CREATE INDEX listings_catalog ON listings(catalog_id);
CREATE INDEX listings_category ON listings(category);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = ("vid", "product_id", "catalog_id", "title", "brand", "category", "attributes", "adult",
            "lang", "split", "images")

UPSERT_BLOCK = 50_000  # listings written per executemany
BULK_CACHE_KIB = 256 * 1024  # SQLite's page cache while a generation's store is written
MMAP_BYTES = 1 << 36  # a read-only store is memory-mapped whole (up to SQLite's own limit)


@dataclass(frozen=True)
class StoredListing:
    """A listing as the index holds it; ``images`` are thumbnail names under the index's images/."""

    vid: int
    product_id: str
    title: str
    catalog_id: str | None
    brand: str | None
    category: str | None
    attributes: dict[str, str]
    adult: bool | None
    lang: str | None
    split: str | None
    images: tuple[str, ...]

    @classmethod
    def _from_row(cls, row: tuple) -> StoredListing:
        """A row of ``_COLUMNS``; the JSON of the common empty attributes / photos is not parsed
        (a search decodes every hit: this is most of what fetching 10 of them costs)."""
        vid, product_id, catalog_id, title, brand, category, attributes, adult, lang, split, \
            images = row
        # filled without the frozen dataclass's __init__ (a setattr per field, through object):
        # the same object, in a third of the time
        listing = object.__new__(cls)
        listing.__dict__.update(
            vid=vid, product_id=product_id, title=title, catalog_id=catalog_id, brand=brand,
            category=category, attributes=json.loads(attributes) if attributes != "{}" else {},
            adult=None if adult is None else bool(adult), lang=lang, split=split,
            images=tuple(json.loads(images)) if images != "[]" else ())
        return listing


class MetadataStore:
    """One SQLite file. Writers use it from one thread; readers share one read-only connection."""

    def __init__(self, path: str | Path, *, readonly: bool = True):
        self.path = Path(path)
        if readonly:
            # A generation's files never change once committed: immutable skips file locking.
            uri = f"file:{self.path.as_posix()}?mode=ro&immutable=1"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            # pages read from the mapped file, not copied in by a read() each: a third off the
            # query of a search's hits (SQLite caps the size at its compiled maximum)
            self._conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        else:
            self._conn = sqlite3.connect(self.path)
        self._lock = threading.Lock()
        self._new = False
        self._lexical: str | None = None
        if lexical.has_table(self._conn):
            rows = self._conn.execute("SELECT value FROM meta WHERE key = 'lexical_tokenizer'"
                                      ).fetchall()
            self._lexical = rows[0][0] if rows else lexical.DEFAULT_TOKENIZER

    def _bulk(self) -> None:
        """Settings for a store written from scratch into a generation being assembled: no
        rollback journal and no sync at each commit (a write that fails discards the whole
        folder, and the finished generation is synced before it is put in service), and a page
        cache large enough for the indexes of millions of rows."""
        self._conn.execute("PRAGMA journal_mode = OFF")
        self._conn.execute("PRAGMA synchronous = OFF")
        self._conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")

    @classmethod
    def create(cls, path: str | Path, *,
               lexical_tokenizer: str = lexical.DEFAULT_TOKENIZER,
               bulk: bool = False) -> MetadataStore:
        """A new store; ``bulk``: written inside a generation being assembled (``_bulk``)."""
        store = cls(path, readonly=False)
        if bulk:
            store._bulk()
        store._new = True  # every vid upserted into it is a new row
        store._conn.executescript(SCHEMA)
        store.set_meta("next_vid", "0")
        store._add_lexical(lexical_tokenizer)
        store._conn.commit()
        return store

    def _add_lexical(self, tokenizer: str) -> None:
        """The lexical index, filled from the rows already here (none in a new store)."""
        lexical.create_table(self._conn, tokenizer)
        self.set_meta("lexical_tokenizer", tokenizer)
        self._lexical = tokenizer
        rows = self._conn.execute("SELECT vid, title, brand, category FROM listings").fetchall()
        lexical.write_rows(self._conn, rows, tokenizer)

    @classmethod
    def copy(cls, source: str | Path, target: str | Path, *, bulk: bool = False
             ) -> MetadataStore:
        """A writable copy of ``source`` at ``target`` (SQLite's online backup API); ``bulk``:
        as for ``create``."""
        src = sqlite3.connect(f"file:{Path(source).as_posix()}?mode=ro", uri=True)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        store = cls(target, readonly=False)
        if bulk:
            store._bulk()
        if store.lexical_tokenizer is None:  # written by an eclip without the lexical index
            store._add_lexical(lexical.DEFAULT_TOKENIZER)
            store.commit()
        return store

    def close(self) -> None:
        self._conn.close()

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    # ----------------------------------------------------------------------------- writing
    def set_meta(self, key: str, value: str) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def assign_vids(self, product_ids: list[str]) -> np.ndarray:
        """Existing listings keep their vid; new ones get fresh ids (recorded in ``next_vid``)."""
        known = self.vids_of(product_ids)
        next_vid = int(self.meta("next_vid") or 0)
        vids = []
        for pid in product_ids:
            if pid not in known:
                known[pid] = next_vid
                next_vid += 1
            vids.append(known[pid])
        self.set_meta("next_vid", str(next_vid))
        return np.asarray(vids, dtype=np.int64)

    def upsert(self, vids: np.ndarray, listings: list[Listing], images: list[list[str]]) -> None:
        # the first rows of a new store, each vid once: nothing in the lexical index to replace
        fresh = self._new and len(np.unique(np.asarray(vids))) == len(vids)
        self._new = False
        for start in range(0, len(listings), UPSERT_BLOCK):  # rows built a block at a time
            stop = start + UPSERT_BLOCK
            rows = [(int(vid), x.product_id, x.catalog_id, x.title, x.brand, x.category,
                     json.dumps(x.attributes, ensure_ascii=False) if x.attributes else "{}",
                     None if x.adult is None else int(bool(x.adult)), x.lang, x.split,
                     json.dumps(names, ensure_ascii=False) if names else "[]")
                    for vid, x, names in zip(vids[start:stop], listings[start:stop],
                                             images[start:stop])]
            self._conn.executemany(
                f"INSERT OR REPLACE INTO listings({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
            if self._lexical is not None:
                lexical.write_rows(self._conn, [(row[0], row[3], row[4], row[5]) for row in rows],
                                   self._lexical, replace=not fresh)

    def delete(self, vids: np.ndarray) -> None:
        self._new = False
        self._conn.executemany("DELETE FROM listings WHERE vid = ?", [(int(v),) for v in vids])
        if self._lexical is not None:
            lexical.delete_rows(self._conn, vids)

    def commit(self) -> None:
        self._conn.commit()

    # ----------------------------------------------------------------------------- reading
    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM listings")[0][0])

    @property
    def lexical_tokenizer(self) -> str | None:
        """The lexical index's tokeniser, or None for a store written before it existed."""
        return self._lexical

    def lexical_search(self, query: str, limit: int, *, category: str | None = None,
                       catalog_id: str | None = None, adult: bool | None = None
                       ) -> list[tuple[int, float]]:
        """``(vid, score)`` of the ``limit`` listings whose title, brand or category best match
        the words of ``query`` (score: ``-bm25``, higher is better), optionally only in
        ``category`` and below it, only of the catalog ``catalog_id``, and by the adult flag
        (``True``: only listings flagged adult; ``False``: all others, unknown flags included),
        filtered in SQL like the vector stores' ``Where``. A query with no usable term matches
        nothing."""
        if self._lexical is None:
            raise LookupError(f"{self.path} has no lexical index")
        expression = lexical.match_expression(query, self._lexical)
        if expression is None or limit < 1:
            return []
        params: list = [expression]
        if category is not None:
            below = category + CATEGORY_SEP
            params += [category, below, below[:-1] + "!"]
        if catalog_id is not None:
            params.append(catalog_id)
        sql = lexical.search_sql(category is not None, with_catalog=catalog_id is not None,
                                 adult=None if adult is None else bool(adult))
        rows = self._query(sql, [*params, int(limit)])
        return [(int(vid), float(score)) for vid, score in rows]

    def vids_of(self, product_ids: list[str]) -> dict[str, int]:
        """product_id -> vid for the ids that are in the store."""
        found: dict[str, int] = {}
        for start in range(0, len(product_ids), 500):
            chunk = product_ids[start:start + 500]
            rows = self._query(f"SELECT product_id, vid FROM listings WHERE product_id IN "
                               f"({', '.join('?' * len(chunk))})", chunk)
            found.update((pid, int(vid)) for pid, vid in rows)
        return found

    def by_product_id(self, product_id: str) -> StoredListing | None:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM listings WHERE product_id = ?",
                           (product_id,))
        return StoredListing._from_row(rows[0]) if rows else None

    def fetch(self, vids: Iterable[int]) -> dict[int, StoredListing]:
        vids = [int(v) for v in vids]
        found: dict[int, StoredListing] = {}
        for start in range(0, len(vids), 500):
            chunk = vids[start:start + 500]
            rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM listings WHERE vid IN "
                               f"({', '.join('?' * len(chunk))})", chunk)
            found.update((row[0], StoredListing._from_row(row)) for row in rows)
        return found

    def catalog_members(self, catalog_id: str) -> list[int]:
        return [row[0] for row in self._query(
            "SELECT vid FROM listings WHERE catalog_id = ? ORDER BY vid", (catalog_id,))]

    def category_vids(self, category: str) -> np.ndarray:
        """Vids of listings in ``category`` or below it ("Food" holds "Food > Tea")."""
        # Every path below ``category`` sorts in [category + " > ", category + " >!"): a range scan
        # of the category index (" > " ends in a space, and "!" is the character after it).
        below = category + CATEGORY_SEP
        rows = self._query("SELECT vid FROM listings WHERE category = ? OR "
                           "(category >= ? AND category < ?)",
                           (category, below, below[:-1] + "!"))
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    def categories(self) -> list[tuple[str, int]]:
        return [(row[0], int(row[1])) for row in self._query(
            "SELECT category, COUNT(*) FROM listings WHERE category IS NOT NULL "
            "GROUP BY category ORDER BY category")]

    def adult_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vids, labels)`` of the listings whose adult flag is known."""
        rows = self._query("SELECT vid, adult FROM listings WHERE adult IS NOT NULL ORDER BY vid")
        return (np.asarray([r[0] for r in rows], dtype=np.int64),
                np.asarray([r[1] for r in rows], dtype=np.int64))

    def image_names(self) -> set[str]:
        names: set[str] = set()
        for (value,) in self._query("SELECT images FROM listings"):
            names.update(json.loads(value))
        return names
