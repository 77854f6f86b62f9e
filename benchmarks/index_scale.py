"""An index of synthetic marketplace listings at scale: build from stored vectors, recall, latency.

    nice -n 10 python benchmarks/index_scale.py --listings 1000000 --work /tmp/eclip_scale \
        --kind auto --max-memory 1.5GiB

Three phases, each in its own process (so that each peak RSS is its own):

1. ``generate``: listings clustered like catalogs (leaf categories, products with several sellers'
   listings under one catalog id, brands, titles of words tied to the category, about 2 % flagged
   adult), their image / text vectors at the demo model's dimension (256; the fused "both" vector
   512) written as ``eclip embed --engine ray`` writes them (Parquet parts + manifest, the model's
   identity recorded), the catalog as JSON lines, and a model of the demo's architecture (random
   weights: it only encodes queries). No model runs over the listings.
2. ``build``: ``search.build.index_from_embeddings`` (the library behind ``eclip index
   --embeddings``) from the parts and the catalog's listings, without thumbnails. Build time, peak
   RSS (sampled every 0.1 s and split into anonymous memory and the mapped file pages of the
   ``.npy`` files, which the kernel can drop; the anonymous memory before the build: the catalog's
   listings and the imports), the index's disk use.

``--embed-dtype float16 --no-embed-fused`` writes the stored vectors as half precision without
the fused column (a quarter of the Parquet); ``--vector-dtype``, ``--no-fused-vectors`` and
``--two-level-from`` set the build's ``VectorSettings`` (the index's own vector files, its
k-means). Each build step's wall and CPU seconds are in ``WORK/build.json``; ``--phase all``
prints each phase's wall and CPU time.

``--index PATH`` puts the index elsewhere than ``WORK/index`` (two builds of one generated
catalog, e.g. by two source trees on ``PYTHONPATH``; ``--phase build`` then ``--phase measure``).
3. ``measure``: recall@10 of the served index against exact search on 1,000 near-duplicate queries
   (the "both" space), and of raw FAISS (the generation's own ``product.faiss``, same parameters);
   then latency in process, alternating and repeated: raw FAISS (and for a re-ranked kind, FAISS
   finding the candidates eclip re-ranks), the vector store (ids and scores), and
   ``SearchIndex.search`` (plus the hits' metadata), at 1 and 16 concurrent clients. Those copies
   are then freed and ``eclip serve`` holds the index alone (a child process, as in service):
   ``GET /similar`` (the same vector search plus metadata and HTTP); then ``POST /search/text`` in vector, lexical and
   hybrid modes, with and without a category filter (these encode the query with the model).
   The server's peak RSS is read from /proc.

Results go to ``WORK/results.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

DIM = 256  # configs/demo.yaml model.embed_dim
PART_ROWS = 100_000
TOPS = ["Fashion", "Beauty", "Food", "Digital", "Home", "Sports", "Kids", "Books", "Pets", "Auto"]
SYLLABLES = ["ka", "ro", "mi", "ten", "sa", "lu", "ver", "no", "di", "pa", "zen", "qui", "mo",
             "rel", "fa", "to", "bi", "gan", "che", "so"]


def _word(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------- generate
def generate(work: Path, n: int, seed: int, dtype: str = "float32", fused: bool = True) -> dict:
    from eclip.encode import fuse
    from eclip.encode.identity import model_sha256
    from eclip.encode.listings import Embeddings, write_embeddings, write_embeddings_manifest

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    leaves = [f"{top} > {_word(rng)} > {_word(rng, 3)}" for top in TOPS for _ in range(50)]
    nouns = [[_word(rng, 3) for _ in range(4)] for _ in leaves]
    brands = [_word(rng, 2).capitalize() for _ in range(3000)]
    adjectives = [_word(rng, 2) for _ in range(200)]
    adult_leaves = set(rng.sample(range(len(leaves)), 5))
    # listings per product: 1 + geometric (mean 2.2): many single listings, some products sold
    # by several sellers, a few by many
    per_product = np_rng.geometric(0.45, n)
    product_of = np_rng.permutation(np.repeat(np.arange(n), per_product)[:n])
    n_products = int(product_of.max()) + 1 if n else 0
    product_leaf = np_rng.integers(0, len(leaves), n_products)
    leaf_centres = _unit(np_rng.standard_normal((len(leaves), DIM)))
    # a product 0.78 cosine from its leaf category's centre; a listing 0.94 from its product.
    # The centres are kept as float16, made a block of products at a time (10 M listings have
    # 4.5 M products: 2.3 GB so, 9 GB as the float64 of a single draw)
    product_centres = np.empty((n_products, DIM), np.float16)
    for at in range(0, n_products, PART_ROWS):
        leaf = product_leaf[at:at + PART_ROWS]
        noise = np_rng.standard_normal((len(leaf), DIM), dtype=np.float32)
        product_centres[at:at + PART_ROWS] = _unit(leaf_centres[leaf] + 0.8 * noise / np.sqrt(DIM))
    counts = np.bincount(product_of, minlength=n_products)
    # a product's title parts, drawn once per product (its listings share the title)
    product_brand = np_rng.integers(0, len(brands), n_products)
    product_adjective = np_rng.integers(0, len(adjectives), n_products)
    product_noun = np_rng.integers(0, 4, n_products)
    product_number = np_rng.integers(100, 999, n_products)
    is_adult_leaf = np.zeros(len(leaves), bool)
    is_adult_leaf[sorted(adult_leaves)] = True
    work.mkdir(parents=True, exist_ok=True)
    model_dir = _demo_model(work, leaves, nouns, brands)
    identity = model_sha256(model_dir)
    parts_dir = work / "embeddings"
    parts_dir.mkdir(exist_ok=True)
    parts = []
    with open(work / "catalog.jsonl", "w", encoding="utf-8") as catalog:
        for part, start in enumerate(range(0, n, PART_ROWS)):
            stop = min(n, start + PART_ROWS)
            products = product_of[start:stop]
            centres = product_centres[products].astype(np.float32)
            noise = 0.35 / np.sqrt(DIM)
            image = _unit(centres + noise * np_rng.standard_normal(centres.shape, np.float32))
            text = _unit(centres + noise * np_rng.standard_normal(centres.shape, np.float32))
            ids = [f"p{i:08d}" for i in range(start, stop)]
            # 10 % of the adult flags unknown; the rest: the leaf's, or 0.5 % of any leaf
            flag = np_rng.random(stop - start)
            leaf = product_leaf[products]
            adult = np.where(flag > 0.1, is_adult_leaf[leaf] | (flag < 0.105), -1)
            with_catalog = (counts[products] > 1) & (np_rng.random(stop - start) < 0.7)
            adult_json = {-1: "null", 0: "false", 1: "true"}
            catalog.write("".join(
                f'{{"product_id": "{ids[row]}", "title": "{brands[product_brand[p]]} '
                f'{adjectives[product_adjective[p]]} {nouns[lf][product_noun[p]]} '
                f'{product_number[p]}", "category": "{leaves[lf]}", "catalog_id": '
                f'{chr(34) + f"c{p:08d}" + chr(34) if c else "null"}, "adult": '
                f'{adult_json[a]}, "images": []}}\n'
                for row, (p, lf, a, c) in enumerate(zip(products.tolist(), leaf.tolist(),
                                                        adult.tolist(),
                                                        with_catalog.tolist()))))
            name = f"part-{part:05d}.parquet"
            write_embeddings(Embeddings(ids, image, text, fuse(image, text, 0.5) if fused
                                        else None, 0.5),
                             parts_dir / name, model_sha256=identity, dtype=dtype, fused=fused)
            parts.append((name, stop - start))
            print(f"  generated {stop:,} / {n:,}", flush=True)
    write_embeddings_manifest(parts_dir, parts, 0.5, model_sha256=identity)
    return {"listings": n, "products": int((counts > 0).sum()), "dim": DIM,
            "embeddings_dtype": dtype, "embeddings_fused": fused,
            "embeddings_gib": sum(p.stat().st_size for p in parts_dir.iterdir()) / 2**30,
            "multi_listing_products": int((counts > 1).sum())}


def _demo_model(work: Path, leaves, nouns, brands) -> Path:
    """The demo recipe's architecture (scratch BERT 256 x 2 layers, EfficientNet-Lite0, 256-d),
    random weights, a tokenizer trained on a sample of the vocabulary."""
    import yaml

    from eclip.catalog.schema import Listing
    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model

    out = work / "model"
    if (out / "model.safetensors").is_file():
        return out
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo.yaml").read_text())
    model_config = {**config["model"], "pretrained": False}
    rng = random.Random(0)
    sample = [Listing(f"s{i}", f"{rng.choice(brands)} {rng.choice(rng.choice(nouns))}", [],
                      category=rng.choice(leaves)) for i in range(20_000)]
    build_model(Recipe(model=model_config), sample).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------- build
class _PeakMemory:
    """The process's peak resident memory, sampled from /proc/self/status every 0.1 s, split
    into anonymous memory (what the process holds) and file pages it maps (memory-mapped
    ``.npy`` files: page cache the kernel can drop)."""

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(line.split()[1]))
            self._stop.wait(0.1)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {f"peak_{k.lower()}_gib": v / 2**20 for k, v in self.peak.items()}


def build(work: Path, kind: str, max_memory: str | None, index: Path, **storage) -> dict:
    from eclip.catalog.schema import Listing
    from eclip.search.build import index_from_embeddings
    from eclip.search.compressed import parse_bytes
    from eclip.search.vectors import VectorSettings

    started = time.perf_counter()
    listings = []
    with open(work / "catalog.jsonl", encoding="utf-8") as catalog:
        for line in catalog:
            r = json.loads(line)
            listings.append(Listing(r["product_id"], r["title"], [], catalog_id=r["catalog_id"],
                                    category=r["category"], adult=r["adult"]))
    read_s = time.perf_counter() - started
    settings = VectorSettings(kind=kind, max_memory=parse_bytes(max_memory) if max_memory
                              else None, **{k: v for k, v in storage.items() if v is not None})
    out = index
    at_start = {line.split(":")[0]: int(line.split()[1]) / 2**20
                for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(("RssAnon:", "RssFile:"))}
    memory = _PeakMemory()
    started, began_cpu = time.perf_counter(), time.process_time()
    result = index_from_embeddings(out, work / "embeddings", listings, model_dir=work / "model",
                                   settings=settings, thumbnails=False, progress=False)
    build_s = time.perf_counter() - started
    peaks = memory.stop()
    print(result.summary(), flush=True)
    generation = out / result.info.generation
    sizes = {p.name: p.stat().st_size for p in generation.iterdir() if p.is_file()}
    return {"catalog_read_s": read_s, "build_s": build_s, **peaks,
            "rssanon_before_build_gib": at_start.get("RssAnon"),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "disk_gib": sum(sizes.values()) / 2**30,
            "faiss_gib": sum(v for k, v in sizes.items() if k.endswith(".faiss")) / 2**30,
            "npy_gib": sum(v for k, v in sizes.items() if k.endswith(".npy")) / 2**30,
            "sqlite_gib": sizes.get("listings.sqlite", 0) / 2**30,
            "vectors": {m: s.describe() for m, s in result.info.vectors.items()},
            "seconds": getattr(result.info, "seconds", None),  # (older trees: none)
            "cpu_seconds": getattr(result.info, "cpu_seconds", None),
            "build_cpu_s": time.process_time() - began_cpu,
            "space_seconds": {m: getattr(s, "seconds", None)
                              for m, s in result.info.vectors.items()},
            "settings": result.info.settings.to_dict(),
            "kind": result.info.vectors["product"].kind}


# -------------------------------------------------------------------------------- measure
def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ms = np.asarray(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _timed(calls: list, clients: int) -> list[float]:
    """Each call's latency, ``clients`` at a time (threads; FAISS and SQLite release the GIL)."""
    def one(call):
        began = time.perf_counter()
        call()
        return time.perf_counter() - began

    if clients == 1:
        return [one(c) for c in calls]
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, calls))


