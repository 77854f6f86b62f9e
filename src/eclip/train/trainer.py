"""The training loop, readable top to bottom.

One step: unit batches from the data source (several listings of a catalog together) -> image and
text embeddings on every rank -> the contrastive loss over the global batch with catalog-aware (or
plain CLIP) targets -> AdamW step with clipping, warm-up + cosine learning rate scaled by the
batch-size schedule. Choices that vary between runs are objects handed to the loop, not flags tested
inside it:

- the data source: listings in memory or prepared shards streamed from disk (``sources``);
- where image embeddings come from: pixels through the tower, or a locked tower's cached features
  (``features``);
- the embedding step: one pass over the batch, or multi-stream accumulation (``accumulate``);
- the loss: targets, chunking, global negatives across ranks (``loss``);
- the precision: fp32, or bf16 / fp16 autocast (``precision``);
- the batch-size schedule and its learning-rate rule (``batch_schedule``).

Under torchrun every rank runs this loop on its slice of each global batch (DDP averages the
gradients); rank 0 writes metrics, checkpoints and the model.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing
from eclip.config import to_dict
from eclip.errors import ConfigError, EclipError
from eclip.encode import embed_listings, recall_at_k
from eclip.encode.images import ImageFeatureCache, caches_locked_tower, eval_transform
from eclip.train.accumulate import Embedder, EmbeddingStep, MultiStreamStep, WholeBatchStep
from eclip.train.batch_schedule import BatchSchedule, build_lr_scheduler
from eclip.train.checkpoint import load_checkpoint, save_checkpoint
from eclip.train.data import Collator, ListingDataset
from eclip.train.distributed import (DistEnv, barrier, gather_objects, init_distributed,
                                     wrap_data_parallel)
from eclip.train.features import CachedImageInput, ImageInput, pixel_input
from eclip.train.loss import ContrastiveLoss
from eclip.train.precision import Precision
from eclip.train.recipe import Recipe, TrainConfig
from eclip.train.sampler import CatalogBatchSampler
from eclip.train.sources import DataSource, ListingSource, ShardSource

MAX_BAD_STEPS = 5  # consecutive skipped steps (non-finite loss or gradients) that stop the run


@dataclass
class TrainResult:
    model: Any
    model_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # validation metrics (rank 0)
    rank: int = 0  # the process's rank in a torchrun job


class MetricsLog:
    """Metrics to ``metrics.jsonl`` and, where tensorboard is installed, to TensorBoard."""

    def __init__(self, directory: Path, enabled: bool = True):
        self.path = directory / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:  # ranks other than 0 log nothing
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:  # tensorboard is a dependency, but a trimmed install still trains
            self.tb = None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
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
    """Heads at ``lr``; towers at ``lr * tower_lr_scale`` (the image tower at ``image_lr_scale``
    when set); no decay on biases and norms."""
    cfg = recipe.train
    scales = {"": 1.0, "text_tower.": cfg.tower_lr_scale,
              "image_tower.": cfg.tower_lr_scale if cfg.image_lr_scale is None else cfg.image_lr_scale}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = next((p for p in ("text_tower.", "image_tower.") if name.startswith(p)), "")
        no_decay = param.ndim < 2 or name == "log_scale"
        groups.setdefault((part, no_decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr * scales[part],
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (part, no_decay), params in sorted(groups.items())
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


@dataclass
class DataPlan:
    """The data source of a run and where its image embeddings come from."""

    source: DataSource
    image_input: ImageInput
    image_cache: ImageFeatureCache | None = None


def listing_data(recipe: Recipe, model, listings: list[Listing], val_listings: list[Listing],
                 composer: TextComposer, unit: int, env: DistEnv,
                 image_cache: ImageFeatureCache | None) -> DataPlan:
    """Listings in memory: global unit batches of ``unit x ranks`` rows, this rank's slice of each.

    A locked image tower (without augmentation) is served from features computed once."""
    cfg = recipe.train
    if not listings:
        raise EclipError("no training listings: check the catalog's split column or val_fraction")
    transform = model.config.image_transform(train=recipe.data.augment)
    use_cache = caches_locked_tower(cfg.lock_image, cfg.cache_locked_features, recipe.data.augment)
    dataset = ListingDataset(listings, composer, transform, seed=cfg.seed,
                             images_as_refs=use_cache)
    image_input: ImageInput = pixel_input
    if use_cache:
        if image_cache is None:
            image_cache = ImageFeatureCache.compute(
                model, dataset.image_paths + [p for x in val_listings for p in x.images],
                eval_transform(model),
                top_blocks=cfg.image_trainable_blocks,
                batch_size=cfg.eval_batch_size, progress=cfg.progress and env.is_main)
        image_cache.check(model)
        image_input = CachedImageInput(image_cache, dataset.image_paths)
        image_input.features = image_input.features.to(env.device)
    sampler = CatalogBatchSampler(dataset.groups, unit * env.world_size,
                                  per_group=cfg.per_group, seed=cfg.seed, drop_last=True)
    if len(sampler) == 0:
        raise EclipError(f"{len(listings)} training listings do not fill one batch of "
                         f"{unit * env.world_size}: lower train.batch_size")
    source = ListingSource(dataset, sampler, Collator(model.tokenize), rank=env.rank,
                           world_size=env.world_size, num_workers=cfg.num_workers, seed=cfg.seed)
    return DataPlan(source, image_input, image_cache)


def shard_data(recipe: Recipe, model, composer: TextComposer, unit: int, env: DistEnv) -> DataPlan:
    """Prepared shards (``data.shards``) streamed by every rank from its own part of them."""
    from eclip.train.stream import ShardStream

    cfg = recipe.train
    transform = model.config.image_transform(train=recipe.data.augment)
    stream = ShardStream(recipe.data.shards, transform=transform, composer=composer, seed=cfg.seed,
                         shuffle_buffer=recipe.data.shuffle_buffer, rank=env.rank,
                         world_size=env.world_size, split=recipe.data.train_split,
                         per_group=cfg.per_group)
    loader = stream.loader(unit, num_workers=cfg.num_workers, collate_fn=Collator(model.tokenize),
                           drop_last=True)
    return DataPlan(ShardSource(loader), pixel_input)


def apply_memory_options(model, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Gradient checkpointing and ``torch.compile`` of the towers, as the recipe asks."""
    if cfg.grad_checkpointing:
        enabled = model.enable_gradient_checkpointing()
        missing = [name for name, done in enabled.items() if not done]
        if missing:
            log(f"gradient checkpointing is not available in the {' and '.join(missing)} tower; "
                "it keeps its activations")
    if cfg.compile:
        # in place: parameter names (and so checkpoints and saved models) stay the same
        model.text_tower.compile()
        model.image_tower.compile()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def train(recipe: Recipe, model, train_listings: list[Listing], val_listings: list[Listing] = (),
          *, image_cache: ImageFeatureCache | None = None, resume: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    cfg = recipe.train
    env = init_distributed(cfg.device)
    if not env.is_main:
        log = _silent
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed + env.rank)  # every rank draws its own dropout masks, reproducibly

    model.set_trainable(image=not cfg.lock_image, text=not cfg.lock_text,
                        image_top_blocks=cfg.image_trainable_blocks)
    model.config.text_composer = dict(recipe.data.text)
    composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
    schedule = BatchSchedule.from_recipe(cfg.batch_size, cfg.batch_schedule, cfg.lr_scaling)
    unit = schedule.unit_rows(env.world_size, cfg.micro_batch_size)  # rows per rank per unit
    if recipe.data.shards:
        data = shard_data(recipe, model, composer, unit, env)
    else:
        data = listing_data(recipe, model, list(train_listings), list(val_listings), composer, unit,
                            env, image_cache)
    model.to(env.device)  # after the feature cache, which is computed on the CPU
    apply_memory_options(model, cfg, log)
    total_steps = schedule.steps_for_units(cfg.epochs * data.source.units_per_epoch, unit,
                                           env.world_size)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if total_steps < 1:
        raise EclipError(f"{cfg.epochs} epoch(s) of {data.source.units_per_epoch} unit batches do not "
                         f"fill one step of {schedule.batch_size(0)}: lower train.batch_size")

    loss_fn = ContrastiveLoss(cfg.targets, loss=cfg.loss, chunk_size=cfg.loss_chunk_size,
                              local_loss=cfg.local_loss, text_text=cfg.text_text_weight,
                              image_image=cfg.image_image_weight)
    logit_bias = getattr(model, "logit_bias", None)
    if cfg.loss == "sigmoid" and logit_bias is None:
        raise ConfigError("train.loss 'sigmoid' needs a model with a logit_bias parameter")
    if isinstance(logit_bias, torch.nn.Parameter):
        # only the sigmoid loss uses the bias: under softmax it would get no gradient (DDP needs one)
        logit_bias.requires_grad_(cfg.loss == "sigmoid")
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=cfg.lr)
    scheduler = build_lr_scheduler(optimizer, schedule, total_steps=total_steps,
                                   warmup_steps=min(cfg.warmup_steps, total_steps // 2),
                                   min_ratio=cfg.min_lr_ratio)
    precision = Precision(cfg.precision, env.device)
    pad_token_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    embed_step: EmbeddingStep = (MultiStreamStep(pad_token_id) if cfg.micro_batch_size
                                 else WholeBatchStep(pad_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_dir = out_dir / "checkpoints"
    step, bad_steps, history = 0, 0, []

    state = load_checkpoint(ckpt_dir) if resume else None
    if state is not None:
        step = _restore(state, model, optimizer, scheduler, precision, data.source, env)
        log(f"resumed from {ckpt_dir / 'last.pt'} at step {step}")
    elif resume:
        log(f"no checkpoint in {ckpt_dir}: starting from scratch")
    # DDP broadcasts rank 0's weights, so every rank starts from the same model.
    embedder = wrap_data_parallel(Embedder(model, data.image_input), env)
    if env.is_main:
        (out_dir / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2), encoding="utf-8")
    log(f"{env.world_size} rank(s) on {env.device.type}; contrastive batch {schedule.batch_size(step)} "
        f"= {unit} rows x {schedule.units(step, unit, env.world_size)} unit(s) x {env.world_size} "
        f"rank(s); {total_steps} steps")

    def checkpoint() -> None:
        rng_states = gather_objects(torch.get_rng_state())
        positions = gather_objects(data.source.state_dict())
        if env.is_main:
            save_checkpoint(ckpt_dir, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "precision": precision.state_dict(),
                "data": positions, "torch_rng": rng_states, "step": step,
            })

    def validation(epoch: int) -> None:
        if env.is_main:
            values = validate(model, list(val_listings), composer, image_cache=data.image_cache,
                              batch_size=cfg.eval_batch_size)
            values["epoch"] = epoch
            metrics.write(step, values)
            history.append({"step": step, **values})
            log(f"epoch {epoch}: " + ", ".join(f"{k}={v:.3f}" for k, v in values.items()
                                               if k.startswith("val/") and k.endswith(("@1", "@10"))))
        model.train()
        barrier()

    metrics = MetricsLog(out_dir, enabled=env.is_main)
    bar = tqdm(total=total_steps, initial=step, desc=f"train ({cfg.targets})", unit="step",
               disable=not (cfg.progress and env.is_main))
    units = iter(data.source)
    first_step, validated_at = step, None
    model.train()
    try:
        while step < total_steps:
            t_wait = time.perf_counter()
            epoch = data.source.epoch
            batch = [_to_device(next(units), env.device)
                     for _ in range(schedule.units(step, unit, env.world_size))]
            t_step = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = embed_step(embedder, batch, loss_fn, precision)
            grad_norm = precision.step(optimizer, params, cfg.grad_clip) if math.isfinite(loss) else None
            if grad_norm is None:  # the same decision on every rank: loss and gradients are global
                bad_steps += 1
                what = "loss" if not math.isfinite(loss) else "grad"
                metrics.write(step, {f"skipped_nonfinite_{what}": 1, "epoch": epoch})
                log(f"step {step + 1}: non-finite {what}; step skipped, its batch consumed")
                if bad_steps >= MAX_BAD_STEPS:
                    raise EclipError(
                        f"{bad_steps} consecutive steps with a non-finite loss or gradients after "
                        f"step {step}: stopping. Lower train.lr, use train.precision=fp32, or check "
                        f"the data; --resume continues from the last checkpoint")
                continue
            bad_steps = 0
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                step_s = time.perf_counter() - t_step
                values = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                          "logit_scale": model.logit_scale().item(), "epoch": epoch,
                          **({"logit_bias": model.logit_bias.item()} if cfg.loss == "sigmoid" else {}),
                          "batch_size": schedule.batch_size(step - 1), "data_wait_s": t_step - t_wait,
                          "step_s": step_s, "pairs_per_s": schedule.batch_size(step - 1) / step_s}
                metrics.write(step, values)
                bar.set_postfix(loss=f"{loss:.3f}")
            if step % cfg.checkpoint_every == 0:
                checkpoint()
            if data.source.epoch != epoch and val_listings:  # this step finished an epoch
                validation(data.source.epoch - 1)
                validated_at = step
        if val_listings and step > first_step and validated_at != step:
            validation(data.source.epoch)
    finally:
        bar.close()
        metrics.close()
    checkpoint()
    model_dir = Path(cfg.model_dir) if cfg.model_dir else out_dir / "model"
    if env.is_main:
        model.save_pretrained(model_dir)
        log(f"saved {model_dir} after {step} steps")
    barrier()
    return TrainResult(model=model, model_dir=model_dir, steps=step, history=history, rank=env.rank)


def _restore(state: dict[str, Any], model, optimizer, scheduler, precision: Precision,
             source: DataSource, env: DistEnv) -> int:
    """Load a checkpoint into the run's objects; returns its step."""
    ranks = len(state["data"])
    if ranks != env.world_size:
        raise ConfigError(f"the checkpoint was written by a job of {ranks} rank(s): resume it with "
                          f"{ranks} (this job has {env.world_size})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state["precision"])
    source.load_state_dict(state["data"][env.rank])
    torch.set_rng_state(state["torch_rng"][env.rank])
    return int(state["step"])


def _silent(message: str) -> None:
    """The log of ranks other than 0."""
