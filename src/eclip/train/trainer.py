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
- the batch-size schedule and its learning-rate rule (``batch_schedule``);
- what trains: the towers' layer groups (``optim``), or LoRA adapters only (``lora``: added after
  the loss, merged back into a plain model when the model is saved).

Setting a run up is separate from running it: :func:`setup` builds a :class:`TrainingRun` (the
data plan, optimizer, scheduler, loss, embedding step, precision, metrics, and the checkpoint it
resumes from) in an order that fixes the run's random draws; :meth:`TrainingRun.train` is the loop
(steps, logging, checkpoints, validation, the saved model). :func:`train` is the two together.
Where checkpoints live and how a run continues from one is ``resume``.

Under torchrun every rank runs this loop on its slice of each global batch (DDP averages the
gradients, or FSDP shards weights, gradients and optimizer: ``train.parallel``, a strategy from
``distributed`` / ``fsdp``); rank 0 writes metrics, checkpoints and the model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from eclip.atomic import write_text_atomic
from eclip.catalog.compose import ComposerConfig, TextComposer
from eclip.catalog.schema import Listing
from eclip.config import to_dict
from eclip.errors import ConfigError, EclipError
from eclip.encode import embed_listings, recall_at_k, resolve_fusion_weight, title_composer
from eclip.encode.images import ImageFeatureCache, caches_locked_tower, eval_transform
from eclip.train.accumulate import Embedder, EmbeddingStep, MultiStreamStep, WholeBatchStep
from eclip.train.batch_schedule import BatchSchedule, build_lr_scheduler, too_few_rows
from eclip.train.fingerprint import data_fingerprint
from eclip.train.data import Collator, ListingDataset, loader_workers
from eclip.train.distributed import (DataParallel, DistEnv, barrier, gather_objects,
                                     init_distributed, rank_log)
from eclip.train.fsdp import parallel_strategy
from eclip.train.features import CachedImageInput, ImageInput, pixel_input
from eclip.train.lora import add_adapters, merge_adapters
from eclip.train.loss import ContrastiveLoss
from eclip.train.mined import train_on_mined_catalogs
from eclip.train.neighbours import batch_order, shard_batch_order
from eclip.model.merge import WiseFT
from eclip.train.optim import param_groups, prepare_finetune, top_of_image_tower
from eclip.train.precision import Precision
from eclip.train.recipe import Recipe, TrainConfig
from eclip.train.resume import CHECKPOINTS, clean_run_temps, resume_state, resume_step
from eclip.train.sampler import CatalogBatchSampler
from eclip.train.sources import DataSource, ListingSource, OnDevice, ShardSource

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

    def __init__(self, directory: Path, enabled: bool = True, start_step: int = 0):
        self.path = directory / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:  # ranks other than 0 log nothing
            return
        self.trim(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
            # a resumed run: TensorBoard drops the events after the checkpoint, as metrics.jsonl
            self.tb = SummaryWriter(str(directory / "tensorboard"),
                                    purge_step=start_step + 1 if start_step else None)
        except ImportError:  # the extra tensorboard is not installed: metrics.jsonl only
            self.tb = None

    def trim(self, start_step: int) -> None:
        """Keep the rows a run starting at ``start_step`` has not logged again: a resumed run
        replays the steps after its checkpoint (their rows, and the skipped steps logged at the
        checkpoint's step, would be there twice); a run from step 0 starts an empty log."""
        if not self.path.is_file():
            return
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):  # a line cut by a kill: not kept
                dropped += 1
                continue
            replayed = step > start_step or (step == start_step and any(
                key.startswith("skipped_nonfinite") for key in row))
            if replayed or start_step == 0:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            write_text_atomic(self.path, "".join(kept))

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
    transform = model.config.image_transform(train=recipe.data.augment,
                                             crop_resample=recipe.data.crop_resample)
    use_cache = caches_locked_tower(cfg.lock_image, cfg.cache_locked_features, recipe.data.augment)
    dataset = ListingDataset(listings, composer, transform, seed=cfg.seed,
                             max_pixels=recipe.data.max_pixels, images_as_refs=use_cache)
    image_input: ImageInput = pixel_input
    if use_cache:
        if image_cache is None:
            image_cache = ImageFeatureCache.compute(
                model, dataset.image_paths + [p for x in val_listings for p in x.images],
                eval_transform(model),
                top_blocks=cfg.image_cut_blocks,
                batch_size=cfg.eval_batch_size, progress=cfg.progress and env.is_main)
        image_cache.check(model)
        image_input = CachedImageInput(image_cache, dataset.image_paths)
        image_input.features = image_input.features.to(env.device)
    # data.batching: random, or hard (neighbourhoods from the model before training)
    order = batch_order(recipe.data, model, listings, dataset.groups, image_cache=image_cache,
                        batch_size=cfg.eval_batch_size, fsdp=cfg.parallel == "fsdp")
    sampler = CatalogBatchSampler(dataset.groups, unit * env.world_size, per_group=cfg.per_group,
                                  seed=cfg.seed, drop_last=True, order=order)
    if len(sampler) == 0:
        raise EclipError(too_few_rows(len(listings), unit, env.world_size, cfg.batch_size,
                                      cfg.batch_schedule, cfg.micro_batch_size))
    source = ListingSource(dataset, sampler, Collator(model.tokenize), rank=env.rank,
                           world_size=env.world_size, seed=cfg.seed,
                           num_workers=loader_workers(cfg.num_workers, photos=not use_cache,
                                                      epoch_batches=len(sampler)))
    return DataPlan(OnDevice(source, env.device), image_input, image_cache)


