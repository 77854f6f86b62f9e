"""Several training runs from one start model, side by side in worker processes.

The demo's model (a small text tower and the top of a locked image tower) runs many small
operations; a second torch thread speeds a step up far less than twice, so two runs in two
single-thread processes finish sooner than the same two runs one after the other on two threads
(docs/BENCHMARKS.md, "Demo to six minutes"). :func:`train_runs` takes a list of :class:`Run` (a
recipe and its training listings, all starting from the same model and validated on the same
listings) and trains them in ``jobs`` processes of ``threads // jobs`` torch threads each; with one
job it trains them here, one after the other, as before.

Each run is seeded by its own ``train.seed`` (``trainer.setup`` reseeds), so what it learns does
not depend on the runs beside it: at the same threads per run, side by side and one after the
other give the same weights (tests/test_concurrent_train.py). Workers are spawned, not forked (the
parent's OpenMP threads do not survive a fork); the start model and a locked tower's feature cache
reach them through one file in a temporary folder (read with ``mmap``, so the workers share its
pages), not through shared memory, which a container may keep small. Each worker's log lines come
back to the caller's ``log``, prefixed with the run's name; progress bars are off in the workers
(two bars on one terminal garble each other). A trained model comes back read from its
``model_dir``, the files ``eclip eval`` would read.
"""

from __future__ import annotations

import copy
import queue as queue_module
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from eclip.catalog.schema import Listing
from eclip.encode.images import ImageFeatureCache
from eclip.errors import ConfigError
from eclip.train.recipe import Recipe


@dataclass
class Run:
    """One training run: its name (the prefix of its log lines), recipe and training listings."""

    name: str
    recipe: Recipe
    train_listings: list[Listing]


@dataclass
class RunResult:
    name: str
    model: Any
    model_dir: Path
    steps: int
    seconds: float  # the run's own wall time (in its worker, when side by side)
    history: list[dict[str, Any]] = field(default_factory=list)


def check_jobs(jobs: int | None) -> None:
    """A ConfigError unless ``jobs`` is None or a positive integer."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"jobs must be a positive integer (or unset: one training process per "
                          f"torch thread, at most one per run), got {jobs!r}")


def plan_jobs(runs: int, threads: int, jobs: int | None = None) -> tuple[int, int]:
    """``(processes, torch threads each)`` for ``runs`` runs on ``threads`` threads: ``jobs``
    processes (None: one per thread, at most one per run), never more than the runs, and the
    threads split evenly among them (at least one each)."""
    check_jobs(jobs)
    count = min(threads, runs) if jobs is None else jobs
    count = max(1, min(count, runs))
    return count, max(1, threads // count)


def train_runs(runs: list[Run], model, val_listings: list[Listing], *,
               image_cache: ImageFeatureCache | None = None, jobs: int | None = None,
               threads: int | None = None,
               log: Callable[[str], None] = print) -> list[RunResult]:
    """Train every run of ``runs`` from a copy of ``model``; results in the order of ``runs``.

    ``threads``: the torch threads to share (None: this process's current count); ``jobs``: the
    processes (:func:`plan_jobs`). With one job the runs train here, one after the other, on this
    process's threads."""
    from eclip.train.trainer import train

    threads = threads if threads is not None else torch.get_num_threads()
    procs, per_job = plan_jobs(len(runs), threads, jobs)
    if procs == 1:
        results = []
        for run in runs:
            started = time.perf_counter()
            result = train(run.recipe, copy.deepcopy(model), run.train_listings, val_listings,
                           image_cache=image_cache, log=log)
            results.append(RunResult(run.name, result.model, result.model_dir, result.steps,
                                     round(time.perf_counter() - started, 1), result.history))
        return results
    log(f"{len(runs)} training runs in {procs} processes side by side, {per_job} torch "
        f"thread(s) each: " + ", ".join(run.name for run in runs))
    return _side_by_side(runs, model, val_listings, image_cache, procs, per_job, log)


def _side_by_side(runs: list[Run], model, val_listings: list[Listing],
                  image_cache: ImageFeatureCache | None, procs: int, per_job: int,
                  log: Callable[[str], None]) -> list[RunResult]:
    from eclip.model import load_model

    context = torch.multiprocessing.get_context("spawn")
    lines = context.Queue()
    with tempfile.TemporaryDirectory(prefix="eclip-runs-") as tmp:
        start = Path(tmp) / "start.pt"
        torch.save({"model": model, "image_cache": image_cache, "val": list(val_listings)}, start)
        with ProcessPoolExecutor(procs, mp_context=context, initializer=_worker_init,
                                 initargs=(per_job, lines)) as pool:
            pending = {pool.submit(_train_in_worker, run, str(start)): k
                       for k, run in enumerate(runs)}
            done: dict[int, tuple] = {}
            try:
                while pending:
                    _drain(lines, log, wait_s=0.2)
                    finished, _ = wait(pending, timeout=0, return_when=FIRST_COMPLETED)
                    for future in finished:
                        done[pending.pop(future)] = future.result()  # a worker's error raises here
            except BaseException:
                for future in pending:  # the runs not started yet will not be
                    future.cancel()
                raise
            finally:
                _drain(lines, log, wait_s=0.0)
    results = []
    for k, run in enumerate(runs):
        model_dir, steps, seconds, history = done[k]
        results.append(RunResult(run.name, load_model(model_dir), Path(model_dir), steps, seconds,
                                 history))
    return results


def _drain(lines, log: Callable[[str], None], wait_s: float) -> None:
    """Pass the workers' log lines on to ``log``: what is there, waiting up to ``wait_s`` for
    the first."""
    try:
        log(lines.get(timeout=wait_s) if wait_s else lines.get_nowait())
        while True:
            log(lines.get_nowait())
    except queue_module.Empty:
        return


_WORKER: dict[str, Any] = {}


def _worker_init(threads: int, lines) -> None:
    from eclip.config import use_threads

    use_threads(threads)
    _WORKER["lines"] = lines


def _train_in_worker(run: Run, start_file: str) -> tuple[str, int, float, list]:
    from eclip.train.trainer import train

    started = time.perf_counter()
    start = torch.load(start_file, mmap=True, weights_only=False)
    lines = _WORKER["lines"]

    def log(line: str) -> None:
        lines.put(f"[{run.name}] {line}")

    recipe = copy.deepcopy(run.recipe)
    recipe.train.progress = False
    result = train(recipe, start["model"], run.train_listings, start["val"],
                   image_cache=start["image_cache"], log=log)
    return (str(result.model_dir), result.steps, round(time.perf_counter() - started, 1),
            result.history)
