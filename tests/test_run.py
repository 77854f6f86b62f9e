"""``run_training`` (``eclip train``): the model before training is kept in OUTPUT_DIR/init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eclip.train.run as run_mod
from eclip.catalog.readers import read_catalog
from eclip.encode import embed_listings
from eclip.model import load_model
from eclip.train.recipe import Recipe
from eclip.train.run import run_training

from conftest import TINY_MODEL
from recipes import tiny_recipe

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
