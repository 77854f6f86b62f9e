"""A bounded load test of ``POST /search/text`` on loopback: N concurrent clients for T seconds.

    python benchmarks/search_load.py --index demo_index            # 50 clients, 60 s

It starts ``eclip serve`` on 127.0.0.1 (a free port) as a child process, waits for ``/health``,
runs ``--clients`` concurrent keep-alive clients, each sending queries (titles sampled from the
index, half of them cut to their first words) back to back for ``--duration`` seconds after a short
warm-up, then stops the server. It reports requests/s, latency percentiles and errors (any answer
but 200, and any failed or timed-out request).

Bounded by design: only 127.0.0.1, at most 200 clients, 300 s and ``--max-requests`` requests;
every request has a timeout, and the server is stopped whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from eclip.search.index import current_generation
from eclip.search.metadata import MetadataStore

HOST = "127.0.0.1"
MAX_CLIENTS, MAX_SECONDS = 200, 300


def sample_queries(index_dir: str, n: int, seed: int) -> list[str]:
    """Titles of random listings; every other one cut to its first two or three words."""
    generation = current_generation(index_dir)
    vids = np.load(generation / "vids.npy", mmap_mode="r")
    rng = random.Random(seed)
    picked = [int(vids[rng.randrange(len(vids))]) for _ in range(n)]
    store = MetadataStore(generation / "listings.sqlite")
    titles = [item.title for item in store.fetch(picked).values()]
    store.close()
    return [t if i % 2 else " ".join(t.split()[:rng.randint(2, 3)]) or t
            for i, t in enumerate(titles)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(index_dir: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "eclip", "serve", "--index", index_dir, "--host", HOST,
               "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}")
        try:
            return httpx.get(f"{url}/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


async def load(url: str, queries: list[str], clients: int, warmup: float, duration: float,
               max_requests: int, k: int) -> tuple[list[float], Counter, float]:
    """Latencies of the requests that began inside the measured window, errors by kind, seconds."""
    latencies: list[float] = []
    errors: Counter = Counter()
    sent = 0
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal sent
        rng = random.Random(number)
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            began = time.monotonic()
            try:
                response = await http.post("/search/text", json={"query": rng.choice(queries),
                                                                  "k": k})
                ok = response.status_code == 200
                kind = None if ok else f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                kind = type(exc).__name__
            if began >= measure_from:
                latencies.append(time.monotonic() - began)
                if kind:
                    errors[kind] += 1

    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return latencies, errors, time.monotonic() - measure_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="index folder (eclip index --out)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration + args.warmup <= MAX_SECONDS:
        raise SystemExit(f"bounded: 1..{MAX_CLIENTS} clients, at most {MAX_SECONDS} s in all")

    queries = sample_queries(args.index, 1000, args.seed)
    port = free_port()
    url = f"http://{HOST}:{port}"
    server = start_server(str(Path(args.index)), port)
    try:
        health = wait_ready(url, server)
        latencies, errors, seconds = asyncio.run(load(url, queries, args.clients, args.warmup,
                                                      args.duration, args.max_requests, args.k))
    finally:
        stop_server(server)
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    print(f"# search load: {platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}; index {args.index} ({health['listings']} "
          f"listings, {health['generation']}); server and clients on the same machine\n")
    print("| clients | seconds | requests | requests/s | p50 ms | p90 ms | p99 ms | max ms "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.clients} | {seconds:.0f} | {len(latencies)} | {len(latencies) / seconds:.1f} | "
          f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 90):.1f} | "
          f"{np.percentile(ms, 99):.1f} | {ms.max():.1f} | {sum(errors.values())} |")
    if errors:
        print("\nerrors: " + ", ".join(f"{n} {kind}" for kind, n in errors.most_common()))


if __name__ == "__main__":
    main()
