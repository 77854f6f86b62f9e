"""The batch-size schedule: phases by step, the square-root learning-rate rule, exact resume."""

from __future__ import annotations

from functools import partial

import json
import math

import pytest
import torch

from eclip.catalog.readers import read_catalog
from eclip.demo import bundled_recipe
from eclip.errors import ConfigError
from eclip.model import load_model
from eclip.train.batch_schedule import BatchSchedule, Phase, build_lr_scheduler
from eclip.train.recipe import load_recipe
from eclip.catalog.splits import split_listings
from eclip.train.schedule import warmup_cosine
from eclip.train.trainer import train
from run_logs import logged_rows
from recipes import tiny_recipe

SCHEDULE = [{"step": 0, "batch_size": 8}, {"step": 3, "batch_size": 16}, {"step": 5, "batch_size": 32}]
# for the trainer: with micro-batches of 8, one stream, then two, then three
TRAIN_SCHEDULE = [{"step": 0, "batch_size": 8}, {"step": 2, "batch_size": 16},
                  {"step": 4, "batch_size": 24}]


def test_phases_by_step_and_the_lr_rules():
    schedule = BatchSchedule.from_recipe(64, SCHEDULE, "sqrt")
    assert [schedule.batch_size(s) for s in range(7)] == [8, 8, 8, 16, 16, 32, 32]
    assert schedule.lr_factor(0) == 1.0
    assert schedule.lr_factor(3) == pytest.approx(math.sqrt(2))
    assert schedule.lr_factor(6) == pytest.approx(2.0)
    assert BatchSchedule.from_recipe(64, SCHEDULE, "linear").lr_factor(6) == pytest.approx(4.0)
    assert BatchSchedule.from_recipe(64, SCHEDULE, "none").lr_factor(6) == 1.0
    # without a schedule: one phase of train.batch_size
    assert BatchSchedule.from_recipe(64, None).phases == [Phase(0, 64)]


def test_units_and_steps():
    schedule = BatchSchedule.from_recipe(64, SCHEDULE)
    # without micro-batches the unit is the largest per-rank size dividing every phase
    assert schedule.unit_rows(world_size=2) == 4
    assert schedule.unit_rows(world_size=1, micro_batch_size=2) == 2
    assert [schedule.units(s, 2, 2) for s in (0, 3, 5)] == [2, 4, 8]
    # 2 ranks, units of 2 rows: phase 1 takes 3 x 2 units, phase 2 2 x 4, then 8 per step
    assert schedule.steps_for_units(6 + 8 + 16 + 7, 2, 2) == 3 + 2 + 2
    assert schedule.steps_for_units(5, 2, 2) == 2
    with pytest.raises(ConfigError, match="micro_batch_size x ranks"):
        schedule.unit_rows(world_size=2, micro_batch_size=8)
    with pytest.raises(ConfigError, match="step 0"):
        BatchSchedule.from_recipe(64, [{"step": 1, "batch_size": 8}])
    with pytest.raises(ConfigError, match="increase"):
        BatchSchedule.from_recipe(64, [{"step": 0, "batch_size": 8}, {"step": 0, "batch_size": 16}])
    with pytest.raises(ConfigError, match="entry"):
        BatchSchedule.from_recipe(64, [{"step": 0, "size": 8}])
    with pytest.raises(ConfigError, match="lr_scaling"):
        BatchSchedule.from_recipe(64, None, "cubic")


def test_lr_scheduler_multiplies_warmup_cosine_by_the_batch_factor():
    schedule = BatchSchedule.from_recipe(64, SCHEDULE, "sqrt")
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, schedule, total_steps=10, warmup_steps=2, min_ratio=0.1)
    for step in range(10):
        expected = 0.1 * (schedule.batch_size(step) / 8) ** 0.5 * warmup_cosine(
            step, total_steps=10, warmup_steps=2, min_ratio=0.1)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected), step
        optimizer.step()
        scheduler.step()
    # the state restores the position; the multiplier is rebuilt from the schedule, not pickled
    fresh = torch.optim.AdamW([param], lr=0.1)
    restored = build_lr_scheduler(fresh, schedule, total_steps=10, warmup_steps=2, min_ratio=0.1)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize("name", ["demo_ddp", "single_gpu", "multi_node"])
