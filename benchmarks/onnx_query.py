"""Query-encoding latency: ONNX Runtime against PyTorch, side by side, on the demo model and on a
CLIP ViT-B/16-sized model (random weights, built from a transformers CLIPConfig).

One query is one title (tokenized alone, as ``eclip serve`` does) or one photo (already
transformed). For each model both encoders run the same queries in alternating rounds (PyTorch,
ONNX, PyTorch, ...), first one query at a time, then from 16 client threads at once (each call timed
on its own thread). PyTorch runs with 1 intra-op thread and ONNX Runtime sessions with 1 intra-op
thread, as ``eclip serve`` runs them (queries in parallel, one core each). The ONNX Runtime settings
(graph optimisation level x intra-op threads) are compared first, on the demo model's titles.

    python benchmarks/onnx_query.py --out /tmp/onnx_bench [--rounds 5] [--skip-clip]

Prints a markdown table (p50 / p99 in ms, median over rounds with the min-max of the per-round
values) and the machine's load average before and after.
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

    torch.manual_seed(0)
    config = CLIPConfig(vision_config={"patch_size": 16, "image_size": 224}, projection_dim=512)
    directory = work / "clip_b16"
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
                          ).save_pretrained(directory)
    tokenizer = train_tokenizer([x.title for x in listings], 8000)
    return load_model(directory, tokenizer=tokenizer).eval()


def _percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _sequential(call, queries) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        call(q)
        out.append(time.perf_counter() - start)
    return out


def _concurrent(call, queries, clients: int = 16) -> list[float]:
    def timed(q):
        start = time.perf_counter()
        call(q)
        return time.perf_counter() - start

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


def _compare(name, model, onnx_dir, texts, photos, rounds, per_round, rows):
    transform = model.image_transform()
    tokens = [model.tokenize([t]) for t in texts]
    pixels = [transform(p)[None] for p in photos]
    encoders = _encoders(model, onnx_dir)
    for kind, queries in (("text", tokens), ("image", pixels)):
        n = per_round[kind]
        for mode, run in (("1 client", _sequential), ("16 clients", _concurrent)):
            stats = {"pytorch": [], "onnx": []}
            for r in range(rounds):
                batch = [queries[(r * n + i) % len(queries)] for i in range(n if mode == "1 client" else 4 * n)]
                for label, call in zip(("pytorch", "onnx"), encoders[kind]):
                    call(batch[0])  # warm
                    stats[label].append(_percentiles(run(call, batch)))
            cells = []
            for label in ("pytorch", "onnx"):
                p50 = [s[0] for s in stats[label]]
                p99 = [s[1] for s in stats[label]]
                cells.append(f"{statistics.median(p50):.1f} ({min(p50):.1f}-{max(p50):.1f}) / "
                             f"{statistics.median(p99):.1f} ({min(p99):.1f}-{max(p99):.1f})")
            ratio = [o[0] / t[0] for t, o in zip(stats["pytorch"], stats["onnx"])]
            row = (f"| {name} | {kind} | {mode} | {cells[0]} | {cells[1]} | "
                   f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")
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
    args = parser.parse_args()
    from PIL import Image

    from eclip.model.onnx import export_onnx

    torch.set_num_threads(1)
    work = Path(args.out or tempfile.mkdtemp(prefix="onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    demo, listings = _demo_model(work)
    texts = [x.title for x in listings]
    photos = [Image.open(x.images[0]).convert("RGB") for x in listings[:50]]
    rows: list[str] = []
    if not args.skip_demo:
        start = time.perf_counter()
        export_onnx(demo, work / "demo_onnx")
        print(f"demo model exported in {time.perf_counter() - start:.0f} s", flush=True)
        _settings_sweep(demo, work / "demo_onnx", texts, args.rounds)
    print("\n| model | query | clients | PyTorch p50 / p99 ms | ONNX p50 / p99 ms | ONNX p50 / PyTorch p50 |")
    print("|---|---|---|---|---|---|", flush=True)
    if not args.skip_demo:
        _compare("demo (scratch BERT 2x256 + EfficientNet-Lite0 128 px)", demo, work / "demo_onnx", texts,
                 photos, args.rounds, {"text": 100, "image": 20}, rows)
    if not args.skip_clip:
        clip = _clip_b16(work, listings)
        start = time.perf_counter()
        export_onnx(clip, work / "clip_onnx")
        print(f"(CLIP ViT-B/16 exported in {time.perf_counter() - start:.0f} s)", flush=True)
        _compare("CLIP ViT-B/16 size (random)", clip, work / "clip_onnx", texts, photos,
                 args.rounds, {"text": 30, "image": 4}, rows)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
