"""LoRA (``train.lora``) against full fine-tuning of the same model: step memory, pairs/s, and the
five tasks on the demo catalog from a pretrained start (issue 22, item 3).

    nice -n 10 .venv/bin/python benchmarks/lora.py speed --out /tmp/bench_lora --threads 1
    nice -n 10 .venv/bin/python benchmarks/lora.py quality --out /tmp/bench_lora --threads 1
    .venv/bin/python benchmarks/lora.py speed --device cuda --models clip-b16 --batch 256 \
        --precision bf16 --steps 10 --rounds 3          # on a GPU machine (not run here)

**speed.** Two models, each trained one way or the other in a fresh process per measurement,
alternating full / LoRA, ``--rounds`` times: ``demo`` (the demo recipe's model: a scratch BERT,
256 wide, 2 layers, over a Unigram tokenizer of 8,000 pieces, and EfficientNet-Lite0 at 128 px;
full fine-tuning as the demo trains it: the text tower, the top two image blocks and the head from
cached activations; LoRA: adapters on the text tower's attention and MLP layers, the image tower
locked and cached the same way, the cut at the top two blocks dropped since they do not train) and
``clip-b16`` (a random transformers ``CLIPModel`` of ViT-B/16's shape, built from its config: vision
224 px, patch 16, 768 wide, 12 layers, 12 heads, MLP 3072; text 512 wide, 12 layers, 8 heads, MLP
2048, 77 positions, 49,408 tokens; projections 512; full: both towers train; LoRA: adapters on both
towers' attention and MLP layers). Batches are synthetic (random pixels, titles of the demo
catalog's kind padded per batch). LoRA: rank ``--rank``, alpha 2 x rank, no dropout. Per process:
one warm-up step, then ``--steps`` timed steps (pairs/s = batch / median step time). Memory, on the
CPU: the peak resident set of the process during the steps (VmHWM) minus the resident set before
the warm-up step (the step's own memory: activations, gradients, optimizer state), and, counted
exactly from the tensors after the steps, the bytes of the trainable parameters' gradients and
AdamW moments. On CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the steps.

**quality.** The start of ``benchmarks/from_checkpoint.py`` (its catalog, A / B split and start
CLIP, made with its functions and defaults, or reused from ``--start-from OUT`` of that script)
fine-tuned on B with catalog-aware targets, the same data, steps, batch, warm-up and photo-photo
term as that script's ``eclip`` run, two ways: ``full_ft`` (every weight, lr 3e-4, that script's
setting) and ``lora`` (adapters only: ``--rank``, alpha 2 x rank, on the attention and MLP layers of
both towers, lr ``--lora-lr``). The suite (five tasks x image / text / both) on the held-out test
catalogs, with the report's paired bootstrap intervals over test catalogs, compares ``lora`` with
``start`` and ``full_ft``. The report goes to OUT/eval, the summary to OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_throughput import _status  # a /proc/self/status memory field, in MiB

HERE = Path(__file__).resolve().parent
DEMO_MODEL = {"text_tower": "scratch", "scratch_hidden": 256, "scratch_layers": 2,
              "scratch_heads": 4, "scratch_vocab_size": 8000, "text_pooling": "mean",
              "max_length": 48, "image_tower": "efficientnet_lite0", "image_size": 128,
              "embed_dim": 256, "init_temperature": 0.07, "pretrained": False}
B16 = {"vision": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
       "text": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                    intermediate_size=2048, max_position_embeddings=77, vocab_size=49408),
       "projection_dim": 512}


def log(msg: str) -> None:
    print(msg, flush=True)


def _titles(count: int, seed: int = 0) -> list[str]:
    import random

    words = ("red blue cotton shirt denim jeans slim wireless earbuds case leather wallet black "
             "running shoes white steel bottle kids winter jacket ceramic mug gaming mouse yoga mat "
             "나이키 에어맥스 가방 운동화 여성 남성 세트").split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) for _ in range(count)]


# ------------------------------------------------------------------------------------ models
def build_model(name: str, workdir: Path):
    """The DualEncoder ``name`` (demo / clip-b16), its random weights seeded."""
    import torch

    from eclip.model import DualEncoder, DualEncoderConfig, from_checkpoint, train_tokenizer

    torch.manual_seed(0)
    if name == "demo":
        config = DualEncoderConfig(**DEMO_MODEL)
        tokenizer = train_tokenizer(_titles(3000), vocab_size=config.scratch_vocab_size)
        return DualEncoder.build(config, tokenizer=tokenizer)
    directory = workdir / "clip_b16"
    if not (directory / "config.json").is_file():
        sys.path.insert(0, str(HERE))
        from from_checkpoint import clip_tokenizer
        from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

        tokenizer = clip_tokenizer(_titles(3000), 4000, 77)
        config = CLIPConfig(text_config=dict(B16["text"], pad_token_id=tokenizer.pad_token_id,
                                             bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id),
                            vision_config=B16["vision"], projection_dim=B16["projection_dim"])
        CLIPModel(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                              resample=3).save_pretrained(directory)
    return from_checkpoint(directory)


def train_config(name: str, mode: str, rank: int, lr: float = 1e-4):
    """The train section of a run of ``mode`` (full / lora) on model ``name``."""
    from eclip.train.recipe import load_recipe

    overrides = [f"train.lr={lr}", "train.device=cpu"]
    if name == "demo":
        overrides += ["train.lock_image=true", "train.tower_lr_scale=0.3"]
        overrides += (["train.image_trainable_layers=3"] if mode == "full" else [])  # 2 blocks + head
    if mode == "lora":
        towers = "[text]" if name == "demo" else "[text, image]"
        overrides.append(f"train.lora={{rank: {rank}, alpha: {2 * rank}, targets: [attention, mlp], "
                         f"towers: {towers}}}")
    return load_recipe(None, overrides).train


# ------------------------------------------------------------------------------------- speed
def step_worker(args) -> dict:
    """One process: build, set up the trainable parts, one warm-up step, ``--steps`` timed ones."""
    import torch

    from eclip.config import use_threads
    from eclip.train.accumulate import Embedder, WholeBatchStep
    from eclip.train.features import pixel_input
    from eclip.train.lora import add_adapters
    from eclip.train.loss import ContrastiveLoss
    from eclip.train.optim import param_groups, prepare_finetune
    from eclip.train.precision import Precision

    use_threads(args.threads or None)
    device = torch.device(args.device)
    model = build_model(args.models[0], Path(args.out))
    cfg = train_config(args.models[0], args.mode, args.rank)
    prepare_finetune(model, cfg)
    add_adapters(model, cfg.lora, cfg.seed)
    gen = torch.Generator().manual_seed(0)
    size, rows = model.config.image_size, args.batch
    batch = {**model.tokenize(_titles(rows, seed=1)),
             "group": torch.arange(rows) // 2}
    image_input = pixel_input
    pixels = torch.randn(rows, 3, size, size, generator=gen)
    if cfg.lock_image:  # the demo's cached path: activations below the cut (or features), once
        blocks = cfg.image_cut_blocks
        with torch.no_grad():
            cached = model.image_tower.below(pixels, blocks) if blocks else model.image_tower(pixels)

        def cached_input(model, batch):  # what CachedImageInput does with ImageFeatureCache.pooled
            features = cached[batch["image_ref"]]
            return model.project_image(model.image_tower.above(features, blocks) if blocks
                                       else features)

        image_input = cached_input
        batch["image_ref"] = torch.arange(rows)
    else:
        batch["pixel_values"] = pixels
    model.to(device)
    if cfg.lock_image:
        cached = cached.to(device)
    batch = {k: v.to(device) for k, v in batch.items()}
    embedder = Embedder(model, image_input)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr)
    precision = Precision(args.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    step, loss_fn = WholeBatchStep(), ContrastiveLoss("catalog")
    model.train()

    def one() -> float:
        sync()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(embedder, [batch], loss_fn, precision)
        precision.step(optimizer, params, 1.0)
        sync()
        return time.perf_counter() - started

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _status("VmRSS")  # the model, its batch and cache: the step's memory comes on top
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one()  # warm-up
    times = [one() for _ in range(args.steps)]
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                      for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    return {"model": args.models[0], "mode": args.mode, "batch": rows,
            "pairs_per_s": rows / statistics.median(times), "step_s": times,
            "trainable": sum(p.numel() for p in params),
            "params": sum(p.numel() for p in model.parameters()),
            "grad_optim_mib": (state_bytes + grad_bytes) / 2 ** 20,
            "step_rss_mib": _status("VmHWM") - rss_before, "peak_rss_mib": _status("VmHWM"),
            "cuda_peak_mib": (torch.cuda.max_memory_allocated() / 2 ** 20
                              if device.type == "cuda" else None)}


def _loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def speed(args) -> None:
    rows: dict[tuple[str, str], list[dict]] = {}
    loads = [_loadavg()]
    for model in args.models:
        batch = args.batch or (64 if model == "demo" else 8)
        for round_ in range(args.rounds):
            for mode in ("full", "lora"):
                command = [sys.executable, __file__, "step", "--models", model, "--mode", mode,
                           "--batch", str(batch), "--steps", str(args.steps), "--rank",
                           str(args.rank), "--threads", str(args.threads), "--device", args.device,
                           "--precision", args.precision, "--out", args.out]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(done.stdout[-2000:] + done.stderr[-4000:])
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.setdefault((model, mode), []).append(row)
                loads.append(_loadavg())
                log(f"  {model} {mode} round {round_ + 1}: {row['pairs_per_s']:.2f} pairs/s, step "
                    f"RSS +{row['step_rss_mib']:.0f} MiB, grads + AdamW {row['grad_optim_mib']:.1f} "
                    f"MiB (load {loads[-1]})")
    lines = ["| model | training | trainable / all parameters | pairs/s, median (min-max) | "
             "step memory: RSS growth, MiB | gradients + AdamW moments, MiB |"
             + (" CUDA peak, MiB |" if args.device == "cuda" else ""),
             "|---|---|---|---|---|---|" + ("---|" if args.device == "cuda" else "")]
    for (model, mode), runs in rows.items():
        speeds = [r["pairs_per_s"] for r in runs]
        rss = [r["step_rss_mib"] for r in runs]
        first = runs[0]
        line = (f"| {model} (batch {first['batch']}) | {mode} | {first['trainable'] / 1e6:.2f} M / "
                f"{first['params'] / 1e6:.1f} M | {statistics.median(speeds):.2f} "
                f"({min(speeds):.2f}-{max(speeds):.2f}) | {statistics.median(rss):.0f} "
                f"({min(rss):.0f}-{max(rss):.0f}) | {first['grad_optim_mib']:.1f} |")
        if args.device == "cuda":
            line += f" {statistics.median(r['cuda_peak_mib'] for r in runs):.0f} |"
        lines.append(line)
    table = "\n".join(lines)
    log(table)
    log(f"load averages (1, 5, 15 min) before and after each process: {'; '.join(loads)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(table + "\n\nload: " + "; ".join(loads) + "\n", encoding="utf-8")
    (out / "speed.json").write_text(json.dumps({f"{m}/{k}": v for (m, k), v in rows.items()},
                                               indent=1), encoding="utf-8")


# ----------------------------------------------------------------------------------- quality
def make_start(args, out: Path):
    """The catalog, its A / B / val / test split and the start CLIP of from_checkpoint.py."""
    sys.path.insert(0, str(HERE))
    import from_checkpoint as fc

    from eclip.catalog.compose import ComposerConfig, TextComposer
    from eclip.catalog.config import DataConfig
    from eclip.catalog.demo import make_demo_catalog
    from eclip.catalog.load import load_catalog
    from eclip.catalog.splits import catalog_bucket, split_listings
    from eclip.model.export import export_model

    source = Path(args.start_from) if args.start_from else out
    catalog_file = source / "catalog" / "listings.jsonl"
    if not catalog_file.is_file():
        log(f"demo catalog: 3000 listings, 64 px -> {source / 'catalog'}")
        catalog_file = make_demo_catalog(source / "catalog", n_listings=3000, seed=0, image_size=64,
                                         progress=False)
    listings = load_catalog(DataConfig(catalog=str(catalog_file)), report_dir=out / "bad_rows",
                            progress=False, log=log).listings
    splits = split_listings(listings, DataConfig())
    part_a = [x for x in splits.train if catalog_bucket(x.group_id, fc.SALT) < 0.5]
    part_b = [x for x in splits.train if catalog_bucket(x.group_id, fc.SALT) >= 0.5]
    start_dir = source / "start_clip"
    if not (start_dir / "config.json").is_file():
        log("start CLIP: random CLIPModel, plain CLIP targets on A, 20 epochs (from_checkpoint.py)")
        composer = TextComposer(ComposerConfig())
        random_dir = fc.make_random_clip(
            source / "random_clip", [composer.compose(x) for x in part_a], image_size=64, patch=16,
            hidden=128, layers=4, projection=128, vocab_size=4000, max_length=64, seed=0)
        pre = fc.recipe_for(random_dir, source / "runs" / "pretrain", targets="clip", epochs=20,
                            lr=1e-3, batch_size=64, per_group=1, seed=0, warmup=20, extra=[])
        pretrained = fc.run_training("pretrain", pre, part_a, splits.val, {})
        export_model(pretrained, start_dir, format="transformers")
    return listings, splits, part_b, start_dir


def quality(args) -> None:
    import shutil

    import torch

    sys.path.insert(0, str(HERE))
    import from_checkpoint as fc

    from eclip.model import load_model
    from eclip.tasks.context import EvalConfig
    from eclip.tasks.suite import run_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    started = time.perf_counter()
    listings, splits, part_b, start_dir = make_start(args, out)
    timings = {"start": round(time.perf_counter() - started, 1)}
    models = {"start": load_model(start_dir)}
    steps_per_epoch = max(len(part_b) // 64, 1)
    lora = (f"train.lora={{rank: {args.rank}, alpha: {2 * args.rank}, targets: [attention, mlp], "
            "towers: [text, image]}")
    for name, lr, extra in (("full_ft", 3e-4, []), ("lora", args.lora_lr, [lora])):
        run_dir = out / "runs" / name
        if name == "full_ft" and args.full_from:  # the same run, made by an earlier invocation
            models[name] = load_model(args.full_from)
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        recipe = fc.recipe_for(start_dir, run_dir, targets="catalog", epochs=10, lr=lr,
                               batch_size=64, per_group=2, seed=0,
                               warmup=min(20, steps_per_epoch),
                               extra=["train.image_image_weight=0.5", *extra])
        log(f"fine-tuning {name} on B: 10 epochs, lr {lr} (load {_loadavg()})")
        models[name] = fc.run_training(name, recipe, part_b, splits.val, timings)
    eval_dir = out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)
    log(f"evaluation suite on the held-out test catalogs (load {_loadavg()})")
    began = time.perf_counter()
    report = run_suite(
        models, listings, config=EvalConfig(tower_features=[]), out_dir=eval_dir,
        title="LoRA vs full fine-tuning from a CLIP checkpoint: held-out catalogs", progress=False,
        log=log, meta={"args": vars(args)},
        notes=["start: from_checkpoint.py's start CLIP; full_ft: every weight fine-tuned on "
               "catalogs B with catalog-aware targets; lora: the same run with only LoRA adapters "
               "(attention and MLP layers of both towers) training."]).report
    timings["eval"] = round(time.perf_counter() - began, 1)
    report.meta["seconds"] = timings
    report.write(eval_dir)
    summary = report.summary_markdown()
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    log(summary)
    log(f"wall times (s): {timings}; load {_loadavg()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["speed", "quality", "step"])
    parser.add_argument("--out", default="/tmp/bench_lora")
    parser.add_argument("--models", nargs="+", default=["demo", "clip-b16"],
                        choices=["demo", "clip-b16"])
    parser.add_argument("--mode", choices=["full", "lora"], default="full", help="(step only)")
    parser.add_argument("--batch", type=int, default=0,
                        help="pairs per step (0: 64 for demo, 8 for clip-b16)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha: 2 x rank)")
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--start-from", default=None,
                        help="the --out of benchmarks/from_checkpoint.py: reuse its catalog and start")
    parser.add_argument("--full-from", default=None,
                        help="(quality) the full_ft model folder of an earlier run: not trained again")
    args = parser.parse_args(argv)
    if args.phase == "step":
        print(json.dumps(step_worker(args)))
    elif args.phase == "speed":
        speed(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
