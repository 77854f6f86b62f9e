"""The evaluation suite: embed a catalog once per model, run the five tasks, write the report.

    >>> result = run_suite({"eclip": model}, listings, out_dir="eval_out")   # doctest: +SKIP

Models are dual encoders by name; the ones named in ``EvalConfig.tower_features`` (``baseline`` by
default) are read as their towers' features. Probes read every model's tower features (the
representation, as linear probes of CLIP-style models do); the similarity tasks read the joint space.
The TF-IDF title reference joins the text modality.
``eclip eval`` (``run_eval``) reads model directories and a catalog through a recipe's data section.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from eclip.atomic import clean_stale_temps_below
from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.schema import Listing
from eclip.config import apply_overrides, from_dict, load_yaml, to_dict
from eclip.encode import ImageFeatureCache
from eclip.errors import ConfigError
from eclip.tasks import adult, attribute, category, clustering, ir, matching
from eclip.tasks.bootstrap import check_config, choose_subject, compare_models
from eclip.tasks.context import EvalConfig, TaskContext
from eclip.tasks.data import TASKS, eval_splits, task_availability
from eclip.tasks.report import Report
from eclip.tasks.seeds import SEP, base_name, expand_seeds, fold_rows, pool_outcomes
from eclip.tasks.views import clean_titles, listing_cache, model_views, tfidf_views

RUNNERS = {"category": category.run_category, "attribute": attribute.run_attribute,
           "matching": matching.run_matching, "clustering": clustering.run_clustering,
           "adult": adult.run_adult}
HEADLINES = {"category": category.HEADLINE, "attribute": attribute.HEADLINE,
             "matching": matching.HEADLINE, "clustering": clustering.HEADLINE,
             "adult": adult.HEADLINE, "retrieval": ir.HEADLINE}
TFIDF = "tfidf"
REFERENCES = [TFIDF, attribute.SPAN_MODEL]
RECIPE_SECTIONS = ("data", "eval", "model", "train")  # model and train: a training recipe's own


@dataclass
class EvalRecipe:
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_eval_recipe(path: str | Path | None = None,
                     overrides: list[str] | None = None) -> EvalRecipe:
    """An eval recipe, or a training recipe whose ``data`` section reads the catalog (its ``model``
    and ``train`` sections are ignored); ``section.key=value`` overrides on top."""
    data = apply_overrides(load_yaml(path) if path else {}, overrides or [])
    for section in data:
        if section not in RECIPE_SECTIONS:
            raise ConfigError(f"unknown section '{section}' in the eval recipe; known: data, eval "
                              "(a training recipe's model and train sections are ignored)")
    recipe = EvalRecipe(from_dict(DataConfig, data.get("data"), "data"),
                        from_dict(EvalConfig, data.get("eval"), "eval"))
    unknown = set(recipe.eval.tasks) - set(TASKS)
    if unknown:
        raise ConfigError(f"eval.tasks: unknown task(s) {sorted(unknown)}; known: {', '.join(TASKS)}")
    return recipe


def parse_model_specs(specs: list[str]) -> tuple[dict[str, Path | list[Path]], list[str]]:
    """``["eclip=DIR", "data.column_map.title=name", "clip=DIR2"]`` ->
    ``({"eclip": Path(DIR), "clip": Path(DIR2)}, ["data.column_map.title=name"])``: models by name
    (unique, in order) and the recipe overrides among them (entries whose key starts with a recipe
    section, ``data.`` / ``eval.`` / ...), which a command line may write right after the models.

    ``eclip=DIR1,DIR2,DIR3``: one model per training seed, a list of directories; the report
    gives their mean and spread (``eclip.tasks.seeds``). A directory that exists with a comma in
    its name stays one directory."""
    out: dict[str, Path | list[Path]] = {}
    overrides: list[str] = []
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if sep and name.partition(".")[0] in RECIPE_SECTIONS and "." in name:
            overrides.append(spec)
            continue
        if not sep or not name.strip() or not directory.strip():
            raise ConfigError(f"--models entry {spec!r} must look like NAME=MODEL_DIR")
        if name in out:
            raise ConfigError(f"--models names model '{name}' twice")
        if name in REFERENCES:
            raise ConfigError(f"'{name}' is the name of a reference in the report; rename the model")
        if SEP in name:
            raise ConfigError(f"--models entry {spec!r}: '{SEP}' may not appear in a model name")
        directory = directory.strip()
        dirs = ([directory] if "," not in directory or Path(directory).is_dir()
                else [d.strip() for d in directory.split(",")])
        if not all(dirs):
            raise ConfigError(f"--models entry {spec!r}: an empty directory among "
                              "NAME=DIR1,DIR2,...")
        out[name.strip()] = Path(dirs[0]) if len(dirs) == 1 else [Path(d) for d in dirs]
    if not out:
        raise ConfigError("--models names no model: give NAME=MODEL_DIR entries")
    return out, overrides


@dataclass
class SuiteResult:
    report: Report
    out_dir: Path | None
    seconds: dict[str, float]

    @property
    def files(self) -> list[Path]:
        """The report files written (none without an output folder)."""
        if self.out_dir is None:
            return []
        names = ["report.md", "report.json"]
        if self.report.meta.get("eval_config", {}).get("plots"):
            names.append("report.html")
        return [self.out_dir / name for name in names]

    def summary(self) -> str:
        return (f"eval finished in {self.seconds['total']:.0f} s: "
                + ", ".join(map(str, self.files)))


def cross_modal_retrieval(ctx: TaskContext, *, query_encoders: dict | None = None,
                          out_dir: str | Path | None = None) -> None:
    """The standard retrieval tasks on test (``eclip.tasks.ir``): text->image (titles),
    image->image and text->text (same catalog), category->image, and query->image where
    ``eval.queries`` gives queries; mAP, MRR, nDCG@10, R@1, R@10, P@10 as ranx defines them, as report rows of
    task ``retrieval`` with the direction as modality; with ``out_dir``, qrels / run files."""
    ir.run_retrieval(ctx, query_encoders=query_encoders, out_dir=out_dir)


def duplicate_title_share(ctx: TaskContext) -> float:
    """The share of test listings whose cleaned title is also the title of a listing of another
    catalog in the test split: the part of text retrieval that no text model can get right."""
    test = ctx.rows("test")
    titles = clean_titles([ctx.splits.listings[i] for i in test])
    groups: dict[str, set] = defaultdict(set)
    for title, i in zip(titles, test):
        groups[title.casefold()].add(ctx.groups[i])
    shared = sum(1 for title in titles if len(groups[title.casefold()]) > 1)
    return shared / max(len(test), 1)


def _notes(ctx: TaskContext, models: list[str]) -> list[str]:
    cfg = ctx.config
    counts = ctx.splits.counts()
    towers = [m for m in models if m in cfg.tower_features]
    notes = [
        f"Splits by catalog from {ctx.splits.source}: {counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test listings. Probes train on train, thresholds and C are chosen on "
        "val, every number is measured on test.",
        "Modalities: image = mean of the listing's image vectors; text = the title alone (category "
        "and attributes are labels here); both = [sqrt(w) image; sqrt(1-w) text] (eclip.encode.fuse, the "
        "vector eclip embed and search serve), so its cosine is w * image cosine + (1-w) * text "
        "cosine; w per model: " + ", ".join(
            f"{v.name} {v.fusion_weight:g} ({v.fusion_source})" for v in ctx.views
            if v.fusion_weight is not None) + " (meta.fusion_weights).",
        f"Probes: logistic regression, C from {cfg.probe_c} by val; mean ± std over {cfg.seeds} "
        f"seeds, each trained on {cfg.probe_fraction:.0%} of the training catalogs. Probes "
        "(category, attribute, adult) read every model's towers' pooled features, the "
        "representation (both: the halves fused evenly; a probe weighs them itself); zero-shot, matching, clustering and retrieval read the joint space (a "
        "baseline's: its tower features, but for zero-shot and retrieval).",
        "Retrieval (task 'retrieval', the direction as modality; eclip.tasks.ir): text->image, each "
        "test title against the test images, its catalog's listings relevant (itself included); "
        "image->image and text->text, the other listings of its catalog relevant (itself left "
        "out; catalogs with one test listing ask nothing); category->image, the zero-shot prompts "
        "of each category, its listings relevant; query->image, the given search queries "
        f"(eval.queries). Top {cfg.retrieval_depth} by dot product in the joint space (TF-IDF in "
        "text->text); metrics as ranx defines them: R@k is IR recall (the share of the relevant items in the "
        "top k), not the hit rate of the training logs; P@10 and nDCG@10 over binary relevance. "
        "The bootstrap resamples the query listings' catalogs (listing queries only).",
        "Matching pairs: one positive per listing of a multi-listing catalog, "
        f"{cfg.hard_negatives} hard negative(s) (same category, one of the 3 most similar titles by "
        f"TF-IDF; hardest for the TF-IDF reference) and {cfg.random_negatives} random one(s).",
        f"Clustering: {cfg.knn_k}-NN graph (FAISS), edges above the val-chosen similarity, connected "
        "components.",
    ]
    classes = ctx.report.meta.get("category_classes")
    if classes:
        notes.append(f"Zero-shot: listing vectors against prompts in the joint space; categories: "
                     f"the full path and the leaf name, averaged, for the {classes} leaf categories "
                     f"of the catalog (chance {1 / classes:.3f}); attributes: '{{key}} {{value}}' "
                     "as the training text writes them.")
    if towers:
        notes.append(f"{', '.join(towers)}: the towers before alignment, read as pooled tower "
                     "features (pretrained features where the tower is pretrained); zero-shot "
                     "and cross-modal retrieval use its projections at initialisation, which are "
                     "random unless the model started from an aligned checkpoint: near chance there "
                     "by construction, not a finding.")
    shared = ctx.report.meta.get("duplicate_title_share")
    if shared:
        notes.append(f"Title ceiling: {shared:.1%} of the test listings have a cleaned title that "
                     "a listing of another catalog also has; no text-only model can rank those "
                     "apart, so text retrieval and text matching cannot reach 1.0 here.")
    if cfg.reference:
        notes.append("tfidf: character 2-4-grams of the cleaned title, IDF from train, the same "
                     "heads; title_span: attribute values written in the title, found by string "
                     "match. References: they do not decide a verdict.")
    return notes


def run_suite(models: dict, listings: list[Listing], *, config: EvalConfig | None = None,
              image_caches: list[ImageFeatureCache] | None = None,
              out_dir: str | Path | None = None, title: str = "eclip evaluation",
              meta: dict | None = None, notes: list[str] | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> SuiteResult:
    """Every task that the listings' labels allow, for every model, in every modality.

    A model may be a list of models, one per training seed (``eclip.tasks.seeds``): each is
    evaluated as ``NAME#k``, and the report folds them into one row per cell (the mean over the
    seeds, ``seed_std``, ``seeds``) and compares them on their outcomes stacked over the seeds.
    ``image_caches`` holds image-tower features already computed (e.g. the locked tower of a
    training run); models whose tower matches one reuse it, the others get one computed here.
    ``meta`` and ``notes`` go into the report. With ``out_dir``, report.json, report.md and (with
    ``config.plots``) report.html are written there.
    """
    cfg = config or EvalConfig()
    check_config(cfg, list(models) + (REFERENCES if cfg.reference else []))
    names = list(models)
    models, members = expand_seeds(models)  # {NAME#k: model} for the names with several seeds
    if out_dir is not None:  # the temporaries of an eval killed while writing its files
        clean_stale_temps_below(out_dir)
    laps = _Laps()
    splits = eval_splits(listings, tuple(cfg.split_fractions))
    counts = splits.counts()
    log(f"eval splits ({splits.source}): {counts['train']} train, {counts['val']} val, "
        f"{counts['test']} test listings")
    report = Report(title=title, headlines=dict(HEADLINES),
                    subject=choose_subject(names, cfg.subject) or "eclip",
                    references=list(REFERENCES))
    availability = task_availability(splits)
    for task in cfg.tasks:
        if availability[task]:
            report.skipped[task] = availability[task]
            log(f"skipping {task}: {availability[task]}")
    views = _views(models, listings, splits, cfg, image_caches, progress)
    laps.lap("embed")
    ctx = TaskContext(splits, views, cfg, report, log=log)
    _run_tasks(ctx, models, names, members, availability, laps, out_dir)
    _describe(ctx, names, members, list(notes or []), meta or {}, laps)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and cfg.plots:
        from eclip.tasks.html import write_html

        out.mkdir(parents=True, exist_ok=True)
        write_html(report, ctx, out / "report.html")
        laps.lap("html")
    laps.seconds["total"] = round(time.perf_counter() - laps.started, 2)
    if out is not None:
        if cfg.retrieval_files:  # one CLIP_benchmark-style record per model (eclip.tasks.ir)
            ir.write_clip_benchmark(report.rows, out / "clip_benchmark.jsonl",
                                    dataset=str(report.meta.get("dataset") or title),
                                    pretrained=report.meta.get("models"))
        report.write(out)
    return SuiteResult(report, out, laps.seconds)


class _Laps:
    """Seconds per phase of the suite, in order (``meta.eval_seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._clock, 2)
        self._clock = now