def shard_data(recipe: Recipe, model, composer: TextComposer, unit: int, env: DistEnv) -> DataPlan:
    """Prepared shards (``data.shards``) streamed by every rank from its own part of them."""
    from eclip.train.stream import ShardStream

    cfg = recipe.train
    # data.batching=hard: batches planned in each shuffle buffer from the start model's vectors
    order = shard_batch_order(recipe.data, model, unit, embed_batch_size=cfg.eval_batch_size,
                              progress=cfg.progress and env.is_main)
    transform = model.config.image_transform(train=recipe.data.augment,
                                             crop_resample=recipe.data.crop_resample)
    stream = ShardStream(recipe.data.shards, transform=transform, composer=composer, seed=cfg.seed,
                         shuffle_buffer=recipe.data.shuffle_buffer, rank=env.rank,
                         world_size=env.world_size, split=recipe.data.train_split,
                         per_group=cfg.per_group, batch_order=order)
    workers = loader_workers(cfg.num_workers, photos=True,
                             epoch_batches=stream.samples_per_rank // unit)
    loader = stream.loader(unit, num_workers=workers, collate_fn=Collator(model.tokenize),
                           drop_last=True)
    return DataPlan(OnDevice(ShardSource(loader), env.device), pixel_input)


def apply_memory_options(model, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Gradient checkpointing and ``torch.compile`` of the towers, as the recipe asks."""
    if cfg.grad_checkpointing:
        enabled = model.enable_gradient_checkpointing()
        missing = [name for name, done in enabled.items() if not done]
        if missing:
            log(f"gradient checkpointing is not available in the {' and '.join(missing)} tower; "
                "it keeps its activations")
    if compile_wanted(cfg, next(model.parameters()).device):
        model.compile_towers()


def compile_wanted(cfg: TrainConfig, device: torch.device) -> bool:
    """``train.compile``: true, false, or ``auto``: on CUDA with DDP. On the CPU compiling costs
    minutes and wins only for long runs of dropout-free towers (docs/BENCHMARKS.md); FSDP's
    sharded blocks stay uncompiled."""
    if cfg.compile == "auto":
        return device.type == "cuda" and cfg.parallel == "ddp"
    return bool(cfg.compile)


def train(recipe: Recipe, model, train_listings: list[Listing], val_listings: list[Listing] = (),
          *, image_cache: ImageFeatureCache | None = None, resume: bool = False,
          log: Callable[[str], None] = print, env: DistEnv | None = None) -> TrainResult:
    """Train ``model`` on ``train_listings`` as ``recipe`` says: :func:`setup`, then
    :meth:`TrainingRun.train`. ``env``: the job's :class:`DistEnv` where the caller has joined the
    process group already (else it is joined here)."""
    if recipe.data.catalog_source != "given":  # catalogs mined from the start model first
        env = env if env is not None else init_distributed(recipe.train.device)

        def train_once(run_recipe: Recipe, run_model, listings: list[Listing]) -> TrainResult:
            return setup(run_recipe, run_model, listings, val_listings, image_cache=image_cache,
                         resume=resume, env=env, log=log).train()

        return train_on_mined_catalogs(recipe, model, list(train_listings), env, train_once,
                                       image_cache=image_cache, resume=resume, log=log)
    run = setup(recipe, model, train_listings, val_listings, image_cache=image_cache, resume=resume,
                env=env, log=log)
    return run.train()


@dataclass
class TrainingRun:
    """A run set up and ready to go: what :func:`setup` built, and the loop's progress.

    ``step``, ``bad_steps`` and ``history`` move as :meth:`train` runs; everything else is fixed.
    """

    recipe: Recipe
    model: Any
    env: DistEnv
    log: Callable[[str], None]
    out_dir: Path
    composer: TextComposer
    val_listings: list[Listing]
    schedule: BatchSchedule
    unit: int  # rows per rank per unit batch
    data: DataPlan
    total_steps: int
    loss_fn: ContrastiveLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    embed_step: EmbeddingStep
    params: list[torch.nn.Parameter]  # the trainable ones, clipped together
    embedder: torch.nn.Module  # the model (and image input) as the loss sees it; DDP under torchrun
    step: int = 0
    bad_steps: int = 0  # consecutive skipped steps
    history: list[dict[str, Any]] = field(default_factory=list)
    wise: WiseFT | None = None  # train.wise_alpha: the weights before training, merged at the end
    fingerprint: dict[str, Any] | None = None  # of the training data, saved in checkpoints
    # train.parallel: DDP (train/distributed.py DataParallel) or FSDP (train/fsdp.py)
    parallel: Any = None
    metrics: MetricsLog = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = MetricsLog(self.out_dir, enabled=self.env.is_main, start_step=self.step)
        if self.metrics.enabled and self.metrics.tb is None:
            self.log("metrics to metrics.jsonl only: TensorBoard's files need the extra "
                     "(pip install 'eclip[tensorboard]')")
        if self.parallel is None:
            self.parallel = DataParallel(self.env)

    @property
    def cfg(self) -> TrainConfig:
        return self.recipe.train

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def announce(self) -> None:
        """The recipe to OUTPUT_DIR/recipe.json (rank 0) and the run's shape to the log."""
        env, schedule, unit = self.env, self.schedule, self.unit
        if env.is_main:
            write_text_atomic(self.out_dir / "recipe.json",
                              json.dumps(to_dict(self.recipe), indent=2))
        self.log(f"{env.world_size} rank(s) on {env.device.type}; contrastive batch "
                 f"{schedule.batch_size(self.step)} = {unit} rows x "
                 f"{schedule.units(self.step, unit, env.world_size)} unit(s) x {env.world_size} "
                 f"rank(s); {self.total_steps} steps")

    def train(self) -> TrainResult:
        """The loop: steps until ``total_steps``, validation after each epoch (and at the end),
        checkpoints every ``checkpoint_every`` steps and at the end; then the model is saved."""
        cfg = self.cfg
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train ({cfg.targets})",
                   unit="step", disable=not (cfg.progress and self.env.is_main))
        units = iter(self.data.source)
        first_step, validated_at = self.step, None
        self.model.train()
        try:
            while self.step < self.total_steps:
                epoch = self.data.source.epoch
                if not self.train_step(units, epoch, bar):
                    continue
                if self.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                if self.data.source.epoch != epoch and self.val_listings:  # the step ended an epoch
                    self.validation(self.data.source.epoch - 1)
                    validated_at = self.step
            if self.val_listings and self.step > first_step and validated_at != self.step:
                self.validation(self.data.source.epoch)
        finally:
            bar.close()
            self.metrics.close()
        self.checkpoint()
        return self.save()

    def train_step(self, units: Iterator[dict[str, Any]], epoch: int, bar) -> bool:
        """One optimizer step on the next batch; False where a non-finite loss or gradient made
        it skip the update (its batch consumed)."""
        env, schedule = self.env, self.schedule
        t_wait = time.perf_counter()
        batch = [next(units) for _ in range(schedule.units(self.step, self.unit, env.world_size))]
        t_step = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.embed_step(self.embedder, batch, self.loss_fn, self.precision)
        grad_norm = (self.precision.step(self.optimizer, self.params, self.cfg.grad_clip)
                     if math.isfinite(loss) else None)
        if grad_norm is None:  # the same decision on every rank: loss and gradients are global
            self.skip_step(loss, epoch)
            return False
        self.bad_steps = 0
        self.scheduler.step()
        self.step += 1
        bar.update(1)
        if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
            self.log_step(loss, grad_norm, epoch, t_step - t_wait, time.perf_counter() - t_step)
            bar.set_postfix(loss=f"{loss:.3f}")
        return True

    def skip_step(self, loss: float, epoch: int) -> None:
        """Log a skipped step; too many in a row stop the run."""
        self.bad_steps += 1
        what = "loss" if not math.isfinite(loss) else "grad"
        self.metrics.write(self.step, {f"skipped_nonfinite_{what}": 1, "epoch": epoch})
        self.log(f"step {self.step + 1}: non-finite {what}; step skipped, its batch consumed")
        if self.bad_steps >= MAX_BAD_STEPS:
            raise EclipError(
                f"{self.bad_steps} consecutive steps with a non-finite loss or gradients after "
                f"step {self.step}: stopping. Lower train.lr, use train.precision=fp32, or check "
                f"the data; --resume continues from the last checkpoint")

    def log_step(self, loss: float, grad_norm: float, epoch: int, wait_s: float,
                 step_s: float) -> None:
        batch_size = self.schedule.batch_size(self.step - 1)
        values = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                  "logit_scale": self.model.logit_scale().item(), "epoch": epoch,
                  **({"logit_bias": self.model.logit_bias.item()} if self.loss_fn.loss == "sigmoid"
                     else {}),
                  "batch_size": batch_size, "data_wait_s": wait_s, "step_s": step_s,
                  "pairs_per_s": batch_size / step_s}
        self.metrics.write(self.step, values)

    def checkpoint(self) -> None:
        """Every rank's RNG states (the CPU's, and the GPU's on CUDA) and data position, and the model, optimizer, scheduler and
        precision state, to ``checkpoints/last.pt`` (rank 0 writes) or, sharded, to
        ``checkpoints/last.dcp/`` (FSDP: every rank writes its shards)."""
        rng_states = gather_objects(torch.get_rng_state())
        # dropout on a GPU draws from the device's generator: without it a resume is not exact
        cuda_rng = gather_objects(torch.cuda.get_rng_state(self.env.device)
                                  if self.env.device.type == "cuda" else None)
        positions = gather_objects(self.data.source.state_dict())
        self.parallel.save_checkpoint(self.ckpt_dir, {
            "scheduler": self.scheduler.state_dict(), "precision": self.precision.state_dict(),
            "data": positions, "torch_rng": rng_states, "cuda_rng": cuda_rng, "step": self.step,
            "data_fingerprint": self.fingerprint,
        }, self.model, self.optimizer)

    def validation(self, epoch: int) -> None:
        """Retrieval on the validation listings (rank 0), logged and kept in ``history``."""
        with self.parallel.full_model(self.model) as model:  # FSDP: gathered onto rank 0
            if self.env.is_main:
                values = validate(model, list(self.val_listings), self.composer,
                                  image_cache=self.data.image_cache,
                                  batch_size=self.cfg.eval_batch_size)
                values["epoch"] = epoch
                self.metrics.write(self.step, values)
                self.history.append({"step": self.step, **values})
                self.log(f"epoch {epoch}: " + ", ".join(
                    f"{k}={v:.3f}" for k, v in values.items()
                    if k.startswith("val/") and k.endswith(("@1", "@10"))))
        self.model.train()
        barrier()

    def choose_fusion_weight(self, model=None) -> None:
        """The model's fusion weight (``model.fusion_weight``: the image's share of its "both"
        vector, served by ``eclip embed`` and search, read by ``eclip eval``), chosen on the
        validation catalogs with their titles as the text: what the evaluation reads, and the hard
        case (a composed text that names category and attributes ranks a catalog's listings
        together at almost any weight, which would leave the choice to ties); without validation
        listings it stays unset."""
        model = self.model if model is None else model
        if not self.val_listings:
            return
        emb = embed_listings(model, self.val_listings, title_composer(model),
                             progress=False, image_cache=self.data.image_cache,
                             batch_size=self.cfg.eval_batch_size)
        weight, _ = resolve_fusion_weight(None, emb.image, emb.text,
                                          [x.group_id for x in self.val_listings])
        model.config.fusion_weight = weight
        self.log(f"fusion weight {weight:g} (image share of the fused vector, chosen on validation "
                 "catalogs)")

    def save(self) -> TrainResult:
        """The trained model to ``train.model_dir`` (default OUTPUT_DIR/model), by rank 0."""
        cfg = self.cfg
        model_dir = Path(cfg.model_dir) if cfg.model_dir else self.out_dir / "model"
        with self.parallel.full_model(self.model) as model:  # FSDP: on rank 0, None elsewhere
            if model is not None:  # train.lora: the adapters folded in, a plain model saved
                merge_adapters(model)
            if self.wise is not None:  # WiSE-FT: the checkpoint keeps the trained weights
                if model is not None:
                    self.wise.apply(model)
                alpha = self.wise.alpha
                self.log(f"WiSE-FT: the saved model is {1 - alpha:g} x the start + {alpha:g} x "
                         "the trained")
            if self.env.is_main:
                self.choose_fusion_weight(model)
                model.save_pretrained(model_dir)
                self.log(f"saved {model_dir} after {self.step} steps")
        barrier()
        return TrainResult(model=self.model if model is None else model, model_dir=model_dir,
                           steps=self.step,
                           history=self.history, rank=self.env.rank)


