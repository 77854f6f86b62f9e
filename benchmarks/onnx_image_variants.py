"""The CLIP ViT-B/16-sized photo query under ONNX Runtime variants against PyTorch, side by side.

Variants of the image graph (each must give eclip's vector to 1e-4, checked first):

* ``ort all``: the graph ``eclip export --format onnx`` writes (opset 18), graph optimisation
  ``all``, 1 intra-op thread (what ``eclip serve`` runs);
* ``ort fused``: the same graph through ``onnxruntime.transformers.optimizer`` (``model_type="vit"``:
  attention, GELU and layer-norm fusions where its patterns match);
* ``ort nospin``: ``all`` with ``session.intra_op.allow_spinning=0``;
* ``ort opset23``: the image tower exported at opset 23, where ``torch.onnx`` writes attention as
  the ONNX ``Attention`` operator;
* ``ort noarena``: ``all`` without the CPU memory arena and the memory pattern;
* ``ort noprepack``: ``all`` without weight prepacking (``session.disable_prepacking=1``).

``--files NAME=PATH`` adds image graphs (checked like the rest), ``--unchecked NAME=PATH`` graphs
timed whatever their difference (printed: int8 and the like), ``--floor`` a graph of the tower's
matrix products alone (MatMul + bias at the tower's shapes: what ONNX Runtime's GEMMs cost, the
floor for any fp32 graph of the tower). Per photo every encoder runs once, the order rotating photo
by photo; each call's wall time and the CPU time of its thread (1 intra-op thread: the work runs on
the caller's thread) are recorded.

One process; PyTorch with 1 thread (``inference_mode``) and every variant answer the same photos;
per round the median of the photos' latencies; the table gives the median over rounds with the
min-max, and the per-round ratio to PyTorch.

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
    parser.add_argument("--variants", nargs="*", default=["fused", "nospin", "opset23"])
    parser.add_argument("--files", nargs="*", default=[], metavar="NAME=PATH",
                        help="more image graphs to time (each as its own variant)")
    parser.add_argument("--unchecked", nargs="*", default=[], metavar="NAME=PATH",
                        help="graphs timed even when their vectors differ (their difference printed)")
    parser.add_argument("--floor", action="store_true",
                        help="also time a graph of only the tower's matrix products")
    args = parser.parse_args()
    import onnxruntime as ort

    from eclip.model import onnx as eclip_onnx
    from eclip.model import train_tokenizer
    from eclip.model import load_model

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(["red shirt", "blue shoes size 270", "mug"] * 50, 500)
    model = load_model(args.clip, tokenizer=tokenizer).eval()

    def session(path, arena=True, **entries):
        options = eclip_onnx.session_options(1, "all")
        options.enable_cpu_mem_arena = options.enable_mem_pattern = arena
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    sessions = {"ort all": session(args.onnx)}
    for entry in args.files + args.unchecked:
        name, path = entry.split("=", 1)
        sessions[f"ort {name}"] = session(path)
    unchecked = {f"ort {entry.split('=', 1)[0]}" for entry in args.unchecked}
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
    if "noarena" in args.variants:
        sessions["ort noarena"] = session(args.onnx, arena=False)
    if "noprepack" in args.variants:
        sessions["ort noprepack"] = session(args.onnx, **{"session.disable_prepacking": "1"})
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
        if not diff <= eclip_onnx.CHECK_TOL and name not in unchecked:
            raise SystemExit(f"{name} gives other vectors: not a candidate")

    def pytorch(pixels):
        with torch.inference_mode():
            model.encode_image(pixels)

    calls = {"pytorch": pytorch}
    calls.update({name: (lambda p, s=s: s.run(None, {"pixel_values": p.numpy()}))
                  for name, s in sessions.items()})
    if args.floor:
        floor, vision = work / "matmuls_only.onnx", model.image_tower.model.config
        _matmul_graph(vision, floor)
        tokens = (side // vision.patch_size) ** 2 + 1
        hidden = np.random.default_rng(0).standard_normal((tokens, vision.hidden_size)).astype(np.float32)
        s = session(floor)
        calls["ort matmuls only (floor)"] = lambda p, s=s: s.run(None, {"x": hidden})
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    print(f"load average {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
        for i, pixels in enumerate([photos[0]] + photos):  # the first photo of a round warms
            shift = (r * len(photos) + i) % len(names)
            for name in names[shift:] + names[:shift]:  # the order rotates photo by photo
                wall0, cpu0 = time.perf_counter(), time.thread_time()
                calls[name](pixels)
                if i:
                    times[name].append((time.perf_counter() - wall0, time.thread_time() - cpu0))
        for name, pairs in times.items():
            wall[name].append(statistics.median(t[0] for t in pairs) * 1000)
            cpu[name].append(statistics.median(t[1] for t in pairs) * 1000)
        print(f"round {r}: " + ", ".join(f"{k} {wall[k][-1]:.0f} ms (cpu {cpu[k][-1]:.0f})" for k in names)
              + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    print("\n| encoder | photo p50 ms: median (min-max) | / PyTorch, per round | "
          "CPU ms a photo (thread time), p50 | / PyTorch, per round |")
    print("|---|---|---|---|---|")
    for name in names:
        cells = []
        for values in (wall[name], cpu[name]):
            base = wall["pytorch"] if values is wall[name] else cpu["pytorch"]
            ratio = [a / b for a, b in zip(values, base)]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f}) | "
                         f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(f"\nload average {os.getloadavg()}")


def _matmul_graph(config, path: Path) -> None:
    """An ONNX graph of only a ViT's linear layers (MatMul + bias Add at the tower's shapes, random
    weights): what ONNX Runtime's matrix products alone cost for one photo."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, m = config.hidden_size, config.intermediate_size
    rng = np.random.default_rng(0)
    nodes, weights, prev, sums = [], [], "x", []
    for layer in range(config.num_hidden_layers):
        for i, (a, b) in enumerate(((d, 3 * d), (d, d), (d, m), (m, d))):
            weight = (rng.standard_normal((a, b)) * 0.02).astype(np.float32)
            weights.append(numpy_helper.from_array(weight, f"w{layer}_{i}"))
            weights.append(numpy_helper.from_array(np.zeros(b, np.float32), f"b{layer}_{i}"))
        n = f"{layer}_"
        nodes += [helper.make_node("MatMul", [prev, f"w{n}0"], [f"qkv{n}"]),
                  helper.make_node("Add", [f"qkv{n}", f"b{n}0"], [f"qkvb{n}"]),
                  helper.make_node("ReduceSum", [f"qkvb{n}"], [f"s{n}"], keepdims=0),
                  helper.make_node("MatMul", [prev, f"w{n}1"], [f"o{n}"]),
                  helper.make_node("Add", [f"o{n}", f"b{n}1"], [f"ob{n}"]),
                  helper.make_node("MatMul", [f"ob{n}", f"w{n}2"], [f"f{n}"]),
                  helper.make_node("Add", [f"f{n}", f"b{n}2"], [f"fb{n}"]),
                  helper.make_node("MatMul", [f"fb{n}", f"w{n}3"], [f"g{n}"]),
                  helper.make_node("Add", [f"g{n}", f"b{n}3"], [f"y{n}"])]
        prev = f"y{n}"
        sums.append(f"s{n}")
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in [prev] + sums]
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              outputs, weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


if __name__ == "__main__":
    main()
