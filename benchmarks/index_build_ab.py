"""Two source trees build the same index from the same stored vectors, alternating: CPU and wall.

    nice -n 19 python benchmarks/index_build_ab.py --work /tmp/s2/w200k \
        --tree before=/tmp/main/src --tree after=src --rounds 2 -- --kind ivf_sq8

Each build is ``benchmarks/index_scale.py --phase build`` in a fresh process with the tree's
``src`` on ``PYTHONPATH`` (a generated ``--work`` folder: ``index_scale.py --phase generate``);
the arguments after ``--`` go to every build, ``--after-args`` only to the second tree's (e.g.
``--vector-dtype float16 --no-fused-vectors``). CPU time (user + system of the child, every
thread) is what a loaded, shared machine inflates least; wall time is printed beside it, with the
load average. Each build's index, sizes and steps stay in ``WORK/ab-TREE-ROUND``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--after-args", default="", help="extra build arguments of the last tree")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in args.tree]
    common = [a for a in args.rest if a != "--"]
    rows: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, src in (trees if r % 2 == 0 else trees[::-1]):
            out = args.work / f"ab-{name}-{r}"
            extra = args.after_args.split() if name == trees[-1][0] else []
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            began = time.perf_counter()
            subprocess.run([sys.executable, str(HERE / "index_scale.py"), "--work",
                            str(args.work), "--index", str(out), "--phase", "build",
                            *common, *extra],
                           env={**os.environ, "PYTHONPATH": str(Path(src).resolve())},
                           check=True, stdout=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            built = json.loads((args.work / "build.json").read_text())
            rows[name].append({"cpu_s": after.ru_utime + after.ru_stime - before.ru_utime
                               - before.ru_stime, "wall_s": time.perf_counter() - began,
                               "load": [load, os.getloadavg()[0]],
                               "disk_gib": built["disk_gib"], "npy_gib": built["npy_gib"],
                               "peak_rssanon_gib": built["peak_rssanon_gib"],
                               "recall": built["vectors"],
                               "cpu_seconds": built.get("cpu_seconds")})
            (args.work / f"ab-{name}-{r}.json").write_text(json.dumps(rows[name][-1], indent=2))
            print(name, r, {k: v for k, v in rows[name][-1].items() if k != "recall"},
                  flush=True)
    for name, got in rows.items():
        cpu = [g["cpu_s"] for g in got]
        print(f"{name}: CPU median {np.median(cpu):.1f} s ({min(cpu):.1f}-{max(cpu):.1f}), "
              f"disk {got[0]['disk_gib']:.3f} GiB (npy {got[0]['npy_gib']:.3f})")
    (args.work / "ab.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