def _views(models: dict, listings: list[Listing], splits, cfg: EvalConfig,
           image_caches: list[ImageFeatureCache] | None, progress: bool) -> list:
    """Each model's views (``eclip.tasks.views``), and the TF-IDF reference's."""
    caches = list(image_caches or [])
    views = []
    for name, model in models.items():
        cache = listing_cache(model, listings, caches, progress=progress)
        views.append(model_views(name, model, listings, cache,
                                 tower=base_name(name) in cfg.tower_features,
                                 val_rows=splits.index("val"), batch_size=cfg.batch_size,
                                 progress=progress))
    if cfg.reference and splits.counts()["train"]:
        views.append(tfidf_views(listings, splits.index("train"), name=TFIDF))
    return views


def _run_tasks(ctx: TaskContext, models: dict, names: list[str], members: dict,
               availability: dict, laps: _Laps, out_dir: str | Path | None) -> None:
    """Retrieval, the tasks the labels allow, the seeds folded, the bootstrap comparisons."""
    cfg, report, log = ctx.config, ctx.report, ctx.log
    folded = any(len(seeds) > 1 for seeds in members.values())
    # Small problems: BLAS threads only contend. A probe that stops at max_iter is counted in
    # meta.probe_fits_at_max_iter instead of printing a warning per fit.
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if ctx.splits.counts()["test"]:
            encoders = {name: ir.title_query_encoder(model, batch_size=cfg.batch_size)
                        for name, model in models.items()}
            cross_modal_retrieval(ctx, query_encoders=encoders, out_dir=out_dir)
        laps.lap("retrieval")
        for task in TASKS:
            if task in cfg.tasks and not availability[task]:
                log(f"task: {task}")
                RUNNERS[task](ctx)
                laps.lap(task)
        if folded:  # one row per name (mean, seed std); the seeds' outcomes stacked
            report.rows, report.seed_rows = fold_rows(report.rows, members)
            ctx.outcomes = pool_outcomes(ctx.outcomes, members, log)
        if compare_models(ctx, order=names + [TFIDF] if folded else None):
            log(f"bootstrap: {cfg.bootstrap} resamples of {report.meta['bootstrap']['catalogs']} "
                f"test catalogs, {len(report.comparisons)} comparisons")
        laps.lap("bootstrap")


