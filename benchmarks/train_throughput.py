"""Training throughput (pairs/s) and peak memory of eclip's training step, against open_clip's.

The two run the same kind of model on the same synthetic data: a ViT image tower and a transformer
text tower of the same width, depth, heads, resolution, patch, context length and vocabulary, no
dropout, a projection to the same embedding size, AdamW with gradient clipping. Each configuration
runs in a fresh process; open_clip runs in its own environment (``--open-clip-python``), since it
needs torchvision.

- eclip: the trainer's own parts (``Embedder``, ``WholeBatchStep`` / ``MultiStreamStep``,
  ``ContrastiveLoss`` with catalog targets, ``Precision``), a Hugging Face ViT + BERT; ``--compile``:
  ``DualEncoder.compile_towers`` (what ``train.compile`` does).
- open_clip: ``open_clip.CLIP`` + ``ClipLoss``; ``--compile``: ``model.compile()``. For batches
  larger than a micro-batch, the feature caching of open_clip_train's ``--accum-freq`` (embed every
  micro-batch without gradients, then for each micro-batch re-embed it with gradients and
  back-propagate the loss over the whole batch).

Titles: ``--titles 10-30`` gives each row a title of 10 to 30 tokens (drawn once, seeded) padded to
the context (77), as a tokenizer pads a catalog's titles to CLIP's context; both sides get the same
ids and mask. open_clip's text tower runs the whole context (its design: causal attention, the
pooled token found by argmax); eclip's drops the columns that are padding in every row
(``DualEncoder.text_features``). ``--titles full``: every row fills the context (no padding).

Throughput: pairs per second over the timed steps (after warm-up steps). Memory: the peak resident
set of the process (VmHWM), and its growth over the resident set after the model was built (the
training step's own memory: activations, the loss, gradients, optimizer state). Linux only.

``--suite`` runs every configuration of the table for both sides, alternating eclip and open_clip,
``--rounds`` times over (a fresh process each), and prints per row the median pairs/s with its
min-max over the rounds, the median memory, and eclip / open_clip:

    python benchmarks/train_throughput.py --suite --rounds 3 --open-clip-python VENV/bin/python \
        --eclip-python VENV/bin/python
    python benchmarks/train_throughput.py --suite issue4 ...   # the table of issue 4 (context 16)
    python benchmarks/train_throughput.py --impl eclip --batch 256 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date
from pathlib import Path


def _status(field: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _title_lengths(titles: str, context: int) -> tuple[int, int]:
    """``--titles``: ``full`` (every row fills the context) or ``LO-HI`` tokens per title."""
    if titles == "full":
        return context, context
    low, high = (int(v) for v in titles.split("-"))
    if not 1 <= low <= high <= context:
        raise SystemExit(f"--titles {titles}: need 1 <= LO <= HI <= context ({context})")
    return low, high


def _batch(args, torch):
    """The synthetic batch, the same for both sides: random pixels, titles of random ids and
    lengths padded with id 0 to the context, two rows per catalog."""
    gen = torch.Generator().manual_seed(0)
    low, high = _title_lengths(args.titles, args.context)
    lengths = torch.randint(low, high + 1, (args.batch, 1), generator=gen)
    mask = (torch.arange(args.context).unsqueeze(0) < lengths).long()
    ids = torch.randint(1, args.vocab, (args.batch, args.context), generator=gen) * mask
    return {"pixel_values": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen),
            "input_ids": ids, "attention_mask": mask, "group": torch.arange(args.batch) // 2}


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
            "intermediate_size": 4 * args.text_width, "max_position_embeddings": args.context,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # open_clip has none
    image = {"model_type": "vit", "hidden_size": args.width, "num_hidden_layers": args.layers,
             "num_attention_heads": args.heads, "intermediate_size": 4 * args.width,
             "image_size": args.image_size, "patch_size": args.patch}
    config = DualEncoderConfig(text_tower="scratch", text_hf_config=text, image_tower="vit",
                               image_hf_config=image, image_size=args.image_size,
                               max_length=args.context, embed_dim=args.embed_dim, pretrained=False)
    tokenizer = train_tokenizer([f"word{i}" for i in range(50)], 100)
    model = DualEncoder.build(config, tokenizer=tokenizer)
    apply_memory_options(model, TrainConfig(grad_checkpointing=args.grad_checkpointing,
                                            compile=bool(args.compile)), print)
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
            "compile": args.compile, "context": args.context, "titles": args.titles,
            "params_m": n_params / 1e6, "step_s": seconds, "pairs_per_s": args.batch / seconds,
            "peak_rss_mib": peak, "step_mib": peak - built, "loss": loss}


MODEL_FLAGS = ("width", "layers", "heads", "patch", "image_size", "text_width", "text_layers",
               "text_heads", "context", "vocab", "embed_dim")


@dataclass(frozen=True)
class Config:
    """One row of a table: run for each side; open_clip ignores ``chunk``."""

    batch: int
    precision: str = "fp32"
    compile: bool = False
    grad_checkpointing: bool = False
    micro: int | None = None
    chunk: int | None = None
    titles: str | None = None  # None: the suite's --titles
    context: int | None = None  # None: the suite's --context
    steps: int | None = None  # None: --steps
    warmup: int | None = None  # None: --warmup


SUITES = {
    # issue 15: plain and compiled at the matched model, titles of 10-30 tokens in CLIP's context
    "compile": [Config(256), Config(256, compile=True), Config(4096, steps=1, warmup=1)],
    # issue 4's table: context 16, titles filling it
    "issue4": [Config(256, titles="full", context=16), Config(256, "bf16", titles="full", context=16),
               Config(256, grad_checkpointing=True, titles="full", context=16),
               Config(256, compile=True, titles="full", context=16),
               Config(4096, titles="full", context=16, steps=1, warmup=1),
               Config(4096, micro=256, chunk=1024, titles="full", context=16, steps=1, warmup=0),
               Config(16384, micro=512, chunk=2048, titles="full", context=16, steps=1, warmup=0)],
}


def _command(python: str, impl: str, config: Config, args) -> list[str]:
    command = [python, __file__, "--impl", impl, "--batch", str(config.batch),
               "--precision", config.precision,
               "--steps", str(config.steps if config.steps is not None else args.steps),
               "--warmup", str(config.warmup if config.warmup is not None else args.warmup),
               "--titles", config.titles or args.titles]
    for flag in MODEL_FLAGS:
        value = config.context if flag == "context" and config.context else getattr(args, flag)
        command.append(f"--{flag.replace('_', '-')}={value}")
    if config.micro:
        command += ["--micro", str(config.micro)]
    if config.chunk and impl == "eclip":
        command += ["--chunk", str(config.chunk)]
    if config.grad_checkpointing:
        command.append("--grad-checkpointing")
    if config.compile:
        command.append("--compile")
    return command


def _run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{_num(med)} ({_num(min(values))}-{_num(max(values))})" if len(values) > 1 else _num(med)


def suite(args) -> None:
    """Every row of the suite for each side, alternating sides and rows, ``--rounds`` times."""
    configs = SUITES[args.suite]
    pythons = {"eclip": args.eclip_python or sys.executable}
    if args.open_clip_python:
        pythons["open_clip"] = args.open_clip_python
    runs: dict[tuple[int, str], list[dict]] = {}
    loads = [_load()]
    for round_ in range(args.rounds):
        for k, config in enumerate(configs):
            # alternate which side goes first, so that neither always runs on a warmer machine
            order = list(pythons.items())
            if (round_ + k) % 2:
                order.reverse()
            for impl, python in order:
                row = _run(_command(python, impl, config, args))
                row.update(round=round_, config=k, impl=impl)
                runs.setdefault((k, impl), []).append(row)
                print(json.dumps(row), flush=True)
        loads.append(_load())
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, {date.today()}, {args.rounds} rounds; "
          f"load average (1, 5, 15 min) before and after each round: {' | '.join(loads)}; model: "
          + ", ".join(f"{flag}={getattr(args, flag)}" for flag in MODEL_FLAGS)
          + f", titles {args.titles}\n")
    print("| impl | batch | micro x streams | loss chunk | precision | options | titles / context "
          "| pairs/s median (min-max) | eclip / open_clip | peak RSS (MiB) | step memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, config in enumerate(configs):
        medians = {}
        for impl in pythons:
            good = [r for r in runs[(k, impl)] if "error" not in r]
            if good:
                medians[impl] = statistics.median(r["pairs_per_s"] for r in good)
        for impl in pythons:
            rows = runs[(k, impl)]
            good = [r for r in rows if "error" not in r]
            options = ", ".join(name for name in ("grad_checkpointing", "compile")
                                if getattr(config, name)) or "-"
            streams = f"{config.micro} x {config.batch // config.micro}" if config.micro else "-"
            titles = f"{config.titles or args.titles} / {config.context or args.context}"
            head = (f"| {impl} | {config.batch} | {streams} | "
                    f"{(config.chunk if impl == 'eclip' else None) or '-'} | {config.precision} "
                    f"| {options} | {titles}")
            if not good:
                print(f"{head} | failed: {rows[-1]['error']} | | | |")
                continue
            ratio = (f"{medians['eclip'] / medians['open_clip']:.2f}"
                     if impl == "eclip" and len(medians) == 2 else "")
            print(f"{head} | {_spread([r['pairs_per_s'] for r in good])} | {ratio} "
                  f"| {statistics.median(r['peak_rss_mib'] for r in good):.0f} "
                  f"| {_spread([r['step_mib'] for r in good])} |")
    if args.out:
        Path(args.out).write_text(json.dumps([r for rows in runs.values() for r in rows], indent=2),
                                  encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="?", const="compile", choices=sorted(SUITES),
                        help="run a table (default: compile, the plain and compiled step of issue 15)")
    parser.add_argument("--rounds", type=int, default=3, help="suite: times each row runs per side")
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
    parser.add_argument("--context", type=int, default=77)
    parser.add_argument("--titles", default="10-30",
                        help="tokens per title, LO-HI (padded to the context), or 'full'")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--embed-dim", type=int, default=128)
    args = parser.parse_args()
    if args.suite:
        suite(args)
    else:
        print(json.dumps(run_one(args)))


if __name__ == "__main__":
    main()
