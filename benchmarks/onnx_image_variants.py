"""The CLIP ViT-B/16-sized photo query under ONNX Runtime variants against PyTorch, side by side.

Variants of the image graph (each must give eclip's vector to 1e-4, checked first):

* ``ort all``: the graph ``eclip export --format onnx`` writes (opset 18), graph optimisation
  ``all``, 1 intra-op thread (what ``eclip serve`` runs);
* ``ort fused``: the same graph through ``onnxruntime.transformers.optimizer`` (``model_type="vit"``:
  attention, GELU and layer-norm fusions where its patterns match);
* ``ort nospin``: ``all`` with ``session.intra_op.allow_spinning=0``;
* ``ort opset23``: the image tower exported at opset 23, where ``torch.onnx`` writes attention as
  the ONNX ``Attention`` operator.

One process; PyTorch with 1 thread (``inference_mode``) and every variant answer the same photos
in alternating rounds (the order reversed on odd rounds); per round the median of the photos'
latencies; the table gives the median over rounds with the min-max, and the per-round ratio to
PyTorch.

    PYTHONPATH=src python benchmarks/onnx_image_variants.py --clip /tmp/onnx_bench/clip_b16 \\
        --onnx /tmp/onnx_bench/clip_onnx/image.onnx --work /tmp/onnx_variants --rounds 5

(``--clip`` and ``--onnx``: the folders ``benchmarks/onnx_query.py --out /tmp/onnx_bench`` writes.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", required=True, help="a CLIP checkpoint folder (transformers)")
    parser.add_argument("--onnx", required=True, help="its image.onnx from eclip's export")
    parser.add_argument("--work", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=["fused", "nospin", "opset23"])
    args = parser.parse_args()
    import onnxruntime as ort

    from eclip.model import onnx as eclip_onnx
    from eclip.model import train_tokenizer
    from eclip.model.pretrained import from_checkpoint

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(["red shirt", "blue shoes size 270", "mug"] * 50, 500)
    model = from_checkpoint(args.clip, tokenizer=tokenizer).eval()

    def session(path, **entries):
        options = eclip_onnx.session_options(1, "all")
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    sessions = {"ort all": session(args.onnx)}
    if "fused" in args.variants:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = work / "image_fused.onnx"
        if not fused.exists():
            optimized = optimize_model(args.onnx, model_type="vit", num_heads=12, hidden_size=768)
            print(f"fusions: {optimized.get_fused_operator_statistics()}", flush=True)
            optimized.save_model_to_file(str(fused))
        sessions["ort fused"] = session(fused)
    if "nospin" in args.variants:
        sessions["ort nospin"] = session(args.onnx, **{"session.intra_op.allow_spinning": "0"})
    if "opset23" in args.variants:
        path = work / "image_opset23.onnx"
        if not path.exists():
            _, pixels = eclip_onnx._sample_inputs(model)
            started = time.perf_counter()
            with torch.no_grad():
                eclip_onnx._export(eclip_onnx._ImageGraph(model), (pixels,), path,
                                   ["pixel_values"], {"pixel_values": {0: "batch"}}, "image", 23)
            print(f"opset 23 export: {time.perf_counter() - started:.0f} s", flush=True)
        sessions["ort opset23"] = session(path)

    gen = torch.Generator().manual_seed(0)
    side = model.config.image_size
    photos = [torch.randn(1, 3, side, side, generator=gen) for _ in range(args.photos)]
    with torch.inference_mode():
        reference = model.encode_image(photos[0]).numpy()
    for name, s in sessions.items():
        diff = float(np.abs(s.run(None, {"pixel_values": photos[0].numpy()})[0] - reference).max())
        print(f"{name}: largest difference to eclip's vector {diff:.1e}", flush=True)
        if not diff <= eclip_onnx.CHECK_TOL:
            raise SystemExit(f"{name} gives other vectors: not a candidate")

    def pytorch(pixels):
        with torch.inference_mode():
            model.encode_image(pixels)

    calls = {"pytorch": pytorch}
    calls.update({name: (lambda p, s=s: s.run(None, {"pixel_values": p.numpy()}))
                  for name, s in sessions.items()})
    p50: dict[str, list[float]] = {name: [] for name in calls}
    print(f"load average {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
            calls[name](photos[0])  # warm
            times = []
            for pixels in photos:
                started = time.perf_counter()
                calls[name](pixels)
                times.append(time.perf_counter() - started)
            p50[name].append(statistics.median(times) * 1000)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in p50.items())
              + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| encoder | photo p50 ms: median (min-max) | / PyTorch p50, per round: median (min-max) |")
    print("|---|---|---|")
    for name, values in p50.items():
        ratio = [a / b for a, b in zip(values, p50["pytorch"])]
        print(f"| {name} | {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) | "
              f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
