"""Training throughput (pairs/s) and peak memory of eclip's training step, against open_clip's.

The two run the same kind of model on synthetic data: a ViT image tower and a transformer text tower
of the same width, depth, heads, resolution, patch, context length and vocabulary, a projection to
the same embedding size, AdamW with gradient clipping. Each configuration runs in a fresh process;
open_clip runs in its own environment (``--open-clip-python``), since it needs torchvision.

- eclip: the trainer's own parts (``Embedder``, ``WholeBatchStep`` / ``MultiStreamStep``,
  ``ContrastiveLoss`` with catalog targets, ``Precision``), a Hugging Face ViT + BERT.
- open_clip: ``open_clip.CLIP`` + ``ClipLoss``; for batches larger than a micro-batch, the feature
  caching of open_clip_train's ``--accum-freq`` (embed every micro-batch without gradients, then for
  each micro-batch re-embed it with gradients and back-propagate the loss over the whole batch).

Throughput: pairs per second over the timed steps (after warm-up steps; the suite times a single
step of its batches above 1024, without warm-up above 4096). Memory: the peak resident
set of the process (VmHWM), and its growth over the resident set after the model was built (the
training step's own memory: activations, the loss, gradients, optimizer state). Linux only.

    python benchmarks/train_throughput.py --suite --open-clip-python VENV/bin/python \
        --eclip-python VENV/bin/python
    python benchmarks/train_throughput.py --impl eclip --batch 256 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path


def _status(field: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _batch(args, torch):
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen),
            "input_ids": torch.randint(1, args.vocab, (args.batch, args.context), generator=gen),
            "attention_mask": torch.ones(args.batch, args.context, dtype=torch.long),
            "group": torch.arange(args.batch) // 2}


def _micro_batches(batch: dict, micro: int | None) -> list[dict]:
    rows = batch["group"].shape[0]
    size = micro or rows
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, rows, size)]


def eclip_runner(args):
    """A closure running one training step of eclip's trainer, and the model's parameter count."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from eclip.model import DualEncoder, DualEncoderConfig, train_tokenizer
    from eclip.train.accumulate import Embedder, MultiStreamStep, WholeBatchStep
    from eclip.train.features import pixel_input
    from eclip.train.loss import ContrastiveLoss
    from eclip.train.precision import Precision
    from eclip.train.recipe import TrainConfig
    from eclip.train.trainer import apply_memory_options

    text = {"model_type": "bert", "vocab_size": args.vocab, "hidden_size": args.text_width,
            "num_hidden_layers": args.text_layers, "num_attention_heads": args.text_heads,
            "intermediate_size": 4 * args.text_width, "max_position_embeddings": args.context}
    image = {"model_type": "vit", "hidden_size": args.width, "num_hidden_layers": args.layers,
             "num_attention_heads": args.heads, "intermediate_size": 4 * args.width,
             "image_size": args.image_size, "patch_size": args.patch}
    config = DualEncoderConfig(text_tower="scratch", text_hf_config=text, image_tower="vit",
                               image_hf_config=image, image_size=args.image_size,
                               max_length=args.context, embed_dim=args.embed_dim, pretrained=False)
    tokenizer = train_tokenizer([f"word{i}" for i in range(50)], 100)
    model = DualEncoder.build(config, tokenizer=tokenizer)
    apply_memory_options(model, TrainConfig(grad_checkpointing=args.grad_checkpointing,
                                            compile=args.compile), print)
    model.train()
    embedder = Embedder(model, pixel_input)
    step = MultiStreamStep() if args.micro else WholeBatchStep()
    loss_fn = ContrastiveLoss("catalog", chunk_size=args.chunk)
    precision = Precision(args.precision, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    units = _micro_batches(_batch(args, torch), args.micro)

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = step(embedder, units, loss_fn, precision)
        precision.step(optimizer, params, 1.0)
        return loss

    return run, sum(p.numel() for p in params)


def open_clip_runner(args):
    """The same for open_clip (``--accum-freq`` style feature caching when ``--micro`` is set)."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    model = open_clip.CLIP(
        args.embed_dim,
        vision_cfg={"width": args.width, "layers": args.layers, "head_width": args.width // args.heads,
                    "patch_size": args.patch, "image_size": args.image_size, "mlp_ratio": 4.0},
        text_cfg={"context_length": args.context, "vocab_size": args.vocab, "width": args.text_width,
                  "heads": args.text_heads, "layers": args.text_layers, "mlp_ratio": 4.0})
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.compile:
        model.compile()
    model.train()
    loss_fn = ClipLoss()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    units = _micro_batches(_batch(args, torch), args.micro)

    def run() -> float:
        optimizer.zero_grad(set_to_none=True)
        if len(units) == 1:
            with autocast():
                image, text, scale = model(units[0]["pixel_values"], units[0]["input_ids"])
                loss = loss_fn(image, text, scale)
            loss.backward()
        else:
            with torch.no_grad(), autocast():
                cached = [model(u["pixel_values"], u["input_ids"])[:2] for u in units]
            for j, unit in enumerate(units):
                with autocast():
                    image, text, scale = model(unit["pixel_values"], unit["input_ids"])
                    images = torch.cat([c[0] for c in cached[:j]] + [image] + [c[0] for c in cached[j + 1:]])
                    texts = torch.cat([c[1] for c in cached[:j]] + [text] + [c[1] for c in cached[j + 1:]])
                    loss = loss_fn(images, texts, scale)
                loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.item()

    return run, sum(p.numel() for p in params)


def run_one(args) -> dict:
    import torch

    torch.manual_seed(0)
    runner = eclip_runner if args.impl == "eclip" else open_clip_runner
    run, n_params = runner(args)
    built = _status("VmRSS")
    for _ in range(args.warmup):
        run()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = run()
    seconds = (time.perf_counter() - start) / args.steps
    peak = _status("VmHWM")
    return {"impl": args.impl, "torch": torch.__version__, "batch": args.batch, "micro": args.micro,
            "chunk": args.chunk, "precision": args.precision, "grad_checkpointing": args.grad_checkpointing,
            "compile": args.compile, "params_m": n_params / 1e6, "step_s": seconds,
            "pairs_per_s": args.batch / seconds, "peak_rss_mib": peak, "step_mib": peak - built,
            "loss": loss}


MODEL_FLAGS = ("width", "layers", "heads", "patch", "image_size", "text_width", "text_layers",
               "text_heads", "context", "vocab", "embed_dim")

# (batch, micro, chunk, precision, grad_checkpointing, compile); open_clip ignores chunk
SUITE = [
    (256, None, None, "fp32", False, False),
    (256, None, None, "bf16", False, False),
    (256, None, None, "fp32", True, False),
    (256, None, None, "fp32", False, True),
    (4096, None, None, "fp32", False, False),
    (4096, 256, 1024, "fp32", False, False),
    (16384, 512, 2048, "fp32", False, False),
]


def suite(args) -> None:
    rows = []
    pythons = {"eclip": args.eclip_python or sys.executable}
    if args.open_clip_python:
        pythons["open_clip"] = args.open_clip_python
    for batch, micro, chunk, precision, ckpt, compiled in SUITE:
        for impl, python in pythons.items():
            command = [python, __file__, "--impl", impl, "--batch", str(batch), "--precision", precision,
                       "--steps", str(1 if batch > 1024 else args.steps),
                       "--warmup", str(0 if batch > 4096 else 1 if batch > 1024 else args.warmup)]
            command += [f"--{flag.replace('_', '-')}={getattr(args, flag)}" for flag in MODEL_FLAGS]
            if micro:
                command += ["--micro", str(micro)]
            if chunk and impl == "eclip":
                command += ["--chunk", str(chunk)]
            if ckpt:
                command.append("--grad-checkpointing")
            if compiled:
                command.append("--compile")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                row = {"impl": impl, "batch": batch, "micro": micro, "precision": precision,
                       "grad_checkpointing": ckpt, "compile": compiled,
                       "error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, {date.today()}; model: "
          + ", ".join(f"{flag}={getattr(args, flag)}" for flag in MODEL_FLAGS) + "\n")
    print("| impl | batch | micro x streams | loss chunk | precision | options | params (M) | pairs/s "
          "| peak RSS (MiB) | step memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        options = ", ".join(name for name in ("grad_checkpointing", "compile") if r.get(name)) or "-"
        streams = f"{r['micro']} x {r['batch'] // r['micro']}" if r.get("micro") else "-"
        head = (f"| {r['impl']} | {r['batch']} | {streams} | {r.get('chunk') or '-'} | {r['precision']} "
                f"| {options}")
        if "error" in r:
            print(f"{head} | failed: {r['error']} | | | |")
        else:
            print(f"{head} | {r['params_m']:.2f} | {r['pairs_per_s']:.0f} | {r['peak_rss_mib']:.0f} "
                  f"| {r['step_mib']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="run the standard table")
    parser.add_argument("--open-clip-python", help="python of an environment with open_clip_torch")
    parser.add_argument("--eclip-python", help="python for eclip's runs (default: this one); give the "
                        "open_clip environment's to compare on the same torch build")
    parser.add_argument("--out", help="suite: also write the rows as JSON here")
    parser.add_argument("--impl", choices=["eclip", "open_clip"], default="eclip")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--micro", type=int, help="micro-batch (multi-stream / accum-freq) size")
    parser.add_argument("--chunk", type=int, help="eclip: loss chunk size")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--text-heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--embed-dim", type=int, default=128)
    args = parser.parse_args()
    if args.suite:
        suite(args)
    else:
        print(json.dumps(run_one(args)))


if __name__ == "__main__":
    main()
