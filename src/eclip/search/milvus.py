"""The Milvus vector store (``pymilvus``): Milvus Lite in a local file, or a Milvus server by URI.

One collection per index generation, ``<alias>_gNNNNNN``, holds every listing once: its ``vid``
(the primary key, the id the metadata uses), its ``image``, ``text`` and ``product`` vectors and the
filterable fields ``categories`` (the category and every category above it, so that a filter on
"Food" keeps "Food > Tea"), ``catalog`` (``catalog_group_id`` of the catalog id, -1 without one) and
``adult`` (1, 0, -1 unknown). Filters are Milvus expressions, evaluated by the database.

A write fills the new generation's collection completely (insert, flush, load, recall measured),
and only when the generation is in service is the alias moved to it (``alter_alias``): a client
that follows the alias never sees a half-built collection, and ``eclip serve`` reads the collection
its generation names, so its metadata and vectors always agree. The previous generation's
collection is kept one write longer (readers may still have it open), older ones are dropped.

The same code talks to both kinds of deployment: ``uri`` ending in ``.db`` is Milvus Lite (the
server runs in this process; one process at a time may open the file), ``http(s)://host:19530`` a
Milvus server or cluster (token from the environment variable ``ECLIP_MILVUS_TOKEN``, if set).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from eclip.catalog.schema import CATEGORY_SEP, catalog_group_id
from eclip.errors import ConfigError, SearchIndexError
from eclip.search.spaces import SPACES
from eclip.search.store_types import StoreSpec, Where, WriteJob
from eclip.search.compressed import (AUTO_ORDER, bytes_per_vector, choose_kinds,
                                     default_pq_m)
from eclip.search.vectors import (RECALL_K, IndexStats, VectorSettings, default_nlist,
                                  exact_top_scores, near_duplicate_queries, recall_by_ids)

LITE_FILE = "milvus.db"  # Milvus Lite's file in the index folder when no URI is given
TOKEN_ENV = "ECLIP_MILVUS_TOKEN"
INSERT_BATCH = 1000
MAX_LIMIT = 16_384  # Milvus' largest top-k
MAX_NPROBE = 65_536  # Milvus' largest nprobe
MAX_STRING = 65_535  # bytes of a VARCHAR
# eclip's index kinds as Milvus index types; Milvus Lite builds only some of them
INDEX_TYPES = {"exact": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW", "ivf_sq8": "IVF_SQ8",
               "ivf_pq": "IVF_PQ", "diskann": "DISKANN"}
LITE_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "IVF_SQ8")
_REMOTE = re.compile(r"^(https?|tcp|grpc)://", re.IGNORECASE)

_clients: dict[str, object] = {}
_clients_lock = threading.Lock()
_lite_paths: set[str] = set()


# ---------------------------------------------------------------------------------- clients
def is_lite(uri: str) -> bool:
    return not _REMOTE.match(uri)


def resolve_uri(uri: str | None, root: Path) -> str:
    """The URI to connect to: None is Milvus Lite's file in the index folder ``root``."""
    return str(Path(root).resolve() / LITE_FILE) if not uri else uri


def recorded_uri(uri: str | None) -> str | None:
    """The URI as ``info.json`` keeps it: None (the index folder's own file) stays None, so the
    folder can move; another local file is made absolute; a server URI is kept as given."""
    if not uri:
        return None
    if is_lite(uri):
        if not uri.endswith(".db"):
            raise ConfigError(f"--uri {uri!r}: a local Milvus Lite file must end in .db; a "
                              f"Milvus server is http://host:19530")
        return str(Path(uri).resolve())
    return uri


def connect(uri: str):
    """One client per URI per process (a Milvus Lite file is opened once and shared)."""
    with _clients_lock:
        client = _clients.get(uri)
        if client is not None:
            return client
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        # errors reach the user as ours, in one line
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
        if is_lite(uri) and os.path.abspath(uri) not in _lite_paths:
            _check_not_held(Path(uri))
        try:
            if is_lite(uri):
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                client = MilvusClient(uri=uri)
                _lite_paths.add(os.path.abspath(uri))
            else:
                token = os.environ.get(TOKEN_ENV, "")
                client = MilvusClient(uri=uri, token=token) if token else MilvusClient(uri=uri)
        except (MilvusException, OSError, RuntimeError, ValueError) as exc:
            where = "the Milvus Lite file" if is_lite(uri) else "the Milvus server"
            hint = (" (is another process, e.g. eclip serve, holding it? Milvus Lite opens a file "
                    "in one process at a time: stop it, or use a Milvus server)"
                    if is_lite(uri) else "")
            raise SearchIndexError(f"cannot open {where} {uri}: {_reason(exc)}{hint}") from None
        _clients[uri] = client
        return client