def measure(work: Path, queries_n: int, rounds: int, requests: int, seed: int,
            index_dir: Path) -> dict:
    import faiss
    import httpx

    from eclip.search import SearchIndex
    from eclip.search.vectors import exact_top_scores, near_duplicate_queries, recall_by_ids
    from search_load import free_port, start_server, stop_server, wait_ready
    from search_overhead import search_paths

    faiss.omp_set_num_threads(1)  # as eclip serve: one thread per request
    index = SearchIndex.open(index_dir)
    vectors, vids = index.vectors["product"], index.vids
    stats = index.info.vectors["product"]
    results: dict = {"kind": stats.kind, "describe": stats.describe()}

    # recall@10 on the "both" space: the served index and raw FAISS of the same file
    queries = near_duplicate_queries(vectors, queries_n, seed + 1)
    truth = exact_top_scores(vectors, queries, 10)
    served = np.full((len(queries), 10), -1, np.int64)
    for i, q in enumerate(queries):
        found, _ = index.vector_store.search("product", q, 10, _everything())
        served[i, :len(found)] = found
    raw = faiss.read_index(str(index.generation_dir / "product.faiss"))
    raw_params = _raw_params(stats)
    _, raw_found = raw.search(queries, 10, params=raw_params)
    results["recall_at_10"] = recall_by_ids(truth, served, queries, vectors, vids)
    results["raw_faiss_recall_at_10"] = recall_by_ids(truth, raw_found, queries, vectors, vids)
    results["recall_queries"] = len(queries)

    # latency: listings without a catalog id, so that /similar is one vector search
    rng = random.Random(seed)
    lonely = [v for v in map(int, rng.sample(list(map(int, vids)), 5000))
              if index.store.fetch([v])[v].catalog_id is None][:requests]
    items = index.store.fetch(lonely)
    query_of = {v: np.asarray(vectors[int(np.searchsorted(vids, v))], np.float32)[None]
                for v in lonely}

    # in process first: raw FAISS, the vector store and SearchIndex.search, alternating
    # the vector store alone gives ids and scores, as raw FAISS does (re-ranked kinds re-ranked)
    paths = {name: (lambda v, call=call: (lambda: call(query_of[v][0], v)))
             for name, call in search_paths(index, "product", raw, raw_params).items()}
    vector_rows: dict = {}
    _alternate(paths, lonely, rounds, vector_rows)
    # then the server alone holds the index, as in service: the copies above are freed (at 10 M
    # they are 10 GiB, and the server's re-ranking reads its rows through the page cache)
    index.close()
    del index, raw, vectors, paths
    gc.collect()
    _give_back_memory()

    port = free_port()
    server = start_server(str(index_dir), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        local = threading.local()

        def http():
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=60)
            return local.client

        _alternate({"GET /similar": lambda v: (lambda: _ok(http().get(
            f"/similar/{items[v].product_id}", params={"k": 10})))}, lonely, rounds, vector_rows)
        results["vector_search"] = [
            {"path": name, "clients": clients,
             "p50_ms": float(np.median([p for p, _ in rows])),
             "p99_ms": float(np.median([q for _, q in rows])),
             "p50_spread": [min(p for p, _ in rows), max(p for p, _ in rows)]}
            for (name, clients), rows in vector_rows.items()]

        titles = [items[v].title for v in lonely]
        text_queries = [" ".join(t.split()[:2]) if i % 2 else t for i, t in enumerate(titles)]
        tops = [items[v].category.split(" > ")[0] for v in lonely]
        text_rows = []
        for mode in ("vector", "lexical", "hybrid"):
            for filtered in (False, True):
                for clients in (1, 16):
                    calls = [(lambda q=q, c=c: _ok(http().post("/search/text", json={
                        "query": q, "k": 10, "mode": mode, "against": "both",
                        **({"category": c} if filtered else {})})))
                        for q, c in zip(text_queries, tops)]
                    p50, p99 = _percentiles(_timed(calls, clients))
                    text_rows.append({"mode": mode, "category_filter": filtered,
                                      "clients": clients, "p50_ms": p50, "p99_ms": p99})
        results["text_search"] = text_rows
        results["server_peak_rss_gib"] = _peak_rss_gib(server.pid)
        results["server_rss_at_end_gib"] = _rss_split_gib(server.pid)
    finally:
        stop_server(server)
    return results


