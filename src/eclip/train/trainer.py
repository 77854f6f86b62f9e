"""The training loop, readable top to bottom.

One step: a batch of listings (several of a catalog together) -> image and text embeddings -> the
contrastive loss with catalog-aware (or plain CLIP) targets -> AdamW step with clipping and the
warm-up + cosine schedule. Choices that vary between runs are objects handed to the loop (the loss,
where image embeddings come from), not flags tested inside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.images import ImageTransform
from eclip.catalog.schema import Listing
from eclip.config import to_dict
from eclip.errors import EclipError
from eclip.tasks.embed import embed_listings
from eclip.tasks.retrieval import recall_at_k
from eclip.train.checkpoint import load_checkpoint, save_checkpoint
from eclip.train.data import Collator, ListingDataset
from eclip.train.features import CachedImageInput, ImageFeatureCache, pixel_input
from eclip.train.loss import ContrastiveLoss
from eclip.train.recipe import Recipe
from eclip.train.sampler import CatalogBatchSampler
from eclip.train.schedule import build_scheduler

MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


@dataclass
class TrainResult:
    model: Any
    model_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


class MetricsLog:
    """Metrics to ``metrics.jsonl`` and, where tensorboard is installed, to TensorBoard."""

    def __init__(self, directory: Path):
        self.path = directory / "metrics.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
            self.tb = None

    def write(self, step: int, values: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def param_groups(model, recipe: Recipe) -> list[dict[str, Any]]:
    """Heads at ``lr``; unlocked towers at ``lr * tower_lr_scale``; no decay on biases and norms."""
    cfg = recipe.train
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_tower = name.startswith(("text_tower.", "image_tower."))
        no_decay = param.ndim < 2 or name == "log_scale"
        groups.setdefault((in_tower, no_decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr * (cfg.tower_lr_scale if in_tower else 1.0),
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (in_tower, no_decay), params in sorted(groups.items())
    ]


def validate(model, listings: list[Listing], composer: TextComposer, *, image_cache=None,
             batch_size: int = 128) -> dict[str, float]:
    emb = embed_listings(model, listings, composer, batch_size=batch_size,
                         image_cache=image_cache, progress=False)
    groups = [x.group_id for x in listings]
    t2i = recall_at_k(emb.text, emb.image, groups, groups)
    i2t = recall_at_k(emb.image, emb.text, groups, groups)
    out = {f"val/t2i_R@{k}": v for k, v in t2i.items()}
    out.update({f"val/i2t_R@{k}": v for k, v in i2t.items()})
    return out


def train(recipe: Recipe, model, train_listings: list[Listing], val_listings: list[Listing] = (),
          *, image_cache: ImageFeatureCache | None = None, resume: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    cfg = recipe.train
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if not train_listings:
        raise EclipError("no training listings: check the catalog's split column or val_fraction")

    model.set_trainable(image=not cfg.lock_image, text=not cfg.lock_text)
    model.config.text_composer = dict(recipe.data.text)
    composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
    mc = model.config
    transform = ImageTransform(mc.image_size, tuple(mc.image_mean), tuple(mc.image_std),
                               train=recipe.data.augment)
    use_cache = cfg.lock_image and cfg.cache_locked_features and not recipe.data.augment
    dataset = ListingDataset(train_listings, composer, transform, seed=cfg.seed, train=True,
                             images_as_refs=use_cache)
    image_input = pixel_input
    if use_cache:
        if image_cache is None:
            image_cache = ImageFeatureCache.compute(
                model, dataset.image_paths + [p for x in val_listings for p in x.images],
                ImageTransform(mc.image_size, tuple(mc.image_mean), tuple(mc.image_std)),
                batch_size=cfg.eval_batch_size, progress=cfg.progress)
        image_cache.check(model)
        image_input = CachedImageInput(image_cache, dataset.image_paths)

    sampler = CatalogBatchSampler([x.catalog_id for x in train_listings], cfg.batch_size,
                                  per_group=cfg.per_group, seed=cfg.seed, drop_last=True)
    # The loader gets its own generator: drawing worker seeds from the global RNG would shift the
    # dropout masks of a resumed run.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(model.tokenize),
                        num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise EclipError(f"{len(train_listings)} training listings do not fill one batch of "
                         f"{cfg.batch_size}: lower train.batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=cfg.lr)
    scheduler = build_scheduler(optimizer, total_steps=total_steps,
                                warmup_steps=min(cfg.warmup_steps, total_steps // 2),
                                min_ratio=cfg.min_lr_ratio)
    loss_fn = ContrastiveLoss(cfg.targets)
    ckpt_dir = out_dir / "checkpoints"
    step, bad_steps, history = 0, 0, []

    state = load_checkpoint(ckpt_dir) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
        log(f"resumed from {ckpt_dir / 'last.pt'} at step {step}")
    elif resume:
        log(f"no checkpoint in {ckpt_dir}: starting from scratch")
    (out_dir / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2), encoding="utf-8")

    # The loop's own position: with DataLoader workers the sampler runs ahead of the loop.
    position = dict(sampler.state_dict())

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "sampler": dict(position),
            "torch_rng": torch.get_rng_state(), "step": step,
        })

    metrics = MetricsLog(out_dir)
    bar = tqdm(total=total_steps, initial=step, desc=f"train ({cfg.targets})", unit="step",
               disable=not cfg.progress)
    start_epoch = position["epoch"]
    model.train()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if step >= total_steps:
                break
            if state is None or epoch != start_epoch:
                sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            position.update(epoch=epoch, batches_done=sampler.state_dict()["batches_done"])
            t_wait = time.perf_counter()
            for batch in loader:
                t_step = time.perf_counter()
                position["batches_done"] += 1
                image_emb = image_input(model, batch)
                text_emb = model.encode_text(batch["input_ids"], batch["attention_mask"])
                loss = loss_fn(image_emb, text_emb, model.logit_scale(), batch["group"])
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad_steps += 1
                    metrics.write(step, {"skipped_nonfinite_loss": 1})
                    if bad_steps >= MAX_BAD_STEPS:
                        raise EclipError(f"{bad_steps} consecutive non-finite losses at step {step}: "
                                         "lower train.lr or check the data")
                    continue
                bad_steps = 0
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total_steps:
                    values = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                              "grad_norm": float(grad_norm), "logit_scale": model.logit_scale().item(),
                              "epoch": epoch, "data_wait_s": t_step - t_wait,
                              "step_s": time.perf_counter() - t_step}
                    metrics.write(step, values)
                    bar.set_postfix(loss=f"{values['loss']:.3f}")
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
                if step >= total_steps:
                    break
                t_wait = time.perf_counter()
            else:
                position.update(epoch=epoch + 1, batches_done=0)
            if val_listings:
                values = validate(model, list(val_listings), composer, image_cache=image_cache,
                                  batch_size=cfg.eval_batch_size)
                model.train()
                values["epoch"] = epoch
                metrics.write(step, values)
                history.append({"step": step, **values})
                log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.3f}" for k, v in values.items()
                                                   if k.startswith("val/") and k.endswith(("@1", "@10"))))
    finally:
        bar.close()
        metrics.close()
    checkpoint()
    model_dir = Path(cfg.model_dir) if cfg.model_dir else out_dir / "model"
    model.save_pretrained(model_dir)
    log(f"saved {model_dir} after {step} steps")
    return TrainResult(model=model, model_dir=model_dir, steps=step, history=history)
