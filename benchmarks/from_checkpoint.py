"""Start from a team's CLIP checkpoint and fine-tune it on the team's catalog: what do catalog-aware
targets add over the start, on catalogs neither saw? (issue 10)

    .venv/bin/python benchmarks/from_checkpoint.py --out /tmp/bench_from_checkpoint --threads 1

(defaults: ``--listings 3000 --image-size 64 --seed 0 --a-share 0.5 --patch 16 --hidden 128
--layers 4 --pre-epochs 20 --pre-lr 1e-3 --epochs 10 --lr 3e-4 --batch-size 64``; ``--threads 1``
because on a 2-core machine shared with other jobs two torch threads were 3-4x slower than one;
``--reuse-start`` keeps OUT/catalog and OUT/start_clip and reruns only fine-tuning + evaluation,
``--ft train.x=y`` adds overrides to both fine-tuning runs, ``--quick`` is a small smoke run.)

1. **Catalog.** The demo catalog (``make_demo_catalog``, 3,000 listings, 64 px images, ``--seed``)
   with its own split column. Its ``test`` catalogs are held out from everything (tokenizer,
   pretraining, fine-tuning, validation); its ``val`` catalogs validate every training run. Its
   ``train`` catalogs are divided by a stable hash of the catalog id (``catalog_bucket(group_id,
   "from_checkpoint:")`` < ``--a-share``) into **A**, the "public" catalogs the starting CLIP is
   pretrained on, and **B**, the team's own catalog that it is fine-tuned on.
2. **The CLIP the team starts from** (``OUT/start_clip``), made here because there is no hub:
   a randomly initialised transformers ``CLIPModel`` (``CLIPModel(config)`` with transformers'
   own initialisation, ``torch.manual_seed(seed)``): ViT image tower 64 px, patch 16, hidden 128,
   4 layers, 4 heads, MLP 512; causal text tower hidden 128, 4 layers, 4 heads, MLP 512, 64
   positions; projections 128; logit scale log(1/0.07). Its tokenizer is a BPE tokenizer (NFKC,
   lower case, whitespace/punctuation pre-split, 4,000 pieces, ``<|startoftext|> ... <|endoftext|>``)
   trained on the composed texts of the A listings only; its image processor a
   ``CLIPImageProcessor`` (shortest edge 64, centre crop 64, bicubic, CLIP mean/std). That random
   checkpoint (``OUT/random_clip``) is trained by eclip from ``model.init_from`` with **plain CLIP
   targets** (``train.targets=clip``, ``train.per_group=1``: a plain shuffle, as web-scale CLIP
   training sees its pairs) on the A listings for ``--pre-epochs`` epochs at ``--pre-lr`` (batch
   64, 20 warm-up steps then cosine, weight decay 0.05, both towers trained, the demo recipe's text
   field dropout; validation on the val catalogs), and exported with
   ``export_model(format="transformers")`` to ``OUT/start_clip``: an ordinary ``CLIPModel``
   directory.
3. **Fine-tuning** from ``OUT/start_clip`` (``model.init_from``) on the B listings, twice with the
   same recipe, data and steps: ``train.targets=catalog`` (**eclip**) and ``train.targets=clip``
   (**clip_ft**, plain fine-tuning): ``--epochs`` epochs at ``--lr``, batch ``--batch-size``, two
   listings per catalog in a batch (``per_group=2``), warm-up one epoch (at most 20 steps) then
   cosine, weight decay 0.05, both towers trained, the demo recipe's text field dropout and
   photo-photo term (``image_image_weight=0.5``).
4. **Evaluation** with the suite (``run_suite``: category, attribute, matching, clustering, adult ×
   image / text / both) on the held-out test catalogs: ``start`` (the checkpoint directory itself,
   ``load_model(OUT/start_clip)``), ``clip_ft`` and ``eclip``. The report goes to
   ``OUT/eval`` (report.md / .json / .html); the summary and each phase's wall time are printed
   and written to ``OUT/summary.md`` and ``OUT/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.config import DataConfig
from eclip.catalog.demo import make_demo_catalog
from eclip.catalog.load import load_catalog
from eclip.catalog.splits import catalog_bucket, split_listings
from eclip.model import DualEncoder, load_model
from eclip.model.export import export_model
from eclip.tasks.context import EvalConfig
from eclip.tasks.suite import run_suite
from eclip.train.recipe import load_recipe
from eclip.train.run import build_model
from eclip.train.trainer import train

SALT = "from_checkpoint:"  # the A / B draw over the train catalogs
DROPOUT = "{brand: 0.3, category: 0.3, attributes: 0.3}"  # the demo recipe's data.text.field_dropout
SPECIALS = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ starting CLIP
def clip_tokenizer(texts: list[str], vocab_size: int, max_length: int):
    """A CLIP-style BPE tokenizer trained on ``texts``: ``<|startoftext|> pieces <|endoftext|>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                                       special_tokens=SPECIALS, show_progress=False))
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                   unk_token="<unk>", bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>")