def _give_back_memory() -> None:
    """Return freed heap pages to the system (glibc keeps the FAISS lists' freed memory mapped
    otherwise: 10 GiB at 10 M listings, which the served index's page cache then lacks)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _alternate(paths: dict, listings: list[int], rounds: int, rows: dict) -> None:
    """Each path's (p50, p99) per round into ``rows[(name, clients)]``: at 1 and 16 clients,
    the paths alternating within each round."""
    for clients in (1, 16):
        for _ in range(rounds):
            for name, make in paths.items():
                latencies = _timed([make(v) for v in listings], clients)
                rows.setdefault((name, clients), []).append(_percentiles(latencies))


def _everything():
    from eclip.search.store_types import Where

    return Where()


def _ok(response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")


def _raw_params(stats):
    import faiss

    from eclip.search.compressed import search_params

    params, keep = search_params(stats.kind, stats.param or 1, None)
    _raw_params.keep = keep  # alive as long as the params
    return params if params is not None else faiss.SearchParameters()


def _peak_rss_gib(pid: int) -> float | None:
    """VmHWM of the server process (and its children)."""
    total = 0
    for p in [pid] + _children(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 2**20 if total else None


def _rss_split_gib(pid: int) -> dict:
    """The server's resident memory now: anonymous (the FAISS indexes, Python, the model) and
    file pages (memory-mapped SQLite and ``.npy`` rows it touched; the kernel can drop them)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                found[key] = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return found


