"""Contrastive-loss time and peak memory on the CPU: chunked vs dense, for large batches.

For each batch size B and mode, a fresh process builds unit-length image and text embeddings [B, D]
(float32, catalog ids in pairs so that the catalog-aware targets are not the identity) and times one
forward + backward pass of ``eclip.train.loss.contrastive_loss``: dense (no ``chunk_size``: all rows
as one chunk, B x B logits once, gradients computed in the same pass, the targets' terms from
per-catalog sums) or chunked (``chunk_size`` rows at a time); and, as the reference, the same loss
through autograd with an explicit B x B targets matrix and ``log_softmax`` in both directions (how
eclip computed it before issue 15, and how autograd losses such as open_clip's ``ClipLoss`` hold
their logits).

Memory: the peak growth of the process's resident set (RSS) during forward + backward. The peak
(VmHWM) is reset through ``/proc/self/clear_refs`` just before and read just after, relative to the
RSS before (which holds the inputs); Linux only. tracemalloc cannot see torch's allocations, and
the profiler reports allocation totals rather than a peak. Dense runs whose memory, extrapolated
from the smallest B, would not fit in the available memory are reported as skipped.

    python benchmarks/loss_memory.py --sizes 4096 16384 65536 --dim 256 --chunk 4096
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(batch: int, dim: int, chunk: int | None, repeats: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from eclip.train.loss import contrastive_loss

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    text = F.normalize(0.5 * image + torch.randn(batch, dim, generator=gen), dim=1)
    groups = torch.arange(batch) // 2
    times, peaks, loss = [], [], None
    for _ in range(repeats):
        i, t = image.clone().requires_grad_(), text.clone().requires_grad_()
        scale = torch.tensor(14.0, requires_grad=True)
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak RSS to the current RSS
        start = time.perf_counter()
        if chunk == -1:
            value = _autograd_loss(i, t, scale, groups)
        else:
            value = contrastive_loss(i, t, scale, groups, chunk_size=chunk)
        value.backward()
        times.append(time.perf_counter() - start)
        peaks.append(_status("VmHWM") - before)
        loss = value.item()
        del value, i, t, scale
    mode = {None: "dense", -1: "autograd reference"}.get(chunk, f"chunked ({chunk} rows)")
    return {"batch": batch, "mode": mode,
            "seconds": min(times), "peak_mib": min(peaks) / 2**20, "loss": loss}


def _autograd_loss(image, text, scale, groups):
    """The catalog-aware loss as autograd sees it: logits, targets, log-softmax per direction."""
    import torch.nn.functional as F

    from eclip.train.loss import catalog_targets

    logits = scale * image @ text.T
    targets = catalog_targets(groups)
    return -((targets * F.log_softmax(logits, dim=1)).sum(1).mean()
             + (targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()) / 2


def _available_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="per (B, mode) below 32k; 1 above")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reference", action="store_true",
                        help="also run the autograd reference (explicit targets matrix)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--one", nargs=3, metavar=("B", "CHUNK", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        batch, chunk, repeats = int(args.one[0]), int(args.one[1]), int(args.one[2])
        print(json.dumps(run_one(batch, args.dim, chunk or None, repeats, args.threads)))
        return

    rows, dense_bytes_per_entry = [], None
    for batch in sorted(args.sizes):
        repeats = args.repeats if batch < 32768 else 1
        for chunk in ((-1, 0, args.chunk) if args.reference else (0, args.chunk)):
            if chunk <= 0 and dense_bytes_per_entry is not None:
                need = dense_bytes_per_entry * batch * batch
                if need > 0.8 * _available_bytes():
                    rows.append({"batch": batch, "mode": "dense" if chunk == 0 else "autograd reference",
                                 "skipped":
                                 f"needs ~{need / 2**30:.0f} GiB (extrapolated), "
                                 f"{_available_bytes() / 2**30:.0f} GiB available"})
                    print(rows[-1], flush=True)
                    continue
            done = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--threads",
                                   str(args.threads), "--one", str(batch), str(chunk), str(repeats)],
                                  capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            if chunk <= 0:  # the larger of the two B x B modes at the smallest B
                dense_bytes_per_entry = max(dense_bytes_per_entry or 0,
                                            row["peak_mib"] * 2**20 / batch**2)
            rows.append(row)
            print(row, flush=True)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, D={args.dim}, torch float32, {date.today()}\n")
    print("| B | loss | forward + backward (s) | peak memory (MiB) |")
    print("|---|---|---|---|")
    for row in rows:
        if "skipped" in row:
            print(f"| {row['batch']} | {row['mode']} | skipped: {row['skipped']} | |")
        else:
            print(f"| {row['batch']} | {row['mode']} | {row['seconds']:.2f} | {row['peak_mib']:.0f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"dim": args.dim, "threads": args.threads, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
