"""Query-encoding latency: ONNX Runtime against PyTorch, side by side, on the demo model and on a
CLIP ViT-B/16-sized model (random weights, built from a transformers CLIPConfig).

One query is one title (tokenized alone, as ``eclip serve`` does) or one photo (already
transformed). For each model both encoders run the same queries in alternating rounds (PyTorch,
ONNX, PyTorch, ...), first one query at a time, then from 16 client threads at once (each call timed
on its own thread). PyTorch runs with 1 intra-op thread and ONNX Runtime sessions with 1 intra-op
thread, as ``eclip serve`` runs them (queries in parallel, one core each). The ONNX Runtime settings
(graph optimisation level x intra-op threads) are compared first, on the demo model's titles.

    python benchmarks/onnx_query.py --out /tmp/onnx_bench [--rounds 5] [--skip-clip] [--skip-demo]
        [--skip-sweep] [--kinds text image] [--clip-photos 4]

The models and their exports are written once per ``--out`` folder and reused (checked against the
model first). The two encoders swap places every round. Prints a markdown table (p50 / p99 in ms,
median over rounds with the min-max of the per-round values; the per-round ratio of the p50s; the
per-round ratio of the p50s of each query's CPU time on its own thread, which the machine's load
moves much less than wall time) and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch


def _demo_model(work: Path):
    from eclip.catalog.demo import make_demo_catalog
    from eclip.catalog.readers import read_catalog
    from eclip.train.recipe import load_recipe
    from eclip.train.run import build_model

    catalog = make_demo_catalog(work / "catalog", n_listings=300, seed=0, image_size=128, progress=False)
    listings = read_catalog(catalog).listings
    recipe = load_recipe(Path(__file__).parents[1] / "src/eclip/configs/demo.yaml", [])
    torch.manual_seed(0)
    return build_model(recipe, listings).eval(), listings


def _clip_b16(work: Path, listings):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from eclip.model import train_tokenizer
    from eclip.model import load_model

    directory = work / "clip_b16"
    if not (directory / "config.json").is_file():  # built once per work folder (seed 0)
        torch.manual_seed(0)
        config = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224}, projection_dim=512)
        CLIPModel(config).save_pretrained(directory)
        CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
                              ).save_pretrained(directory)
    tokenizer = train_tokenizer([x.title for x in listings], 8000)
    return load_model(directory, tokenizer=tokenizer).eval()


def _percentiles(times: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(wall p50, wall p99, CPU p50) in ms from (wall s, thread CPU s) pairs."""
    wall = np.asarray([t[0] for t in times]) * 1000
    cpu = np.asarray([t[1] for t in times]) * 1000
    return float(np.percentile(wall, 50)), float(np.percentile(wall, 99)), float(np.percentile(cpu, 50))


