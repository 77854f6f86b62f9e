"""What planning hard batches inside a shard stream's shuffle buffer costs a loader worker.

    .venv/bin/python benchmarks/hard_buffer.py [--buffers 1000 4000] [--dim 512] [--repeats 5]

``train/neighbours.py`` ``BufferOrder.arrange`` on one shuffled block of ``--buffers`` samples
(units of 2 listings of a catalog, so buffer / 2 catalogs, 50 category paths, random unit vectors
of ``--dim`` dimensions, batches of 128, 8 neighbours), against the same call with the
neighbourhoods switched off (the random stream's order), alternating, ``--repeats`` times each.
Prints the median and the range in milliseconds. The block's images are decoded by the worker
anyway: compare with that (about a millisecond or more per JPEG).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from eclip.train.neighbours import BufferOrder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffers", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.1f}")
    for samples in args.buffers:
        vectors = rng.normal(size=(samples, args.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        orders = {
            "hard": BufferOrder(128, 8, vectors=vectors.astype(np.float16),
                                rows={i: i for i in range(samples)},
                                categories=[f"path{i % 50}" for i in range(samples)]),
            "off": BufferOrder(128, 0),
        }
        units = samples // 2
        catalogs = [f"c{u}" for u in range(units)]
        members = [[2 * u, 2 * u + 1] for u in range(units)]
        times: dict[str, list[float]] = {name: [] for name in orders}
        for _ in range(args.repeats):
            for name, order in orders.items():
                started = time.perf_counter()
                order.arrange(catalogs, members, 0)
                times[name].append(1000 * (time.perf_counter() - started))
        for name, values in times.items():
            print(f"buffer {samples}, {name}: median {statistics.median(values):.1f} ms "
                  f"(range {min(values):.1f}-{max(values):.1f}, {args.repeats} runs)")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