def make_random_clip(directory: Path, texts: list[str], *, image_size: int, patch: int, hidden: int,
                     layers: int, projection: int, vocab_size: int, max_length: int, seed: int) -> Path:
    """A random transformers CLIPModel + tokenizer (trained on ``texts``) + image processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    tokenizer = clip_tokenizer(texts, vocab_size, max_length)
    tower = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                 num_attention_heads=max(hidden // 32, 1))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=max_length,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **tower),
        vision_config=dict(image_size=image_size, patch_size=patch, **tower),
        projection_dim=projection)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size},
                       resample=3).save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------ training
def recipe_for(init_from: Path, out: Path, *, targets: str, epochs: int, lr: float, batch_size: int,
               per_group: int, seed: int, warmup: int, extra: list[str]):
    overrides = [f"model.init_from={init_from}", f"data.text.field_dropout={DROPOUT}",
                 f"train.output_dir={out}", f"train.targets={targets}", f"train.epochs={epochs}",
                 f"train.lr={lr}", f"train.batch_size={batch_size}", f"train.per_group={per_group}",
                 f"train.seed={seed}", f"train.warmup_steps={warmup}", "train.weight_decay=0.05",
                 "train.device=cpu", "train.progress=false", "train.log_every=10",
                 "train.checkpoint_every=100000", *extra]
    return load_recipe(None, overrides)


def run_training(name: str, recipe, listings, val, timings: dict) -> DualEncoder:
    started = time.perf_counter()
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, listings)
    result = train(recipe, model, listings, val, log=log)
    timings[name] = round(time.perf_counter() - started, 1)
    last = result.history[-1] if result.history else {}
    shown = ", ".join(f"{k}={v:.3f}" for k, v in last.items() if k.startswith("val/"))
    log(f"  {name}: {result.steps} steps in {timings[name]} s; last validation: {shown}")
    return result.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_from_checkpoint")
    parser.add_argument("--listings", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--a-share", type=float, default=0.5,
                        help="share of the train catalogs that pretrain the starting CLIP (A)")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--projection", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--pre-epochs", type=int, default=20, help="plain CLIP pretraining on A")
    parser.add_argument("--pre-lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning on B (both runs)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--ft", nargs="*", default=[],
                        help="extra recipe overrides for both fine-tuning runs (train.x=y)")
    parser.add_argument("--reuse-start", action="store_true",
                        help="keep an existing OUT/catalog and OUT/start_clip (fine-tune + eval only)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is faster on a shared machine")
    parser.add_argument("--quick", action="store_true", help="smoke run: 600 listings, 1 epoch each")
    args = parser.parse_args()
    if args.quick:
        args.listings, args.pre_epochs, args.epochs = 600, 1, 1

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    # 1. catalog and splits ------------------------------------------------------------------
    catalog_file = out / "catalog" / "listings.jsonl"
    if not (args.reuse_start and catalog_file.is_file()):
        if out.exists() and not args.reuse_start:
            shutil.rmtree(out)
        log(f"[1/5] demo catalog: {args.listings} listings, {args.image_size} px -> {out / 'catalog'}")
        catalog_file = make_demo_catalog(out / "catalog", n_listings=args.listings, seed=args.seed,
                                         image_size=args.image_size, progress=False)
    listings = load_catalog(DataConfig(catalog=str(catalog_file)), report_dir=out / "catalog",
                            progress=False, log=log).listings
    splits = split_listings(listings, DataConfig())
    part_a = [x for x in splits.train if catalog_bucket(x.group_id, SALT) < args.a_share]
    part_b = [x for x in splits.train if catalog_bucket(x.group_id, SALT) >= args.a_share]
    catalogs = lambda rows: len({x.group_id for x in rows})  # noqa: E731
    log(f"  A (pretraining): {len(part_a)} listings / {catalogs(part_a)} catalogs; "
        f"B (fine-tuning): {len(part_b)} / {catalogs(part_b)}; val: {len(splits.val)} / "
        f"{catalogs(splits.val)}; test (held out): {len(splits.test)} / {catalogs(splits.test)}")
    lap("catalog")

    # 2. the CLIP the team starts from ---------------------------------------------------------
    start_dir = out / "start_clip"
    if not (args.reuse_start and (start_dir / "config.json").is_file()):
        log(f"[2/5] starting CLIP: random CLIPModel, plain CLIP targets on A, {args.pre_epochs} epochs")
        composer = TextComposer(ComposerConfig())
        random_dir = make_random_clip(
            out / "random_clip", [composer.compose(x) for x in part_a], image_size=args.image_size,
            patch=args.patch, hidden=args.hidden, layers=args.layers, projection=args.projection,
            vocab_size=args.vocab, max_length=args.max_length, seed=args.seed)
        pre = recipe_for(random_dir, out / "runs" / "pretrain", targets="clip", epochs=args.pre_epochs,
                         lr=args.pre_lr, batch_size=args.batch_size, per_group=1, seed=args.seed,
                         warmup=20, extra=[])
        pretrained = run_training("pretrain", pre, part_a, splits.val, timings)
        export_model(pretrained, start_dir, format="transformers")
        log(f"  exported to {start_dir} (transformers CLIPModel)")
    lap("start_clip")

    # 3. fine-tuning on B, twice -----------------------------------------------------------------
    models = {"start": load_model(start_dir)}
    steps_per_epoch = max(len(part_b) // args.batch_size, 1)
    for name, targets in (("clip_ft", "clip"), ("eclip", "catalog")):
        log(f"[{3 if name == 'clip_ft' else 4}/5] fine-tuning '{name}' ({targets} targets) on B: "
            f"{args.epochs} epochs, lr {args.lr}")
        run_dir = out / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        recipe = recipe_for(start_dir, run_dir, targets=targets, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, per_group=2, seed=args.seed,
                            warmup=min(20, steps_per_epoch), extra=["train.image_image_weight=0.5",
                                                                     *args.ft])
        models[name] = run_training(name, recipe, part_b, splits.val, timings)
    lap("fine-tuning")

    # 4. evaluation on the held-out test catalogs ----------------------------------------------
    log("[5/5] evaluation suite on the held-out test catalogs")
    eval_dir = out / "eval"
    shutil.rmtree(eval_dir, ignore_errors=True)
    meta = {"args": vars(args), "listings": {"A": len(part_a), "B": len(part_b),
                                             "val": len(splits.val), "test": len(splits.test)}}
    report = run_suite(
        models, listings, config=EvalConfig(tower_features=[]), out_dir=eval_dir,
        title="from a CLIP checkpoint: held-out catalogs", progress=False, log=log, meta=meta,
        notes=["start: the CLIPModel checkpoint the team starts from (random CLIP trained with plain "
               "CLIP targets on catalogs A); clip_ft / eclip: it fine-tuned on catalogs B with CLIP / "
               "catalog-aware targets (same recipe and steps); test catalogs are in none of them."]
    ).report
    lap("eval")
    timings["total"] = round(time.perf_counter() - started, 1)
    report.meta["seconds"] = timings
    report.write(eval_dir)

    summary = report.summary_markdown()
    (out / "summary.md").write_text(summary + "\n", encoding="utf-8")
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    log(summary)
    log("wall times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    log(f"full report: {eval_dir / 'report.md'}, {eval_dir / 'report.html'}")


if __name__ == "__main__":
    main()
