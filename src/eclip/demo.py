"""``eclip demo``: generate the demo catalog, align three ways, evaluate on held-out catalogs.

Three models share the same towers: ``baseline`` (the towers before alignment), ``clip`` (trained
with identity targets) and ``eclip`` (catalog-aware targets). The evaluation is the suite of
``eclip eval`` (``eclip.tasks.suite``: five tasks, image / text / both, with the TF-IDF reference),
which reads the baseline as its towers' features; ``evaluate`` is the quick retrieval + zero-shot
check that benchmarks use.

``seeds=N`` (``eclip demo --seeds N``) trains clip and eclip N times, with ``train.seed`` = the
recipe's seed, +1, ..., +N-1 (the first is the one-seed demo's run), each from the *same* baseline:
the towers are built once, so the spread across seeds is that of the training runs (batch order,
text dropout, augmentation, dropout masks) and each seed's clip and eclip start from the same
weights, and the baseline is evaluated once. The suite reports every row of clip and eclip as the
mean over the seeds ± their std (``eclip.tasks.seeds``). Models go to ``models/NAME/seedS``.

The training runs go side by side, one process each, where the process has a torch thread per
run (``jobs``, ``eclip demo --jobs N``; ``eclip.train.concurrent``): each run's weights are those
it would learn alone on the same threads. The phase table shows the training phase's wall time
and each run's own.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.demo import make_demo_catalog
from eclip.catalog.load import load_catalog
from eclip.catalog.schema import Listing
from eclip.catalog.splits import split_listings
from eclip.config import bundled_recipe, to_dict
from eclip.encode import ImageFeatureCache, caches_locked_tower, image_cache_for
from eclip.errors import ConfigError
from eclip.mining import hide_catalog_ids as hidden_ids
from eclip.tasks.context import EvalConfig
from eclip.tasks.report import Report
from eclip.tasks.suite import run_suite
from eclip.train.recipe import Recipe, load_recipe
from eclip.train.concurrent import Run, check_jobs, train_runs
from eclip.train.run import build_model

MODELS = (("clip", "clip"), ("eclip", "catalog"))  # (model name, loss targets)
# --hide-catalog-ids: the training listings lose their catalog ids (kept for scoring only); clip
# trains without them, eclip_mined on catalogs mined from the baseline (data.catalog_source=mined),
# and eclip on the true ids, as the reference of what mining could reach. (name, targets, source)
HIDDEN_ID_MODELS = (("clip", "clip", "hidden"), ("eclip", "catalog", "given"),
                    ("eclip_mined", "catalog", "mined"))


class PhaseClock:
    """Seconds per phase of the demo, in order (``report.json``'s ``meta.phase_seconds``); the
    evaluation's phases are the suite's own laps (``meta.eval_seconds``). ``parts``: what a phase
    is made of, shown under it and not counted again (``train``: each run's own seconds; side by
    side they add up to more than the phase)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.parts: dict[str, dict[str, float]] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        counted = sum(v for k, v in self.seconds.items() if k.startswith("eval ")) \
            if name == "eval other" else 0.0
        self.seconds[name] = round(max(now - self._clock - counted, 0.0), 1)
        self._clock = now

    def table(self, total: float) -> str:
        width = max(len(k) for k in self.seconds) if self.seconds else 5
        lines = [f"phase times ({total:.0f} s in all):"]
        for k, v in self.seconds.items():
            lines.append(f"  {k:<{width}}  {v:7.1f} s")
            lines += [f"    {name:<{width - 2}}  {part:7.1f} s  (its own time)"
                      for name, part in self.parts.get(k, {}).items()]
        return "\n".join(lines)


@dataclass
class DemoResult:
    report: Report
    out_dir: Path
    seconds: float


def prepare_demo_catalog(out_dir: Path, recipe: Recipe, *, listings: int, seed: int,
                         progress: bool, log: Callable[[str], None]):
    """Generate, read and split the demo catalog; the recipe's ``data.catalog`` is set to it."""
    catalog_file = make_demo_catalog(out_dir / "catalog", n_listings=listings, seed=seed,
                                     image_size=recipe.model.image_size,
                                     progress=progress)
    read = load_catalog(DataConfig(catalog=str(catalog_file)), report_dir=out_dir,
                        progress=progress, log=log)
    splits = split_listings(read.listings, recipe.data)
    log(f"splits by catalog: {len(splits.train)} train, {len(splits.val)} val, "
        f"{len(splits.test)} test listings")
    recipe.data.catalog = str(catalog_file)
    return read, splits


def locked_image_cache(recipe: Recipe, model, listings: list[Listing], *,
                       progress: bool) -> ImageFeatureCache | None:
    """Features of a locked image tower for every image, shared by all models built on it."""
    cfg = recipe.train
    if not caches_locked_tower(cfg.lock_image, cfg.cache_locked_features, recipe.data.augment):
        return None
    return image_cache_for(model, [p for x in listings for p in x.images], [],
                           top_blocks=cfg.image_cut_blocks, progress=progress,
                           desc="image features (locked part of the tower)")


def _variant(recipe: Recipe, targets: str, source: str, train_listings: list[Listing]
             ) -> tuple[Recipe, list[Listing]]:
    """A model's recipe and training listings: the catalog's own ids (``given``), none
    (``hidden``), or mined from the baseline (``mined``: training ignores the catalog's ids, and
    the mining report scores the mined groups against them)."""
    run = copy.deepcopy(recipe)
    run.train.targets = targets
    if source == "mined":
        run.data.catalog_source = "mined"
    return run, hidden_ids(train_listings) if source == "hidden" else train_listings


def _eval_config(base: EvalConfig | None, hide_catalog_ids: bool) -> EvalConfig:
    """The demo's evaluation settings (``base``, or the defaults); with hidden catalog ids, mined
    e-CLIP is the subject, compared with the baselines and with e-CLIP on the true ids."""
    config = copy.deepcopy(base) if base is not None else EvalConfig()
    if hide_catalog_ids:
        config.compare = [[m, r] for m in ("eclip", "eclip_mined") for r in ("baseline", "clip")]
        config.compare.append(["eclip_mined", "eclip"])
        config.subject = "eclip_mined"
    return config


def run_demo(out_dir: str | Path = "demo_out", *, listings: int = 3000, seed: int = 0,
             seeds: int = 1, recipe: Recipe | None = None, overrides: list[str] | None = None,
             hide_catalog_ids: bool = False, eval_config: EvalConfig | None = None,
             jobs: int | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> DemoResult:
    """The demo into ``out_dir``. ``jobs``: the training runs side by side in that many
    processes, this process's torch threads shared among them (None: one per thread, at most one
    per run; 1: one after the other here; ``eclip.train.concurrent``)."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1 (training seeds), got {seeds!r}")
    check_jobs(jobs)  # a bad --jobs fails here, not after the catalog and the towers
    started = time.perf_counter()
    out_dir = Path(out_dir)
    recipe = recipe or load_recipe(bundled_recipe("demo"), overrides)
    recipe.train.progress = progress
    torch.manual_seed(seed)
    phases = PhaseClock()

    log(f"[1/4] demo catalog: {listings} listings -> {out_dir / 'catalog'}")
    read, splits = prepare_demo_catalog(out_dir, recipe, listings=listings, seed=seed,
                                        progress=progress, log=log)
    phases.lap("catalog")

    log("[2/4] towers before alignment (baseline)")
    baseline = build_model(recipe, splits.train)
    baseline.save_pretrained(out_dir / "models" / "baseline")
    phases.lap("towers")
    image_cache = locked_image_cache(recipe, baseline, read.listings, progress=progress)
    phases.lap("tower features")

    trained: dict = {"baseline": baseline}
    train_seeds = [recipe.train.seed + k for k in range(seeds)]
    models = HIDDEN_ID_MODELS if hide_catalog_ids else [(n, t, "given") for n, t in MODELS]
    runs = []
    wheres: dict[str, list[str]] = {}  # each model's runs, one per seed
    for name, targets, source in models:
        for train_seed in train_seeds:
            where = name if seeds == 1 else f"{name}/seed{train_seed}"
            wheres.setdefault(name, []).append(where)
            run, train_listings = _variant(recipe, targets, source, splits.train)
            run.train.seed = train_seed
            run.train.output_dir = str(out_dir / "runs" / where)
            run.train.model_dir = str(out_dir / "models" / where)
            runs.append(Run(where, run, train_listings))
    log(f"[3/4] training {len(runs)} runs: " + "; ".join(
        f"'{name}' ({targets} targets" + (f", catalog ids {source}" if hide_catalog_ids else "")
        + ")" for name, targets, source in models)
        + (f", each with train.seed={', '.join(map(str, train_seeds))}" if seeds > 1 else ""))
    results = train_runs(runs, baseline, splits.val, image_cache=image_cache, jobs=jobs, log=log)
    phases.lap("train")
    phases.parts["train"] = {r.name: r.seconds for r in results}
    by_name = {r.name: r.model for r in results}
    for name, names in wheres.items():
        trained[name] = by_name[name] if seeds == 1 else [by_name[w] for w in names]

    log("[4/4] evaluation suite: five tasks x image/text/both on held-out catalogs")
    caches = [image_cache] if image_cache is not None else None
    meta = {"train_listings": len(splits.train), "seed": seed, "recipe": to_dict(recipe)}
    notes = ["baseline: the towers before alignment; clip: trained with identity targets; "
             "eclip: trained with catalog-aware targets (same towers, recipe and data)."]
    config = _eval_config(eval_config, hide_catalog_ids)
    if hide_catalog_ids:
        meta["hide_catalog_ids"] = True
        notes.append("catalog ids hidden from training (kept for scoring): clip trained without "
                     "them, eclip_mined on catalogs mined from the baseline's vectors "
                     "(data.catalog_source=mined; runs/eclip_mined/mining.json), eclip on the true "
                     "ids as the reference of what mining could reach.")
    if seeds > 1:
        meta["train_seeds"] = train_seeds
        notes.append(f"clip and eclip: {seeds} training runs each, train.seed = "
                     f"{', '.join(map(str, train_seeds))}, all from the same baseline towers "
                     "(built once); models in models/NAME/seedS.")
    report = run_suite(
        trained, read.listings, config=config, image_caches=caches, out_dir=out_dir,
        title="eclip demo: held-out catalogs" + (f" ({seeds} training seeds)" if seeds > 1
                                                  else ""),
        progress=progress, log=log, meta=meta, notes=notes).report
    for name, value in report.meta.get("eval_seconds", {}).items():
        if name != "total":
            phases.seconds[f"eval {name}"] = value
    phases.lap("eval other")  # what the suite's own laps leave: the splits, views, report files
    report.meta["phase_seconds"] = phases.seconds
    report.meta["train_seconds"] = phases.parts["train"]
    seconds = time.perf_counter() - started
    report.meta["seconds"] = round(seconds, 1)
    report.write(out_dir)
    log(report.summary_markdown())
    log(phases.table(seconds))
    log(f"full report: {out_dir / 'report.md'}, {out_dir / 'report.html'}")
    return DemoResult(report, out_dir, seconds)