def setup(recipe: Recipe, model, train_listings: list[Listing], val_listings: list[Listing] = (),
          *, image_cache: ImageFeatureCache | None = None, resume: bool = False,
          env: DistEnv | None = None, log: Callable[[str], None] = print) -> TrainingRun:
    """Everything a run needs, in the order that fixes its random draws: seeds, trainable parts,
    the data plan (and a locked tower's feature cache), the step count, loss, optimizer, scheduler
    and precision; then the last checkpoint restored (``resume``) and the model wrapped for the job.

    ``env``: the job's :class:`DistEnv` where the caller has joined the process group already."""
    cfg = recipe.train
    env = env if env is not None else init_distributed(cfg.device)
    log = rank_log(env, log)
    if (resolved := top_of_image_tower(cfg, model, log)) is not cfg:  # one knob for every tower
        recipe, cfg = replace(recipe, train=resolved), resolved
    parallel = parallel_strategy(cfg, env)  # DDP or FSDP
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if env.is_main:
        clean_run_temps(out_dir, cfg)
    # what the run trains on; a resumed run checks it against its checkpoint before anything else
    fingerprint = data_fingerprint(recipe, list(train_listings), list(val_listings))
    state = resume_state(out_dir / CHECKPOINTS, resume, fingerprint, out_dir, log, parallel)
    torch.manual_seed(cfg.seed + env.rank)  # every rank draws its own dropout masks, reproducibly

    wise = prepare_finetune(model, cfg)  # the towers' locked layers; the start for wise_alpha
    loss_fn = build_loss(cfg, model)  # (under the sigmoid loss the logit bias trains)
    add_adapters(model, cfg.lora, cfg.seed, log)  # train.lora: only the adapters train
    model.config.text_composer = dict(recipe.data.text)
    composer = TextComposer(ComposerConfig.from_dict(recipe.data.text))
    schedule = BatchSchedule.from_recipe(cfg.batch_size, cfg.batch_schedule, cfg.lr_scaling)
    unit = schedule.unit_rows(env.world_size, cfg.micro_batch_size)  # rows per rank per unit
    data = data_plan(recipe, model, train_listings, val_listings, composer, unit, env, image_cache)
    model.to(env.device)  # after the feature cache, which is computed on the CPU
    apply_memory_options(model, cfg, log)
    total_steps = count_steps(cfg, schedule, data.source.units_per_epoch, unit, env.world_size)
    # DDP broadcasts rank 0's weights, so every rank starts from the same model; FSDP shards it in
    # place (its parameters are new ones: the optimizer comes after)
    embedder = parallel.wrap(model, Embedder(model, data.image_input))
    optimizer = torch.optim.AdamW(param_groups(model, recipe), lr=cfg.lr)
    scheduler = build_lr_scheduler(optimizer, schedule, total_steps=total_steps,
                                   warmup_steps=min(cfg.warmup_steps, total_steps // 2),
                                   min_ratio=cfg.min_lr_ratio)
    precision = Precision(cfg.precision, env.device)
    step = resume_step(out_dir / CHECKPOINTS, state, model, optimizer, scheduler, precision,
                       data.source, env, log, parallel)
    run = TrainingRun(
        recipe=recipe, model=model, env=env, log=log, out_dir=out_dir, composer=composer,
        val_listings=list(val_listings), schedule=schedule, unit=unit, data=data,
        total_steps=total_steps, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
        precision=precision, embed_step=parallel.step(embedding_step(cfg, model)),
        params=[p for p in model.parameters() if p.requires_grad], embedder=embedder, step=step,
        wise=wise, fingerprint=fingerprint, parallel=parallel)
    run.announce()
    return run


def data_plan(recipe: Recipe, model, train_listings: list[Listing], val_listings: list[Listing],
              composer: TextComposer, unit: int, env: DistEnv,
              image_cache: ImageFeatureCache | None) -> DataPlan:
    """Shards streamed from disk where ``data.shards`` is set, else the listings in memory."""
    if recipe.data.shards:
        return shard_data(recipe, model, composer, unit, env)
    return listing_data(recipe, model, list(train_listings), list(val_listings), composer, unit,
                        env, image_cache)


def count_steps(cfg: TrainConfig, schedule: BatchSchedule, units_per_epoch: int, unit: int,
                world_size: int) -> int:
    """Optimizer steps of the run: whole steps in ``epochs`` epochs, at most ``max_steps``."""
    if cfg.no_steps:  # run_training saves the initial model without coming here
        raise ConfigError(f"train.{'epochs' if cfg.epochs == 0 else 'max_steps'}=0: no step to "
                          "take; `eclip train` (run_training) saves the initial model as the "
                          "trained one in that case, the training loop needs at least one step")
    total_steps = schedule.steps_for_units(cfg.epochs * units_per_epoch, unit, world_size)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    if total_steps < 1:
        raise EclipError(f"{cfg.epochs} epoch(s) of {units_per_epoch} unit batches do not "
                         f"fill one step of {schedule.batch_size(0)}: lower train.batch_size")
    return total_steps


def loss_kind(cfg: TrainConfig, model) -> str:
    """``train.loss``, with ``auto`` resolved: the sigmoid loss for a model with SigLIP's heads
    (identity projections: a SigLIP checkpoint's start), softmax for every other model."""
    if cfg.loss != "auto":
        return cfg.loss
    config = getattr(model, "config", None)
    return "sigmoid" if getattr(config, "projection", "linear") == "identity" else "softmax"


def build_loss(cfg: TrainConfig, model) -> ContrastiveLoss:
    """The recipe's loss; the model's logit bias trains under the sigmoid loss only."""
    kind = loss_kind(cfg, model)
    loss_fn = ContrastiveLoss(cfg.targets, loss=kind, chunk_size=cfg.loss_chunk_size,
                              local_loss=cfg.local_loss, text_text=cfg.text_text_weight,
                              image_image=cfg.image_image_weight)
    logit_bias = getattr(model, "logit_bias", None)
    if kind == "sigmoid" and logit_bias is None:
        raise ConfigError("train.loss 'sigmoid' needs a model with a logit_bias parameter")
    if isinstance(logit_bias, torch.nn.Parameter):
        # only the sigmoid loss uses the bias: under softmax it would get no gradient (DDP needs one)
        logit_bias.requires_grad_(kind == "sigmoid")
    return loss_fn


def embedding_step(cfg: TrainConfig, model) -> EmbeddingStep:
    """Multi-stream accumulation where ``micro_batch_size`` is set, else one pass over the batch."""
    pad_token_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    return MultiStreamStep(pad_token_id) if cfg.micro_batch_size else WholeBatchStep(pad_token_id)
