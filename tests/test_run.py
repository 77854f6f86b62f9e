"""``run_training`` (``eclip train``): the model before training is kept in OUTPUT_DIR/init."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import eclip.train.run as run_mod
from eclip.catalog.config import DataConfig
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import VAL_SALT, catalog_bucket, eval_splits, split_listings
from eclip.cli import main
from eclip.encode import embed_listings
from eclip.errors import ConfigError
from eclip.model import DualEncoder, load_model
from eclip.train.recipe import Recipe
from eclip.train.run import run_training

from conftest import TINY_MODEL
from recipes import SHOP_COLUMNS, model_overrides, tiny_recipe

RUN = ["train.batch_size=16", "train.max_steps=2", "train.checkpoint_every=1", "train.lr=0.01",
       "train.warmup_steps=0", "train.device=cpu"]


def _recipe(catalog, out, *extra) -> Recipe:
    return tiny_recipe(out, *RUN, *extra, catalog=catalog, model=TINY_MODEL)


def _vectors(model, listings) -> dict[str, np.ndarray]:
    emb = embed_listings(model, listings, batch_size=8, progress=False)
    return {"image": np.asarray(emb.image), "text": np.asarray(emb.text)}


def test_a_run_writes_the_model_before_training_to_init(tmp_path, tiny_catalog, monkeypatch):
    listings = read_catalog(tiny_catalog).listings[:6]
    seen = {}
    real_train = run_mod.train

    def train_and_look(recipe, model, *args, **kwargs):  # the model as training receives it
        seen["before"] = _vectors(model, listings)
        seen["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_train(recipe, model, *args, **kwargs)

    monkeypatch.setattr(run_mod, "train", train_and_look)
    out = tmp_path / "run"
    result = run_training(_recipe(tiny_catalog, out), log=lambda s: None)
    assert result.steps == 2

    init = load_model(out / "init")  # a model directory `eclip eval` loads
    for key, value in seen["state"].items():
        assert torch.equal(init.state_dict()[key], value), key
    for modality, vectors in _vectors(init, listings).items():
        np.testing.assert_array_equal(vectors, seen["before"][modality])
    trained = _vectors(load_model(out / "model"), listings)
    assert not np.allclose(trained["text"], seen["before"]["text"])
    assert not (out / "init_model").exists()  # one directory, in every kind of run


@pytest.mark.slow
def test_a_resumed_run_keeps_the_init_it_started_from(tmp_path, tiny_catalog):
    out = tmp_path / "run"
    run_training(_recipe(tiny_catalog, out), log=lambda s: None)
    weights = out / "init" / "model.safetensors"
    written = (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes())

    messages: list[str] = []
    resumed = run_training(_recipe(tiny_catalog, out, "train.max_steps=3"), resume=True,
                           log=messages.append)
    assert resumed.steps == 3
    assert any(m.startswith("resumed from") for m in messages)
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes()) == written


@pytest.mark.e2e
def test_zero_epochs_is_a_baseline_run_with_init_and_model(baseline_run):
    code, out, err, run, _ = baseline_run
    assert code == 0, err
    assert "0 steps (train.epochs=0): the model is the initial one" in out
    assert "batch_size" not in out + err  # nothing blames the batch size
    init = load_file(run / "init" / "model.safetensors")
    model = load_file(run / "model" / "model.safetensors")
    assert init.keys() == model.keys() and all(torch.equal(init[k], model[k]) for k in init)
    assert (run / "recipe.json").is_file() and (run / "bad_rows.json").is_file()
    assert f"model: {run / 'model'}" in out


@pytest.mark.e2e
def test_zero_max_steps_too_and_quiet_logs(shop, tmp_path, capsys, tiny_model_config):
    path, images = shop
    run = tmp_path / "run"
    code = main(["train", "--quiet", "--catalog", str(path), "--image-root", str(images),
                 "--output-dir", str(run), SHOP_COLUMNS, "train.max_steps=0",
                 *model_overrides(tiny_model_config)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "0 steps (train.max_steps=0)" in captured.out
    assert (run / "model" / "config.json").is_file()
    assert "reading shop.csv" not in captured.err  # no progress bars


def test_the_training_loop_says_what_to_set_for_zero_steps():
    from eclip.train.batch_schedule import BatchSchedule
    from eclip.train.recipe import TrainConfig
    from eclip.train.trainer import count_steps

    schedule = BatchSchedule.from_recipe(64, None, "sqrt")
    with pytest.raises(ConfigError, match=r"train.epochs=0: no step to take.*initial model"):
        count_steps(TrainConfig(epochs=0), schedule, 20, 64, 1)
    with pytest.raises(ConfigError, match=r"train.max_steps=0"):
        count_steps(TrainConfig(max_steps=0), schedule, 20, 64, 1)
    with pytest.raises(ConfigError, match=r"train.max_steps must be >= 0 \(or null: no cap; 0: no step"):
        TrainConfig(max_steps=-1)


def test_training_carves_val_from_train_catalogs_when_the_split_column_has_none(shop):
    path, images = shop
    data = DataConfig(catalog=str(path), image_root=str(images),
                      column_map={"title": "item_name", "images": "img",
                                  "product_id": "item_no", "catalog_id": "group"},
                      val_fraction=0.3)
    listings = read_catalog(path, image_root=images, column_map=data.column_map).listings
    splits = split_listings(listings, data)
    assert splits.val and splits.test and splits.train
    train_groups, val_groups = {x.group_id for x in splits.train}, {x.group_id for x in splits.val}
    assert not train_groups & val_groups  # by catalog
    assert all(x.split == "train" for x in splits.val)
    assert all(catalog_bucket(g, VAL_SALT) < 0.3 for g in val_groups)
    assert splits.note.startswith("the split column has no 'val' rows: ")
    assert f"{len(splits.val)} listings of {len(val_groups)} 'train' catalogs" in splits.note
    assert split_listings(listings, data).val == splits.val  # stable
    # the same draw as the evaluation's carve: training's val catalogs are evaluation's val ones
    evaluation = eval_splits(listings)
    eval_val = {x.group_id for x, s in zip(evaluation.listings, evaluation.split) if s == "val"}
    assert {x.group_id for x in split_listings(
        listings, DataConfig(val_fraction=0.1)).val} <= eval_val
    # no validation wanted: said so, nothing carved
    off = split_listings(listings, DataConfig(val_fraction=0.0))
    assert off.val == [] and "data.val_fraction=0: no validation" in off.note


@pytest.mark.e2e
def test_train_logs_the_carved_validation_set(baseline_run):
    _, out, _, _, _ = baseline_run
    assert "the split column has no 'val' rows: " in out
    line = next(x for x in out.splitlines() if x.endswith("validation listings"))
    assert not line.endswith(" and 0 validation listings")
