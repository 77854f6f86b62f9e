"""DDP vs FSDP (``train.parallel``) on 2 gloo processes: what each rank holds, and the step time.

For the model of ``configs/fsdp.yaml`` (a scratch BERT and a tiny ViT) on a generated demo catalog,
each job trains ``--steps`` steps through ``eclip.train.trainer`` (multi-stream accumulation and the
chunked loss, as the recipe says), DDP and FSDP alternating, ``--repeats`` times. Per run it
records, from the objects themselves after the last step: the bytes of parameters, gradients and
AdamW moments this rank holds (FSDP: its shards; DDP: everything), and the median step time of
the steps after the first (``metrics.jsonl`` ``step_s``). Prints a table and writes JSON.

    .venv/bin/python benchmarks/fsdp_memory.py --out /tmp/fsdp_bench --steps 6 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
from pathlib import Path

WORLD = 2


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def worker(rank: int, port: int, job: dict) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    from eclip.catalog.readers import read_catalog
    from eclip.catalog.splits import split_listings
    from eclip.train.distributed import init_distributed, shutdown
    from eclip.train.recipe import load_recipe
    from eclip.train.run import build_model
    from eclip.train.trainer import setup

    recipe = load_recipe(job["config"], [f"train.output_dir={job['out']}",
                                         f"train.parallel={job['parallel']}",
                                         f"train.max_steps={job['steps']}", "train.log_every=1",
                                         "train.checkpoint_every=100000", "train.progress=false",
                                         "train.threads=1"])
    env = init_distributed("cpu")
    listings = split_listings(read_catalog(job["catalog"]).listings, recipe.data).train
    torch.manual_seed(0)
    model = build_model(recipe, listings)
    run = setup(recipe, model, listings, env=env, log=lambda s: None)
    run.train()
    params = [p for p in run.model.parameters()]
    moments = [v for state in run.optimizer.state.values() for v in state.values()
               if hasattr(v, "numel") and v.ndim > 0]
    held = {"params": _local_bytes(params), "grads": _local_bytes(p.grad for p in params),
            "adam_moments": _local_bytes(moments)}
    if rank == 0:
        rows = [json.loads(line) for line in (Path(job["out"]) / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step_s"] for r in rows if "step_s" in r][1:]
        Path(job["result"]).write_text(json.dumps({
            "parallel": job["parallel"], "bytes_rank0": held, "step_s_median": statistics.median(steps),
            "step_s": steps, "n_params": sum(p.numel() for p in params)}))
    shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(job: dict) -> dict:
    context, port = multiprocessing.get_context("spawn"), _free_port()
    procs = [context.Process(target=worker, args=(rank, port, job)) for rank in range(WORLD)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=1200)
        if proc.exitcode != 0:
            raise SystemExit(f"a rank failed ({proc.exitcode})")
    return json.loads(Path(job["result"]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="src/eclip/configs/fsdp.yaml")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--listings", type=int, default=400)
    args = parser.parse_args()
    from eclip.catalog.demo import make_demo_catalog

    catalog = args.out / "catalog" / "listings.jsonl"
    if not catalog.is_file():
        catalog = make_demo_catalog(args.out / "catalog", n_listings=args.listings, seed=0,
                                    image_size=64, progress=False)
    results = []
    for rep in range(args.repeats):
        order = ("ddp", "fsdp") if rep % 2 == 0 else ("fsdp", "ddp")
        for parallel in order:
            name = f"{parallel}_{rep}"
            row = launch({"config": args.config, "catalog": str(catalog), "parallel": parallel,
                          "steps": args.steps, "out": str(args.out / name),
                          "result": str(args.out / f"{name}.json")})
            row["repeat"] = rep
            results.append(row)
            print(json.dumps({k: row[k] for k in ("parallel", "repeat", "bytes_rank0",
                                                   "step_s_median")}), flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    summary = {}
    for parallel in ("ddp", "fsdp"):
        rows = [r for r in results if r["parallel"] == parallel]
        medians = [r["step_s_median"] for r in rows]
        summary[parallel] = {"bytes_rank0": rows[0]["bytes_rank0"],
                             "step_s_median_of_runs": statistics.median(medians),
                             "step_s_min": min(medians), "step_s_max": max(medians)}
    print(json.dumps({"summary": summary, "uptime": load}, indent=2))
    (args.out / "results.json").write_text(json.dumps({"runs": results, "summary": summary,
                                                       "uptime": load}, indent=2))


if __name__ == "__main__":
    main()