def _describe(ctx: TaskContext, names: list[str], members: dict, notes: list[str], meta: dict,
              laps: _Laps) -> None:
    """The report's notes and meta: splits, fusion weights, probes, seeds, the caller's."""
    report, cfg, views = ctx.report, ctx.config, ctx.views
    report.meta["duplicate_title_share"] = round(duplicate_title_share(ctx), 4)
    report.notes += _notes(ctx, names) + notes
    if any(len(seeds) > 1 for seeds in members.values()):
        report.meta["training_seeds"] = {name: len(seeds) for name, seeds in members.items()
                                         if len(seeds) > 1}
        report.notes.append(
            "Training seeds: " + ", ".join(f"{name} {n}" for name, n in
                                           report.meta["training_seeds"].items())
            + f". Each seed's model is evaluated on its own (NAME{SEP}k: report.json's seed_rows, "
            "the retrieval files, meta.fusion_weights); a row of NAME is the mean over its seeds, "
            "shown as mean ± the std across the seeds (N seeds), with the probe seeds' pooled "
            "std in report.json's std. A comparison recomputes the metric of every seed on the "
            "same catalog resamples and averages them (eclip.tasks.seeds): its interval covers "
            "the sampling of the test catalogs for that mean; the seed std beside it is the "
            "spread across training runs.")
    report.meta["fusion_weights"] = {v.name: {"weight": v.fusion_weight, "source": v.fusion_source}
                                     for v in views if v.fusion_weight is not None}
    report.meta.update({"splits": ctx.splits.counts(), "split_source": ctx.splits.source,
                        "eval_config": to_dict(cfg), "eval_seconds": laps.seconds,
                        "probe_C": dict(sorted(ctx.shared.get("probe_C", {}).items())),
                        "probe_fits_at_max_iter": sum(ctx.shared.get("probe_capped", {}).values()),
                        **meta})


