"""The same answers from both vector stores: ``eclip index --store faiss|milvus`` + ``eclip serve``.

    eclip demo --out demo_out
    python benchmarks/store_parity.py --model demo_out/models/eclip \\
        --catalog demo_out/catalog/listings.jsonl --out /tmp/store_parity

Builds two indexes of the whole catalog with the command line (``eclip index``, FAISS files and
Milvus Lite, exact search), serves each with ``eclip serve`` in its own process and queries both
over HTTP with the held-out (``--split``) listings' titles and photos (``recall_through_api``:
R@10, the query listing left out). Then it sends every title to both servers and counts the
queries whose top-10 product ids are identical.

Latency (p50 per request, the query's encoding included) is measured in ``--rounds`` rounds that
alternate which store goes first; the load average of the shared machine is printed with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from eclip.catalog.readers import read_catalog
from eclip.search.evaluate import TABLE_HEAD, recall_through_api

STORES = ("faiss", "milvus")
MODES = (("text", "text"), ("image", "image"), ("text", "both"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def build(store: str, args) -> float:
    out = Path(args.out) / store
    if (out / "CURRENT").exists() and args.reuse:
        return float("nan")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "eclip", "index", "--store", store, "--model",
                    args.model, "--catalog", args.catalog, "--out", str(out), "--kind", "exact",
                    "--quiet"], check=True)
    return time.perf_counter() - start


@contextmanager
def serve(store: str, args):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "eclip", "serve", "--index",
                                str(Path(args.out) / store), "--port", str(port), "--quiet"],
                               stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"eclip serve ({store}) did not start")
                time.sleep(0.5)
            yield client
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--out", required=True, help="work folder: OUT/faiss, OUT/milvus")
    parser.add_argument("--split", default="test")
    parser.add_argument("--rounds", type=int, default=2,
                        help="R@10 rounds per store (0: only the top-10 comparison)")
    parser.add_argument("--reuse", action="store_true", help="keep indexes already built")
    args = parser.parse_args()

    listings = read_catalog(args.catalog, check_images=False).listings
    queries = [x for x in listings if x.split == args.split]
    print(f"# store parity: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {len(listings)} listings, "
          f"{len(queries)} '{args.split}' queries; {_load()}")
    for store in STORES:
        seconds = build(store, args)
        print(f"eclip index --store {store}: {seconds:.0f} s (embedding included); {_load()}")

    reports: dict[str, list] = {s: [] for s in STORES}
    for round_ in range(args.rounds):
        order = STORES if round_ % 2 == 0 else STORES[::-1]
        for store in order:
            with serve(store, args) as client:
                reports[store].append(recall_through_api(client, queries, listings, k=10,
                                                         modes=MODES))
            print(f"round {round_ + 1} {store}: done; {_load()}")

    if args.rounds:
        _tables(reports)
    _parity(queries, args)


def _tables(reports: dict) -> None:
    print("\n" + TABLE_HEAD.format(k=10).replace("| query |", "| store | query |")
          .replace("|---|", "|---|---|", 1))
    for store in STORES:
        for row in reports[store][0]:
            print(f"| {store} " + row.row())
    print("\np50 ms per request by round (store order alternates):")
    for store in STORES:
        for i, (mode, against) in enumerate(MODES):
            p50 = [r[i].p50_ms for r in reports[store]]
            print(f"  {store:6s} {mode}->{against}: " + ", ".join(f"{x:.1f}" for x in p50) +
                  f"  (median {np.median(p50):.1f}, spread {max(p50) - min(p50):.1f})")


def _parity(queries: list, args) -> None:
    """Every title sent to both servers (vector search against the text vectors)."""
    same, same_but_ties, differ = 0, 0, []
    with serve("faiss", args) as a, serve("milvus", args) as b:
        for x in queries:
            body = {"query": x.title, "k": 10, "against": "text", "mode": "vector"}
            answers = [c.post("/search/text", json=body).json()["results"] for c in (a, b)]
            ids = [[r["product_id"] for r in rows] for rows in answers]
            if ids[0] == ids[1]:
                same += 1
            elif _same_up_to_ties(*answers):
                same_but_ties += 1
            else:
                differ.append(x.product_id)
    print(f"\ntop-10 product ids (title -> text vectors), {len(queries)} queries: identical "
          f"{same}, identical but for the order of equal scores {same_but_ties}, different "
          f"{len(differ)}" + (f" ({', '.join(differ[:10])})" if differ else "") + f"; {_load()}")


def _same_up_to_ties(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    """The same scores, and the same listings at each score (listings tied with the last one
    may be cut at k differently)."""
    sa, sb = [r["score"] for r in a], [r["score"] for r in b]
    if len(sa) != len(sb) or not np.allclose(sa, sb, atol=tol):
        return False
    last = min(sa, default=0.0)

    def above(rows):
        return sorted((round(r["score"] / tol), r["product_id"]) for r in rows
                      if r["score"] > last + tol)

    return above(a) == above(b)


if __name__ == "__main__":
    main()