def _check_not_held(path: Path) -> None:
    """Milvus Lite holds an advisory lock on ``FILE.db/LOCK`` while a process has it open."""
    lock = path / "LOCK"
    if not lock.is_file():
        return
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SearchIndexError(
                f"the Milvus Lite file {path} is open in another process (eclip serve?); Milvus "
                f"Lite opens a file in one process at a time: stop that process, or keep the "
                f"vectors on a Milvus server (eclip index --store milvus --uri "
                f"http://HOST:19530)") from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def release(uri: str) -> None:
    """Close this process's client of ``uri`` (and stop its Milvus Lite server, letting another
    process open the file). Indexes opened on it must not be searched afterwards."""
    with _clients_lock:
        client = _clients.pop(uri, None)
        lite = os.path.abspath(uri) in _lite_paths
        _lite_paths.discard(os.path.abspath(uri))
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    if lite:
        from milvus_lite import server_manager_instance

        server_manager_instance.release_server(os.path.abspath(uri))


def close_all() -> None:
    """Close every client and stop the Milvus Lite servers this process started (also done at
    exit by milvus-lite itself)."""
    with _clients_lock:
        clients, paths = list(_clients.values()), sorted(_lite_paths)
        _clients.clear()
        _lite_paths.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    if paths:
        from milvus_lite import server_manager_instance

        for path in paths:
            server_manager_instance.release_server(path)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:300]


def default_alias(root: Path) -> str:
    """``eclip_`` and a digest of the index folder's absolute path: two indexes never share one."""
    return "eclip_" + hashlib.sha1(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:12]


def quote(value: str) -> str:
    """A Milvus expression string literal."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


def expression(where: Where) -> str:
    """``where`` as a Milvus filter expression ("" keeps everything)."""
    parts = []
    if where.category is not None:
        parts.append(f"array_contains(categories, {quote(where.category)})")
    if where.catalog_id is not None:
        parts.append(f"catalog == {catalog_group_id(where.catalog_id)}")
    if where.adult is not None:
        parts.append("adult == 1" if where.adult else "adult != 1")
    if where.exclude:
        parts.append(f"vid not in [{', '.join(str(int(v)) for v in sorted(where.exclude))}]")
    return " and ".join(parts)


def category_path(category: str | None) -> list[str]:
    """The category and every category above it: "A > B > C" -> ["A", "A > B", "A > B > C"]."""
    if not category:
        return []
    found, start = [], 0
    while (at := category.find(CATEGORY_SEP, start)) >= 0:
        found.append(category[:at])
        start = at + len(CATEGORY_SEP)
    return found + [category]


def milvus_kinds(settings: VectorSettings, n: int, dims: list[int], lite: bool
                 ) -> tuple[str, ...]:
    """The index kind of each space's field in a collection of ``n`` vectors, kinds Milvus can
    build: ``auto`` under a memory budget chooses per space among those (``choose_kinds``; no
    IVF of fp16 vectors, and under Milvus Lite only what Lite builds); a kind Milvus (or Milvus
    Lite) cannot build is a ConfigError saying which can."""
    if settings.kind == "auto" and settings.max_memory is not None:
        buildable = [k for k in AUTO_ORDER
                     if k in INDEX_TYPES and (not lite or INDEX_TYPES[k] in LITE_TYPES)]
        kinds = choose_kinds(n, dims, settings.max_memory, exact_max=settings.exact_max,
                             pq_m=settings.pq_m, kinds=buildable)
    else:
        kinds = settings.resolve_kinds(n, dims)
    for kind in dict.fromkeys(kinds):
        if kind not in INDEX_TYPES:
            raise ConfigError(f"--kind {kind} has no Milvus index type; with --store milvus "
                              f"choose one of {', '.join(INDEX_TYPES)}")
        if lite and INDEX_TYPES[kind] not in LITE_TYPES:
            usable = [k for k, t in INDEX_TYPES.items() if t in LITE_TYPES]
            raise ConfigError(f"Milvus Lite cannot build {INDEX_TYPES[kind]} (--kind {kind}); it "
                              f"builds {', '.join(usable)}: use one of those, or a Milvus server "
                              f"(--uri http://HOST:19530) that offers {INDEX_TYPES[kind]}")
        if kind in ("ivf", "ivf_sq8", "ivf_pq") and n == 0:
            raise ConfigError(f"a {kind} index needs vectors to train on; use kind 'exact' or "
                              f"'auto'")
    return kinds


def _index_params(kind: str, settings: VectorSettings, nlist: int, dim: int) -> dict:
    if kind in ("ivf", "ivf_sq8"):
        return {"nlist": int(nlist)}
    if kind == "ivf_pq":
        return {"nlist": int(nlist), "m": int(settings.pq_m or default_pq_m(dim)),
                "nbits": int(settings.pq_bits)}
    if kind == "hnsw":
        return {"M": int(settings.hnsw_m), "efConstruction": 200}
    return {}


def _search_params(stats: IndexStats, param: int | None = None) -> dict:
    """Milvus search parameters of a kind: nprobe (IVF kinds), ef (HNSW), search_list (DiskANN)."""
    name = {"ivf": "nprobe", "ivf_sq8": "nprobe", "ivf_pq": "nprobe", "hnsw": "ef",
            "diskann": "search_list"}.get(stats.kind)
    if name is None:
        return {"metric_type": "IP"}
    value = param or stats.param or (1 if name == "nprobe" else 2 * RECALL_K)
    return {"metric_type": "IP", "params": {name: int(value)}}


def _results(answer, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Milvus search results as ``(scores, ids)`` [n, k], missing ones -1 (like FAISS)."""
    scores = np.full((len(answer), k), -np.inf, dtype=np.float32)
    ids = np.full((len(answer), k), -1, dtype=np.int64)
    for row, hits in enumerate(answer):
        for col, hit in enumerate(list(hits)[:k]):
            ids[row, col], scores[row, col] = int(hit.id), float(hit["distance"])
    return scores, ids