def _children(pid: int) -> list[int]:
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in found] + [g for c in found for g in _children(int(c))]


# ------------------------------------------------------------------------------------ main
def table(r: dict) -> str:
    b, m = r["build"], r["measure"]
    lines = [f"listings: {r['generate']['listings']:,}, kind {b['kind']}: {m['describe']}", "",
             "| build s | catalog read s | build peak RSS GiB | disk GiB (npy / faiss / sqlite) "
             "| recall@10 served | recall@10 raw FAISS | serve peak RSS GiB |",
             "|---|---|---|---|---|---|---|",
             f"| {b['build_s']:.0f} | {b['catalog_read_s']:.0f} | {b['peak_rss_gib']:.2f} | "
             f"{b['disk_gib']:.2f} ({b['npy_gib']:.2f} / {b['faiss_gib']:.2f} / "
             f"{b['sqlite_gib']:.2f}) | {m['recall_at_10']:.3f} | "
             f"{m['raw_faiss_recall_at_10']:.3f} | "
             f"{m['server_peak_rss_gib'] or float('nan'):.2f} |",
             "", "| vector search path | clients | p50 ms (spread over rounds) | p99 ms |",
             "|---|---|---|---|"]
    lines += [f"| {x['path']} | {x['clients']} | {x['p50_ms']:.2f} ({x['p50_spread'][0]:.2f}–"
              f"{x['p50_spread'][1]:.2f}) | {x['p99_ms']:.2f} |" for x in m["vector_search"]]
    lines += ["", "| POST /search/text mode | category filter | clients | p50 ms | p99 ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {x['mode']} | {'yes' if x['category_filter'] else 'no'} | {x['clients']} | "
              f"{x['p50_ms']:.1f} | {x['p99_ms']:.1f} |" for x in m["text_search"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listings", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder")
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--max-memory", default=None, help="e.g. 1.5GiB (with --kind auto)")
    parser.add_argument("--queries", type=int, default=1000, help="recall queries")
    parser.add_argument("--requests", type=int, default=300, help="latency requests per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=Path, default=None, help="the index folder "
                        "(default WORK/index)")
    parser.add_argument("--embed-dtype", choices=["float32", "float16"], default="float32",
                        help="generate: the stored vectors' type (as eclip embed writes them)")
    parser.add_argument("--embed-fused", action=argparse.BooleanOptionalAction, default=True,
                        help="generate: store the fused vector too (default: %(default)s)")
    parser.add_argument("--vector-dtype", choices=["float32", "float16"], default=None,
                        help="build: the index's vector files (default: the library's)")
    parser.add_argument("--fused-vectors", action=argparse.BooleanOptionalAction, default=None,
                        help="build: store the fused vectors (default: the library's)")
    parser.add_argument("--two-level-from", type=int, default=None,
                        help="build: two-level k-means from this many lists on (default: the "
                             "library's)")
    parser.add_argument("--phase", choices=["all", "generate", "build", "measure"],
                        default="all")
    args = parser.parse_args()
    results_path = args.work / "results.json"
    index = args.index or args.work / "index"
    if args.phase != "all":
        args.work.mkdir(parents=True, exist_ok=True)
        if args.phase == "generate":
            found = generate(args.work, args.listings, args.seed, args.embed_dtype,
                             args.embed_fused)
        elif args.phase == "build":
            found = build(args.work, args.kind, args.max_memory, index,
                          vector_dtype=args.vector_dtype, store_fused=args.fused_vectors,
                          two_level_from=args.two_level_from)
        else:
            found = measure(args.work, args.queries, args.rounds, args.requests, args.seed, index)
        (args.work / f"{args.phase}.json").write_text(json.dumps(found, indent=2))
        return
    results = {"command": " ".join(sys.argv), "machine": f"{platform.processor() or 'cpu'}, "
               f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime())}
    for phase in ("generate", "build", "measure"):
        if phase == "generate" and (args.work / "generate.json").is_file():
            print("reusing the generated listings", flush=True)
        else:
            load = os.getloadavg()[0]
            began = time.perf_counter()
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, __file__] + sys.argv[1:] + ["--phase", phase],
                           check=True)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = time.perf_counter() - began
            cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
            print(f"{phase}: {wall:.0f} s, CPU {cpu:.0f} s (load {load:.1f} at start, "
                  f"{os.getloadavg()[0]:.1f} at the end)", flush=True)
            results[f"{phase}_load_average"] = [load, os.getloadavg()[0]]
            results[f"{phase}_wall_s"], results[f"{phase}_cpu_s"] = wall, cpu
            results[f"{phase}_utc"] = [time.strftime("%H:%M:%S", time.gmtime(time.time() - wall)),
                                       time.strftime("%H:%M:%S", time.gmtime())]
        results[phase] = json.loads((args.work / f"{phase}.json").read_text())
    results_path.write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