def _timed(call, q) -> tuple[float, float]:
    """Wall and CPU seconds of one call on this thread (1 intra-op thread: the work runs on the
    caller's thread in both runtimes, so its CPU time is the query's cost, whatever the load)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    call(q)
    return time.perf_counter() - wall, time.thread_time() - cpu


def _sequential(call, queries) -> list[tuple[float, float]]:
    return [_timed(call, q) for q in queries]


def _concurrent(call, queries, clients: int = 16) -> list[tuple[float, float]]:
    def timed(q):
        return _timed(call, q)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(timed, queries))


def _encoders(model, onnx_dir: Path, threads: int = 1, optimization: str = "all"):
    from eclip.model.onnx import OnnxTowers

    towers = OnnxTowers(onnx_dir, threads=threads, optimization=optimization)

    def torch_text(tokens):
        with torch.inference_mode():
            return model.encode_text(tokens["input_ids"], tokens["attention_mask"])[0].numpy()

    def onnx_text(tokens):
        return towers.text(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())[0]

    def torch_image(pixels):
        with torch.inference_mode():
            return model.encode_image(pixels)[0].numpy()

    def onnx_image(pixels):
        return towers.image(pixels.numpy())[0]

    return {"text": (torch_text, onnx_text), "image": (torch_image, onnx_image)}


def _export(model, directory: Path, what: str) -> None:
    """Export once per work folder; a folder already there is reused when its graphs give the
    model's vectors (checked on a title and a photo)."""
    from eclip.model.onnx import OnnxTowers, export_onnx, has_onnx

    if has_onnx(directory):
        towers = OnnxTowers(directory)
        tokens = model.tokenize(["red cotton shirt"])
        pixels = torch.randn(1, 3, model.config.image_size, model.config.image_size)
        with torch.inference_mode():
            diff = max(float(np.abs(towers.text(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
                                    - model.encode_text(**tokens).numpy()).max()),
                       float(np.abs(towers.image(pixels.numpy()) - model.encode_image(pixels).numpy()).max()))
        if not diff <= 1e-4:
            raise SystemExit(f"{directory} is not this model's export (difference {diff:.1e}): remove it")
        print(f"({what}: reusing {directory})", flush=True)
        return
    start = time.perf_counter()
    export_onnx(model, directory)
    print(f"({what} exported in {time.perf_counter() - start:.0f} s)", flush=True)


def _compare(name, model, onnx_dir, texts, photos, rounds, per_round, rows, kinds=("text", "image")):
    transform = model.image_transform()
    tokens = [model.tokenize([t]) for t in texts]
    pixels = [transform(p)[None] for p in photos]
    encoders = _encoders(model, onnx_dir)
    for kind, queries in (("text", tokens), ("image", pixels)):
        if kind not in kinds:
            continue
        n = per_round[kind]
        for mode, run in (("1 client", _sequential), ("16 clients", _concurrent)):
            stats = {"pytorch": [], "onnx": []}
            for r in range(rounds):
                batch = [queries[(r * n + i) % len(queries)] for i in range(n if mode == "1 client" else 4 * n)]
                pairs = list(zip(("pytorch", "onnx"), encoders[kind]))
                for label, call in (pairs if r % 2 == 0 else pairs[::-1]):  # alternating
                    call(batch[0])  # warm
                    stats[label].append(_percentiles(run(call, batch)))
            cells = []
            for label in ("pytorch", "onnx"):
                p50 = [s[0] for s in stats[label]]
                p99 = [s[1] for s in stats[label]]
                cells.append(f"{statistics.median(p50):.1f} ({min(p50):.1f}-{max(p50):.1f}) / "
                             f"{statistics.median(p99):.1f} ({min(p99):.1f}-{max(p99):.1f})")
            ratio = [o[0] / t[0] for t, o in zip(stats["pytorch"], stats["onnx"])]
            cpu = [o[2] / t[2] for t, o in zip(stats["pytorch"], stats["onnx"])]
            row = (f"| {name} | {kind} | {mode} | {cells[0]} | {cells[1]} | "
                   f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) | "
                   f"{statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) |")
            print(row, flush=True)
            rows.append(row)


def _settings_sweep(model, onnx_dir, texts, rounds):
    from eclip.model.onnx import OnnxTowers

    tokens = [model.tokenize([t]) for t in texts[:100]]
    configs = [(opt, threads) for opt in ("disable", "basic", "extended", "all") for threads in (1, 2)]
    towers = {c: OnnxTowers(onnx_dir, optimization=c[0], threads=c[1]) for c in configs}
    p50s = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            t = towers[c]
            call = lambda tok, t=t: t.text(tok["input_ids"].numpy(), tok["attention_mask"].numpy())  # noqa: E731
            call(tokens[0])
            p50s[c].append(_percentiles(_sequential(call, tokens))[0])
    print("\n| optimisation | intra-op threads | text p50 ms (min-max over rounds) |")
    print("|---|---|---|")
    for c in configs:
        print(f"| {c[0]} | {c[1]} | {statistics.median(p50s[c]):.2f} ({min(p50s[c]):.2f}-{max(p50s[c]):.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-clip", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true", help="no ONNX Runtime settings sweep")
    parser.add_argument("--kinds", nargs="+", default=["text", "image"], choices=["text", "image"])
    parser.add_argument("--clip-photos", type=int, default=4, help="CLIP photos a round (1 client)")
    args = parser.parse_args()
    from PIL import Image

    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    demo, listings = _demo_model(work)
    texts = [x.title for x in listings]
    photos = [Image.open(x.images[0]).convert("RGB") for x in listings[:50]]
    rows: list[str] = []
    if not args.skip_demo:
        _export(demo, work / "demo_onnx", "demo model")
        if not args.skip_sweep:
            _settings_sweep(demo, work / "demo_onnx", texts, args.rounds)
    print("\n| model | query | clients | PyTorch p50 / p99 ms | ONNX p50 / p99 ms | ONNX p50 / PyTorch p50 "
          "| CPU time p50: ONNX / PyTorch |")
    print("|---|---|---|---|---|---|---|", flush=True)
    if not args.skip_demo:
        _compare("demo (scratch BERT 2x256 + EfficientNet-Lite0 128 px)", demo, work / "demo_onnx", texts,
                 photos, args.rounds, {"text": 100, "image": 20}, rows, args.kinds)
    if not args.skip_clip:
        clip = _clip_b16(work, listings)
        _export(clip, work / "clip_onnx", "CLIP ViT-B/16")
        _compare("CLIP ViT-B/16 size (random)", clip, work / "clip_onnx", texts, photos,
                 args.rounds, {"text": 30, "image": args.clip_photos}, rows, args.kinds)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
