"""What every task receives: the splits, each model's views, the settings, the report to fill in."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import numpy as np

from eclip.tasks.data import TASKS, EvalSplits
from eclip.tasks.probes import ProbeRun, run_probe
from eclip.tasks.report import Report
from eclip.tasks.views import ModelViews

T = TypeVar("T")
Job = tuple[ModelViews, str]  # a model's views and one modality
# What a task's evaluation of one job gives: (metric-name prefix, per-seed metric dicts) pairs,
# and plot data for the HTML report (or None).
Outcome = tuple[list[tuple[str, list[dict[str, float]]]], Any]

@dataclass
class EvalConfig:
    """The ``eval`` section of a recipe (``configs/eval.yaml``)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    # the model whose verdicts the report states, compared with every other model (None: the one
    # named eclip, else the last one given; eclip.tasks.bootstrap.choose_subject)
    subject: str | None = None
    tower_features: list[str] = field(default_factory=lambda: ["baseline"])  # models read as towers
    reference: bool = True  # the TF-IDF title reference (and the title-span attribute extractor)
    seeds: int = 3  # probe seeds; each trains on a share of the training catalogs
    probe_fraction: float = 0.8  # that share
    probe_c: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0])  # C grid (val)
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # no split column
    hard_negatives: int = 1  # per listing: same category, similar title, another catalog
    random_negatives: int = 1  # per listing: any other catalog
    knn_k: int = 10  # neighbours per listing in the clustering graph
    map_points: int = 500  # listings in the 2-D map (t-SNE) of the HTML report
    plots: bool = True  # report.html with plots
    batch_size: int = 128
    workers: int = 2  # threads for the (model, modality) jobs of a task (fits release the GIL)
    # Retrieval (eclip.tasks.ir): ranking depth (the @ of mAP and MRR), whether qrels / run /
    # clip_benchmark files are written, text queries for query->image ({query: {product_id: rel}}),
    # and a public benchmark's layout to convert the catalog from (eclip.catalog.presets).
    retrieval_depth: int = 1000
    retrieval_files: bool = True
    queries: str | None = None
    preset: str | None = None
    # Paired bootstrap over test catalogs (eclip.tasks.bootstrap): resamples (0: no intervals),
    # their seed, the interval's level, and the [model, reference] pairs compared (None: the
    # subject against every other model but the references).
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    compare: list[list[str]] | None = None


@dataclass
class TaskContext:
    splits: EvalSplits
    views: list[ModelViews]
    config: EvalConfig
    report: Report
    figures: dict[str, Any] = field(default_factory=dict)  # plot data for the HTML report
    shared: dict[str, Any] = field(default_factory=dict)  # what several steps reuse (pairs)
    # (task, modality, model, metric) -> per-item outcomes on test (bootstrap.Items)
    outcomes: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def groups(self) -> list[str]:
        return [x.group_id for x in self.splits.listings]

    def rows(self, name: str, has: Callable[[Any], bool] | None = None) -> np.ndarray:
        """Indices of the listings of split ``name`` (those for which ``has`` holds)."""
        rows = self.splits.index(name)
        if has is None:
            return rows
        return np.asarray([i for i in rows if has(self.splits.listings[i])], dtype=np.int64)

    def jobs(self) -> list[Job]:
        return [(views, modality) for views in self.views for modality in views.modalities]

    def parallel(self, fn: Callable[[Job], T], jobs: list[Job]) -> list[T]:
        """``fn`` over ``jobs``, results in job order, on ``config.workers`` threads (the heavy
        parts, BLAS and L-BFGS, release the GIL; each job is deterministic on its own)."""
        if self.config.workers <= 1 or len(jobs) < 2:
            return [fn(job) for job in jobs]
        with ThreadPoolExecutor(self.config.workers) as pool:
            return list(pool.map(fn, jobs))

    def run(self, task: str, evaluate: Callable[[Job], Outcome],
            figure: str | None = None) -> dict[tuple[str, str], Any]:
        """``evaluate`` every (model, modality) job in parallel, add its rows to the report and
        return its plot data by (model, modality), also kept in ``figures[figure]`` when named."""
        jobs = self.jobs()
        extras = {}
        for (views, modality), (rows, extra) in zip(jobs, self.parallel(evaluate, jobs)):
            for prefix, per_seed in rows:
                self.add_all(task, modality, views.name, prefix, per_seed)
            extras[(views.name, modality)] = extra
        if figure is not None:
            self.figures.setdefault(figure, {}).update(extras)
        return extras

    def keep(self, task: str, job: Job, metric: str, items: Any) -> None:
        """Keep a job's per-item outcomes on test (``eclip.tasks.bootstrap.Items``) for the
        bootstrap intervals of ``metric``; safe from the job threads (one key per job)."""
        views, modality = job
        self.outcomes[(task, modality, views.name, metric)] = items

    def probe(self, task: str, job: Job, labels: np.ndarray, train: np.ndarray, val: np.ndarray,
              test: np.ndarray, **options) -> ProbeRun:
        """``run_probe`` with the configured seeds, share and C grid; the chosen C and the number
        of fits stopped at max_iter are kept in ``shared["probe_C"]`` and ``shared["probe_capped"]``
        under "task/model/modality" (plus ``options["key"]``)."""
        views, modality = job
        key = options.pop("key", None)
        run = run_probe(views.probe_input(modality), labels, train, val, test, self.groups,
                        seeds=self.config.seeds, fraction=self.config.probe_fraction,
                        c_grid=self.config.probe_c, **options)
        name = "/".join([task, views.name, modality] + ([key] if key else []))
        self.shared.setdefault("probe_C", {})[name] = run.C
        self.shared.setdefault("probe_capped", {})[name] = run.capped
        return run

    def add(self, task: str, modality: str, model: str, metric: str,
            values: float | list[float]) -> None:
        """One report row; a list of per-seed values becomes mean and sample std."""
        if isinstance(values, (list, tuple)):
            arr = np.asarray(values, dtype=float)
            std = float(arr.std(ddof=1)) if len(arr) > 1 else None
            self.report.add(task, modality, model, metric, float(arr.mean()), std)
        else:
            self.report.add(task, modality, model, metric, float(values))

    def add_all(self, task: str, modality: str, model: str, prefix: str,
                per_seed: list[dict[str, float]]) -> None:
        """Rows for every key of per-seed metric dicts, named ``prefix + key``."""
        for key in per_seed[0]:
            self.add(task, modality, model, prefix + key, [m[key] for m in per_seed])
