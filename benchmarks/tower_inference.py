"""EfficientNet-Lite0 inference: the network as trained against its two inference copies.

    PYTHONPATH=src python benchmarks/tower_inference.py --model demo_out/models/baseline \\
        --rounds 5 --threads 2

The demo's image tower at its size (128 px), a batch of ``--batch`` random photos, in one
process: the tower's own network (batch norms, out-of-place ReLU6, a zero-pad before each "same"
convolution), ``inference_copy(fold_norms=False)`` (exact: ReLU6 in place, the symmetric padding
in the convolution; what the cut paths run since issue 21) and ``inference_copy(fold_norms=True)``
(the batch norms folded too; what the whole tower runs), alternating round by round, the order
reversed every other round, for the two uses of the tower: the locked part below the demo's cut
(``below(x, 2)``: the feature cache) and the whole tower (``forward``: ``eclip embed``, ``eclip
index``). Prints ms per photo per round, the medians with their min-max, and each copy's largest
difference from the network.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from eclip.config import use_threads
from eclip.model.image_towers import inference_copy
from eclip.model.load import load_model


def timed(run, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        run(x)  # warm
        started = time.perf_counter()
        for _ in range(repeats):
            run(x)
    return (time.perf_counter() - started) / repeats / len(x) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model with the efficientnet_lite0 tower")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="batches per timing")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cut", type=int, default=2, help="blocks above the cut (demo: 2)")
    args = parser.parse_args()

    use_threads(args.threads)
    tower = load_model(args.model).eval().image_tower
    size = int(tower.net._global_params.image_size)
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    plain, folded = tower.net, inference_copy(tower.net, fold_norms=True)
    exact = inference_copy(tower.net, fold_norms=False)

    def below(net):
        def run(pixels):
            h = pixels.contiguous(memory_format=torch.channels_last)
            h = net._swish(net._bn0(net._conv_stem(h)))
            return tower._blocks(net, 0, tower.num_blocks - args.cut, h)
        return run

    def whole(net):
        return lambda pixels: net.extract_features(
            pixels.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))

    ways = [("plain", plain), ("exact", exact), ("folded", folded)]
    with torch.no_grad():
        for name, make in (("below", below), ("whole", whole)):
            for way, net in ways[1:]:
                diff = (make(plain)(x) - make(net)(x)).abs().max().item()
                print(f"{name}, {way}: largest difference from the network {diff:.2e}")
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, make in (("below", below), ("whole", whole)):
            for way, net in (ways if r % 2 == 0 else ways[::-1]):
                ms = timed(make(net), x, args.repeats)
                results.setdefault((name, way), []).append(ms)
        print(f"round {r}: " + ", ".join(f"{n}/{w} {v[-1]:.2f}" for (n, w), v in results.items()),
              flush=True)
    print(f"\nms per photo, {args.threads} threads, batch {args.batch}, {args.rounds} rounds")
    print("| part | network | ms per photo: median (min-max) | network / this, per round: median (min-max) |")
    print("|---|---|---|---|")
    for name in ("below", "whole"):
        for way, _ in ways:
            v = results[(name, way)]
            ratios = [p / q for p, q in zip(results[(name, "plain")], v)]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"| {name} | {way} | {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f}) | "
                  f"{ratio} |")


if __name__ == "__main__":
    main()
