"""Embedding throughput on one device: listings/s for the image and the text tower, inference only.

What docs/SCALE.md needs to size a full re-embed of a marketplace: how many images and titles one
accelerator turns into vectors per second. The models are built from configs with random weights
(the shapes are what matter for speed), the same way ``benchmarks/gpu_train.py`` builds them:

- ``clip_vit_b16``: CLIP ViT-B/16 (224 px, 77 tokens), opened the way a user starts from a
  transformers checkpoint (``eclip.model.load_model``);
- ``clip_vit_l14``: CLIP ViT-L/14 (224 px; width 1024, 24 layers), the size of Marqo-Ecommerce-L's
  image tower.

Per model and batch size: ``--warmup`` batches, then ``--batches`` timed batches of
``model.encode_image`` and of ``model.encode_text`` (full 77-token titles: an upper bound, real
titles are shorter) under ``torch.inference_mode`` and bf16 autocast, synchronised with the device;
rate as the median over the timed batches with min and max. The forward FLOPs per image and per
title are counted with ``torch.utils.flop_counter`` so that the rate can be turned into a model
FLOP utilisation (MFU) against the device's dense bf16 peak. Decoding JPEGs is not included: that is
the loader's CPU work, sized separately in docs/SCALE.md.

    python benchmarks/gpu_embed.py --out gpu_embed.json
    python benchmarks/gpu_embed.py --device cpu --tiny      # the CPU check (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpu_train import _build_eclip, count_flops, peak_tflops  # noqa: E402

_L14 = {"width": 1024, "layers": 24, "heads": 16, "mlp": 4096, "patch": 14, "image": 224}
_B16 = {"width": 768, "layers": 12, "heads": 12, "mlp": 3072, "patch": 16, "image": 224}
_TEXT_B = {"kind": "clip", "width": 512, "layers": 12, "heads": 8, "mlp": 2048, "vocab": 49408,
           "context": 77, "positions": 77}
_TEXT_L = {**_TEXT_B, "width": 768, "heads": 12, "mlp": 3072}
SPECS = {
    False: {"clip_vit_b16": {"vision": _B16, "text": _TEXT_B, "embed": 512},
            "clip_vit_l14": {"vision": _L14, "text": _TEXT_L, "embed": 768}},
    True: {"clip_vit_b16": {"vision": {"width": 64, "layers": 2, "heads": 2, "mlp": 256, "patch": 8,
                                       "image": 32},
                            "text": {**_TEXT_B, "width": 64, "layers": 2, "heads": 2, "mlp": 256,
                                     "vocab": 1000, "context": 16, "positions": 16},
                            "embed": 32}},
}


def _timed(fn, device, warmup: int, count: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(count):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(name: str, spec: dict, device, batches: list[int], args) -> list[dict]:
    import torch

    with tempfile.TemporaryDirectory(prefix="gpu_embed_") as tmp:
        model = _build_eclip("clip_vit_b16", spec, Path(tmp)).to(device).eval()
    vocab = model.text_tower.model.get_input_embeddings().num_embeddings
    vision, text = spec["vision"], spec["text"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for batch in batches:
        gen = torch.Generator(device=device).manual_seed(batch)
        pixels = torch.randn(batch, 3, vision["image"], vision["image"], generator=gen, device=device)
        ids = torch.randint(1, vocab, (batch, text["context"]), generator=gen, device=device)
        mask = torch.ones_like(ids)

        def image():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                        enabled=device.type == "cuda"):
                return model.encode_image(pixels)

        def title():
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                        enabled=device.type == "cuda"):
                return model.encode_text(ids, mask)

        try:
            for tower, fn in (("image", image), ("text", title)):
                flops = count_flops(fn)[1] / batch
                seconds = _timed(fn, device, args.warmup, args.batches)
                median = statistics.median(seconds)
                row = {"model": name, "tower": tower, "batch": batch, "timed_batches": len(seconds),
                       "per_s": batch / median, "per_s_min": batch / max(seconds),
                       "per_s_max": batch / min(seconds), "forward_flops_per_item": flops,
                       "achieved_tflops": flops * batch / median / 1e12}
                if device.type == "cuda":
                    row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
                rows.append(row)
                print(json.dumps(row), flush=True)
        except torch.OutOfMemoryError:
            rows.append({"model": name, "batch": batch, "error": "out of memory"})
        del pixels, ids, mask
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the CPU check)")
    parser.add_argument("--batches-sizes", default="256,1024", help="batch sizes, comma-separated")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per size")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    import torch

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    sizes = [int(x) for x in args.batches_sizes.split(",")]
    if args.tiny:
        sizes = sorted({min(s, 8) for s in sizes})
        args.warmup, args.batches = 1, 2
    rows = []
    for model_name, spec in SPECS[args.tiny].items():
        rows += measure(model_name, spec, device, sizes, args)
    for row in rows:
        if peak and "achieved_tflops" in row:
            row["mfu"] = row["achieved_tflops"] / peak
    result = {"device": {"name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                         "peak_bf16_tflops": peak},
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("| model | tower | batch | items/s (min-max) | GFLOP/item | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "per_s" in r:
            print(f"| {r['model']} | {r['tower']} | {r['batch']} | {r['per_s']:.0f} "
                  f"({r['per_s_min']:.0f}-{r['per_s_max']:.0f}) | "
                  f"{r['forward_flops_per_item'] / 1e9:.2f} | {r['achieved_tflops']:.1f} | "
                  f"{r.get('mfu', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