def test_bundled_recipes_have_valid_schedules(name):
    recipe = load_recipe(bundled_recipe(name))
    cfg = recipe.train
    schedule = BatchSchedule.from_recipe(cfg.batch_size, cfg.batch_schedule, cfg.lr_scaling)
    world = {"demo_ddp": 2, "single_gpu": 1, "multi_node": 32}[name]
    assert schedule.unit_rows(world, cfg.micro_batch_size) == cfg.micro_batch_size


_recipe = partial(tiny_recipe, base=[
    "train.batch_size=8", f"train.batch_schedule={json.dumps(TRAIN_SCHEDULE)}",
    "train.micro_batch_size=8", "train.loss_chunk_size=8", "train.max_steps=5", "train.epochs=2",
    "train.log_every=1", "train.checkpoint_every=3", "train.warmup_steps=1", "train.lr=0.01",
    "data.text.field_dropout={brand: 0.5}"])


def test_a_resume_in_the_middle_of_a_phase_continues_the_same_schedule(tmp_path, tiny_catalog,
                                                                        tiny_model_dir, crash_in_loss,
                                                                        one_thread):
    listings = split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data).train
    full = tmp_path / "full"
    train(_recipe(full), load_model(tiny_model_dir), listings, log=lambda s: None)
    reference = logged_rows(full)
    assert [reference[s]["batch_size"] for s in range(1, 6)] == [8, 8, 16, 16, 24]
    # the lr logged at step s is the rate of the next step: the sqrt rule times warm-up + cosine
    schedule = BatchSchedule.from_recipe(8, TRAIN_SCHEDULE)
    for s in range(1, 5):
        cosine = warmup_cosine(s, total_steps=5, warmup_steps=1, min_ratio=0.05)
        assert reference[s]["lr"] == pytest.approx(0.01 * (schedule.batch_size(s) / 8) ** 0.5 * cosine)

    crashed = tmp_path / "crashed"
    with crash_in_loss(5):  # in step 5; the checkpoint of step 3 is inside phase 2
        train(_recipe(crashed), load_model(tiny_model_dir), listings, log=lambda s: None)
    assert max(logged_rows(crashed)) == 4
    messages = []
    train(_recipe(crashed), load_model(tiny_model_dir), listings, resume=True,
          log=messages.append)
    assert any(m.endswith("at step 3") for m in messages)
    got = logged_rows(crashed)
    assert sorted(got) == sorted(reference)
    for step, row in reference.items():
        for key in ("loss", "lr", "batch_size", "grad_norm"):
            assert got[step][key] == pytest.approx(row[key], abs=1e-6), (step, key)


@pytest.mark.parametrize("overrides, binding", [
    (["train.micro_batch_size=256", "train.batch_size=1024"], "train.micro_batch_size=256"),
    (["train.batch_schedule=[{step: 0, batch_size: 512}, {step: 9, batch_size: 1024}]"],
     "train.batch_schedule (batch sizes 512, 1024"),
    (["train.batch_size=512"], "train.batch_size=512"),
])
def test_a_catalog_too_small_for_one_batch_names_the_setting_that_binds(
        overrides, binding, tmp_path, tiny_catalog, tiny_model_dir):
    from eclip.errors import EclipError

    listings = split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data).train
    recipe = load_recipe(None, [f"train.output_dir={tmp_path}", "train.device=cpu",
                                "train.progress=false", *overrides])
    with pytest.raises(EclipError) as err:
        train(recipe, load_model(tiny_model_dir), listings, log=lambda s: None)
    message = str(err.value)
    assert f"{len(listings)} training listings do not fill one batch" in message
    assert binding in message
    fit = int(message.rsplit("train.batch_size=", 1)[1])
    assert fit & (fit - 1) == 0 and 2 * fit <= len(listings) < 4 * fit
    if "micro" not in binding:
        return
    # the advice works: the same recipe with the suggested overrides trains
    advice = message.rsplit(": ", 1)[1].split()
    fixed = load_recipe(None, [f"train.output_dir={tmp_path / 'fixed'}", "train.device=cpu",
                               "train.progress=false", *overrides, *advice, "train.max_steps=1"])
    assert train(fixed, load_model(tiny_model_dir), listings,
                 log=lambda s: None).steps == 1