def run_eval(model_dirs: dict[str, Path | list[Path]], recipe: EvalRecipe, out_dir: str | Path, *,
             progress: bool = True, log: Callable[[str], None] = print) -> SuiteResult:
    """``eclip eval``: read the catalog through ``recipe.data``, load the models, run the suite.
    A name with a list of directories has one model per training seed (``eclip.tasks.seeds``)."""
    from eclip.model import load_model

    out = Path(out_dir)
    clean_stale_temps_below(out)  # a killed eval's temporaries (the benchmark's files included)
    data, cfg, dataset = recipe.data, recipe.eval, Path(str(recipe.data.catalog)).stem
    if cfg.preset:  # a public benchmark's layout: converted under OUT/benchmark first
        from dataclasses import replace

        from eclip.catalog.presets import prepare_benchmark

        if not data.catalog:
            raise ConfigError("eval.preset needs a catalog: pass --catalog FILE")
        bench = prepare_benchmark(data.catalog, cfg.preset, out / "benchmark",
                                  image_root=data.image_root, column_map=data.column_map, log=log)
        data = replace(data, catalog=str(bench.catalog), image_root=str(bench.image_root),
                       column_map={})
        cfg = replace(cfg, queries=cfg.queries or (str(bench.queries) if bench.queries else None))
        dataset = bench.dataset
    read = load_catalog(data, report_dir=out, progress=progress, log=log)
    models = {name: ([load_model(p) for p in path] if isinstance(path, list)
                     else load_model(path)) for name, path in model_dirs.items()}
    meta = {"catalog": str(recipe.data.catalog), "dataset": dataset,
            "models": {name: ",".join(map(str, path)) if isinstance(path, list) else str(path)
                       for name, path in model_dirs.items()}}
    return run_suite(models, read.listings, config=cfg, out_dir=out,
                     title=f"eclip eval: {Path(str(recipe.data.catalog)).name}", meta=meta,
                     progress=progress, log=log)