def load_collection(uri: str, client, name: str, *, timeout: float = 60.0) -> None:
    """Load ``name``; while Milvus Lite is still writing a segment's index file in the background
    (it reads a file half written), wait and load again."""
    from pymilvus.exceptions import MilvusException

    deadline = time.monotonic() + timeout
    while True:
        try:
            client.load_collection(name)
            return
        except MilvusException as exc:
            if "not fully written" not in str(exc) or time.monotonic() > deadline:
                raise SearchIndexError(f"Milvus ({uri}) could not load {name}: "
                                       f"{_reason(exc)}") from None
            time.sleep(0.25)


# ----------------------------------------------------------------------------------- writer
def _milvus_call(uri: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, a client call; Milvus's own error becomes a one-line
    :class:`SearchIndexError` saying which server could not do ``what`` and why."""
    from pymilvus.exceptions import MilvusException

    try:
        return fn(*args, **kwargs)
    except MilvusException as exc:
        raise SearchIndexError(f"Milvus ({uri}) could not {what}: {_reason(exc)}") from None


class MilvusWriter:
    """Fills one collection per generation; ``publish`` moves the alias to it."""

    def __init__(self, spec: StoreSpec, root: Path):
        self.root = Path(root)
        self.uri = recorded_uri(spec.uri)
        self.alias = spec.collection or default_alias(self.root)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = connect(resolve_uri(self.uri, self.root))
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        return _milvus_call(resolve_uri(self.uri, self.root), what, fn, *args, **kwargs)

    def write(self, job: WriteJob) -> tuple[dict[str, IndexStats], dict | None]:
        from pymilvus import DataType, MilvusClient

        name = f"{self.alias}_{job.generation}"
        client = self.client
        target = self._alias_target()
        if target is not None and not self._ours(target):
            raise SearchIndexError(
                f"the Milvus alias {self.alias} names {target}, a collection this index folder "
                f"did not write (another index, or one whose folder was removed, uses the name): "
                f"choose another --collection, or drop that alias and its collections in Milvus")
        if client.has_collection(name):  # left by a writer that was killed before its pointer
            self._call(f"drop the stale collection {name}", client.drop_collection, name)
        n = len(job.vids)
        vectors = {s: job.vectors(s) for s in SPACES}
        scalars = job.scalars()
        paths = [category_path(c) for c in scalars.categories]
        longest = max((len(p.encode("utf-8")) for path in paths for p in path), default=1)
        if longest > MAX_STRING:
            raise SearchIndexError(f"a category is {longest} bytes long; Milvus holds at most "
                                   f"{MAX_STRING}")
        kinds = dict(zip(SPACES, milvus_kinds(job.settings, n,
                                              [int(vectors[s].shape[1]) for s in SPACES],
                                              is_lite(resolve_uri(self.uri, self.root)))))
        nlist = min(job.settings.nlist or default_nlist(n), max(n, 1))

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("vid", DataType.INT64, is_primary=True)
        for space in SPACES:
            schema.add_field(space, DataType.FLOAT_VECTOR, dim=int(vectors[space].shape[1]))
        schema.add_field("categories", DataType.ARRAY, element_type=DataType.VARCHAR,
                         max_capacity=max(1, max((len(p) for p in paths), default=1)),
                         max_length=max(1, longest))
        schema.add_field("catalog", DataType.INT64)
        schema.add_field("adult", DataType.INT8)
        params = client.prepare_index_params()
        for space in SPACES:
            params.add_index(field_name=space, index_type=INDEX_TYPES[kinds[space]],
                             metric_type="IP",
                             params=_index_params(kinds[space], job.settings, nlist,
                                                  int(vectors[space].shape[1])))
        self._call(f"create the collection {name}", client.create_collection, name,
                   schema=schema)
        entry = {"kind": "milvus", "uri": self.uri, "alias": self.alias, "collection": name}
        try:
            # Milvus Lite builds the index when the data is flushed; a server builds it in the
            # background, and we wait for it
            self._call(f"index {name}", client.create_index, name, params,
                       sync=not is_lite(resolve_uri(self.uri, self.root)))
            return self._fill(job, name, entry, vectors, scalars, paths, kinds, nlist)
        except BaseException:
            self.discard(entry)  # a half-filled collection is never left behind
            raise

    def _fill(self, job: WriteJob, name: str, entry: dict, vectors: dict, scalars, paths: list,
              kinds: dict[str, str], nlist: int
              ) -> tuple[dict[str, IndexStats], dict | None]:
        client, n = self.client, len(job.vids)
        groups = [catalog_group_id(c) for c in scalars.catalog_ids]
        steps = range(0, n, INSERT_BATCH)
        for start in tqdm(steps, desc="filling Milvus", disable=not job.progress, unit="batch"):
            stop = min(n, start + INSERT_BATCH)
            block = {s: np.asarray(vectors[s][start:stop], dtype=np.float32) for s in SPACES}
            rows = [{"vid": int(job.vids[i]), **{s: block[s][i - start] for s in SPACES},
                     "categories": paths[i], "catalog": groups[i],
                     "adult": int(scalars.adult[i])} for i in range(start, stop)]
            self._call(f"insert into {name}", client.insert, name, rows)
        self._call(f"flush {name}", client.flush, name)
        uri = resolve_uri(self.uri, self.root)
        load_collection(uri, client, name)
        self._wait_indexed(name, n)
        # loaded again, so that what is searched from here on (the recall check below, then the
        # service) is the built index; Milvus Lite may still hold the flushed rows unindexed
        self._call(f"release {name}", client.release_collection, name)
        load_collection(uri, client, name)
        stored = int(client.get_collection_stats(name).get("row_count", -1))
        if stored != n:
            raise SearchIndexError(f"Milvus collection {name} holds {stored} rows after the "
                                   f"write, the generation {n}")
        stats = {}
        for space in SPACES:
            kind = kinds[space]
            ivf = kind.startswith("ivf")
            stats[space] = IndexStats(kind, n) if kind == "exact" else IndexStats(
                kind, n, nlist=int(nlist) if ivf else None, quantizer="flat" if ivf else None,
                trained_on=n, bytes_per_vector=None if kind == "diskann" else bytes_per_vector(
                    kind, int(vectors[space].shape[1]), pq_m=job.settings.pq_m,
                    hnsw_m=job.settings.hnsw_m))
            self._tune(name, space, stats[space], vectors[space], job)
        return stats, entry

    def _wait_indexed(self, name: str, n: int, timeout: float = 3600.0) -> None:
        """Until every space's index covers the ``n`` rows: Milvus Lite builds its segment indexes
        in the background after a flush, and a search before that scans the rows exactly (a recall
        tuned then would not be the served index's)."""
        deadline = time.monotonic() + timeout
        for space in SPACES:
            while True:
                found = self._call(f"describe the index of {name}", self.client.describe_index,
                                   name, space) or {}
                if "indexed_rows" not in found or (int(found["indexed_rows"]) >= n and
                                                   found.get("state", "Finished") == "Finished"):
                    break
                if time.monotonic() > deadline:
                    raise SearchIndexError(f"Milvus did not finish indexing {name}.{space} in "
                                           f"{timeout:.0f} s ({found.get('indexed_rows')} of {n} "
                                           f"rows)")
                time.sleep(0.1)

    def _tune(self, name: str, space: str, stats: IndexStats, vectors: np.ndarray,
              job: WriteJob) -> None:
        """The smallest power-of-two search parameter (nprobe from 1; HNSW's ef and DiskANN's
        search_list from 16) whose recall@10 against exact search, counted by the exact scores of
        the ids found, reaches the target on sampled near-duplicate queries (as
        ``vectors.VectorIndex.tune``)."""
        if stats.kind == "exact" or stats.count == 0:
            return
        settings = job.settings
        queries = near_duplicate_queries(vectors, settings.recall_queries, settings.seed)
        truth = exact_top_scores(vectors, queries, RECALL_K)
        k = truth.shape[1]
        # the server may hold more lists than asked for (Milvus Lite clusters each segment
        # itself): past ``nlist``, nprobe keeps doubling while the recall still improves
        param, top = (1, MAX_NPROBE) if stats.nlist else (16, 4096)
        previous = -1.0
        while True:
            answer = self._call(f"search {name}", self.client.search, name,
                                data=[q for q in queries], anns_field=space, limit=k,
                                output_fields=["vid"],
                                search_params=_search_params(stats, param))
            _, found = _results(answer, k)
            recall = recall_by_ids(truth, found, queries, vectors, job.vids)
            stalled = stats.nlist and param >= stats.nlist and recall <= previous
            if recall >= settings.target_recall or param >= top or stalled:
                break
            param, previous = min(param * 2, top), recall
        if stats.nlist:
            stats.nprobe = param
        else:
            stats.ef_search = param
        stats.recall_at_10, stats.recall_queries = recall, len(queries)

    def _alias_target(self) -> str | None:
        aliases = self._call("list aliases", self.client.list_aliases).get("aliases", [])
        if self.alias not in aliases:
            return None
        return self._call(f"describe the alias {self.alias}", self.client.describe_alias,
                          self.alias).get("collection_name")

    def _ours(self, collection: str) -> bool:
        """Whether a generation of this index folder names ``collection``."""
        for info in self.root.glob("g[0-9]*/info.json"):
            try:
                entry = json.loads(info.read_text("utf-8")).get("store") or {}
            except (OSError, ValueError):
                continue
            if entry.get("collection") == collection:
                return True
        return False

    def publish(self, entry: dict | None) -> None:
        client = self.client
        if self._alias_target() is not None:
            self._call(f"move the alias {self.alias}", client.alter_alias, entry["collection"],
                       self.alias)
        else:
            self._call(f"create the alias {self.alias}", client.create_alias,
                       entry["collection"], self.alias)

    def discard(self, entry: dict | None) -> None:
        if entry and self.client.has_collection(entry["collection"]):
            self.client.drop_collection(entry["collection"])

    def collect(self, keep: list[dict | None]) -> None:
        """Drop this index's generation collections that no kept generation names."""
        kept = {e.get("collection") for e in keep if e} | {self._alias_target()}
        pattern = re.compile(rf"^{re.escape(self.alias)}_g\d{{6}}$")
        for name in self._call("list collections", self.client.list_collections):
            if pattern.match(name) and name not in kept:
                self._call(f"drop {name}", self.client.drop_collection, name)


# ----------------------------------------------------------------------------------- reader
class MilvusStore:
    """The read side: the collection a generation names, searched with filter expressions."""

    kind = "milvus"

    def __init__(self, entry: dict, root: Path, stats: dict[str, IndexStats]):
        self.uri = resolve_uri(entry.get("uri"), root)
        self.collection = entry["collection"]
        self.stats = stats
        self.client = connect(self.uri)
        if not self.client.has_collection(self.collection):
            raise SearchIndexError(f"Milvus ({self.uri}) has no collection {self.collection}: "
                                   f"the index generation names it; rebuild the index with "
                                   f"`eclip index --store milvus`")
        load_collection(self.uri, self.client, self.collection)

    def _call(self, what: str, fn, *args, **kwargs):
        return _milvus_call(self.uri, f"{what} the collection {self.collection}", fn, *args,
                            **kwargs)

    def count(self) -> int:
        return int(self._call("count", self.client.get_collection_stats,
                              self.collection).get("row_count", -1))

    def search(self, space: str, query: np.ndarray, k: int, where: Where
               ) -> tuple[np.ndarray, np.ndarray]:
        limit = max(1, min(int(k), MAX_LIMIT))
        answer = self._call("search", self.client.search, self.collection,
                            data=[np.asarray(query, dtype=np.float32).reshape(-1)],
                            anns_field=space, limit=limit, filter=expression(where),
                            output_fields=["vid"], search_params=_search_params(self.stats[space]))
        scores, ids = _results(answer, limit)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def close(self) -> None:
        pass  # the client is shared by the generations of this process (close_all at the end)
