"""Training runs side by side in worker processes (``eclip.train.concurrent``): the same weights
as one after the other, the logs passed on, the jobs planned from the threads."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.encode.images import image_cache_for
from eclip.errors import ConfigError
from eclip.model import load_model
from eclip.train.concurrent import Run, plan_jobs, train_runs
from eclip.train.recipe import load_recipe
from recipes import tiny_recipe

_recipe = partial(tiny_recipe, base=[
    "train.batch_size=16", "train.max_steps=2", "train.warmup_steps=1", "train.lr=0.01",
    "train.lock_image=true", "train.checkpoint_every=1000", "data.text.field_dropout={brand: 0.5}"])


@pytest.mark.parametrize("runs, threads, jobs, plan", [
    (2, 2, None, (2, 1)),   # the demo on 2 cores: two processes of one thread
    (2, 1, None, (1, 1)),   # one core: one after the other
    (6, 2, None, (2, 1)),   # three seeds of two models on 2 cores
    (2, 8, None, (2, 4)),   # more threads than runs: split among the runs
    (2, 2, 5, (2, 1)),      # never more processes than runs
    (3, 2, 3, (3, 1)),      # more jobs than threads: one thread each
    (4, 2, 1, (1, 2)),
])
def test_jobs_are_planned_from_the_threads_and_the_runs(runs, threads, jobs, plan):
    assert plan_jobs(runs, threads, jobs) == plan


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_a_bad_job_count_is_a_config_error(jobs):
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        plan_jobs(2, 2, jobs)


@pytest.mark.slow  # spawns two workers: about 10 s on 2 quiet cores
def test_runs_side_by_side_learn_what_they_learn_one_after_the_other(tmp_path, tiny_catalog,
                                                                   tiny_model_dir, one_thread):
    listings = read_catalog(tiny_catalog).listings
    splits = split_listings(listings, load_recipe(None).data)
    start = load_model(tiny_model_dir)
    cache = image_cache_for(start, [p for x in listings for p in x.images], [], progress=False)

    def runs(where):
        return [Run(name, _recipe(where / name, f"train.targets={targets}",
                                  f"train.model_dir={where / name / 'model'}"), splits.train)
                for name, targets in (("clip", "clip"), ("eclip", "catalog"))]

    alone = train_runs(runs(tmp_path / "alone"), start, splits.val, image_cache=cache, jobs=1,
                       log=lambda s: None)
    lines: list[str] = []
    side = train_runs(runs(tmp_path / "side"), start, splits.val, image_cache=cache, jobs=2,
                      threads=2, log=lines.append)  # two processes of one thread each

    assert [r.name for r in side] == ["clip", "eclip"] and [r.steps for r in side] == [2, 2]
    for a, b in zip(alone, side):
        assert b.model_dir == tmp_path / "side" / a.name / "model"
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (a.name, key)
        assert a.model.config.fusion_weight == b.model.config.fusion_weight
        assert a.history == b.history
    # the two runs learned different things, and the start model was not trained in place
    assert not torch.equal(side[0].model.text_proj.weight, side[1].model.text_proj.weight)
    assert torch.equal(start.text_proj.weight, load_model(tiny_model_dir).text_proj.weight)
    # each worker's lines reach the caller's log, prefixed with its run's name
    assert lines[0].startswith("2 training runs in 2 processes side by side, 1 torch thread(s)")
    for name in ("clip", "eclip"):
        assert any(s.startswith(f"[{name}] saved ") for s in lines), lines


@pytest.mark.slow  # spawns two workers
def test_a_failing_run_raises_in_the_caller(tmp_path, tiny_catalog, tiny_model_dir, one_thread):
    listings = read_catalog(tiny_catalog).listings
    splits = split_listings(listings, load_recipe(None).data)
    (tmp_path / "a_file").write_text("not a folder")
    bad = [Run(f"bad{k}", _recipe(tmp_path / "a_file" / f"run{k}"), splits.train)  # cannot be made
           for k in range(2)]
    lines: list[str] = []
    with pytest.raises((NotADirectoryError, FileExistsError)):
        train_runs(bad, load_model(tiny_model_dir), splits.val, jobs=2, threads=2,
                   log=lines.append)
    assert lines and lines[0].startswith("2 training runs in 2 processes")


def test_the_demo_refuses_a_bad_job_count_before_it_starts(tmp_path):
    from eclip.demo import run_demo

    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        run_demo(tmp_path / "demo", jobs=0, progress=False, log=lambda s: None)
    assert not (tmp_path / "demo").exists()
