"""Resuming a run (``eclip.train.checkpoint``, ``eclip.train.fingerprint``): the run's own tokenizer,
data that changed refused by its fingerprint (validation rows included), a damaged checkpoint one
line naming the file and never unpickled, and each step logged once after a resume.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

import eclip.train.run as run_mod
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.cli import main
from eclip.errors import ConfigError, EclipError
from eclip.model import DualEncoder
from eclip.train.checkpoint import CheckpointError
from eclip.train.recipe import load_recipe
from eclip.train.trainer import train

from conftest import TINY_MODEL
from files import PWNED, Payload, age, assert_one_line, dead_pid
from recipes import tiny_recipe
from run_logs import logged_losses


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module on one thread (conftest's ``one_thread``)."""


OVERRIDES = ["train.batch_size=16", "train.log_every=1", "train.checkpoint_every=2",
             "train.warmup_steps=0", "train.progress=false", "train.lr=0.01", "train.device=cpu"]


_recipe = partial(tiny_recipe, base=OVERRIDES)


# ---------------------------------------------------------------------------------------------
# a. --resume after the data changed: the run's own tokenizer, and a fingerprint of its data


def _run_recipe(catalog, out, *extra):
    model = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_MODEL.items()]
    return load_recipe(None, [f"data.catalog={catalog}", f"train.output_dir={out}", *model,
                              *OVERRIDES, "train.max_steps=2", *extra])


def test_resume_uses_the_saved_tokenizer_and_refuses_changed_data(tmp_path, tiny_catalog,
                                                                  monkeypatch):
    folder = tmp_path / "catalog"
    shutil.copytree(Path(tiny_catalog).parent, folder)
    catalog = folder / Path(tiny_catalog).name
    out = tmp_path / "run"
    run_mod.run_training(_run_recipe(catalog, out), log=lambda s: None)
    tokenizer = (out / "init" / "tokenizer.json").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("the scratch tokenizer was trained again on --resume")

    monkeypatch.setattr(run_mod, "train_tokenizer", no_training)
    messages: list[str] = []
    resumed = run_mod.run_training(_run_recipe(catalog, out, "train.max_steps=3"), resume=True,
                                   log=messages.append)
    assert resumed.steps == 3 and any(m.startswith("resumed from") for m in messages)
    assert (out / "init" / "tokenizer.json").read_bytes() == tokenizer

    # the same rows, other titles: the case of the issue (87 of 300 token ids changed meaning)
    rows = [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["title"] = "renamed " + row["title"][::-1]
    catalog.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                       encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        run_mod.run_training(_run_recipe(catalog, out, "train.max_steps=4"), resume=True,
                             log=lambda s: None)
    assert_one_line(err.value, "--resume", str(out / "checkpoints" / "last.pt"), "texts",
              "--output-dir")
    assert "product ids" not in str(err.value)  # only what changed is named

    catalog.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:-7]),
                       encoding="utf-8")  # fewer rows
    with pytest.raises(ConfigError, match="number of training listings"):
        run_mod.run_training(_run_recipe(catalog, out, "train.max_steps=4"), resume=True,
                             log=lambda s: None)


def test_fingerprint_names_each_changed_part(train_listings):
    from eclip.catalog.compose import TextComposer
    from eclip.train.fingerprint import check_fingerprint, listings_fingerprint

    composer = TextComposer()
    base = listings_fingerprint(train_listings, composer)
    assert check_fingerprint(base, listings_fingerprint(list(train_listings), composer), Path("c"),
                             Path("o")) is None
    moved = [replace(x, images=["/elsewhere/" + Path(p).name for p in x.images]) for x in train_listings]
    with pytest.raises(ConfigError, match="image paths") as err:
        check_fingerprint(base, listings_fingerprint(moved, composer), Path("c"), Path("o"))
    assert "texts" not in str(err.value)
    note = check_fingerprint(None, base, Path("c/last.pt"), Path("o"))
    assert note and "no fingerprint" in note  # a checkpoint from before: resumed, and said so


def test_a_resume_whose_only_change_is_in_the_validation_rows_is_refused(tiny_catalog):
    from eclip.train.fingerprint import check_fingerprint, data_fingerprint

    recipe = load_recipe(None)
    split = split_listings(read_catalog(tiny_catalog).listings, recipe.data)
    train_rows, val_rows = list(split.train), list(split.val)
    assert val_rows, "the tiny catalog must have validation rows for this test"
    base = data_fingerprint(recipe, train_rows, val_rows)
    assert check_fingerprint(base, data_fingerprint(recipe, train_rows, list(val_rows)), Path("c"),
                             Path("o")) is None
    edited = [replace(val_rows[0], title="another title"), *val_rows[1:]]
    with pytest.raises(ConfigError, match="validation listings") as err:
        check_fingerprint(base, data_fingerprint(recipe, train_rows, edited), Path("c"), Path("o"))
    assert "their texts" not in str(err.value) and "number of training" not in str(err.value)
    with pytest.raises(ConfigError, match="validation listings"):  # one row fewer
        check_fingerprint(base, data_fingerprint(recipe, train_rows, val_rows[:-1]), Path("c"),
                          Path("o"))
    older = {k: v for k, v in base.items() if k != "validation"}  # a checkpoint from before
    assert check_fingerprint(older, data_fingerprint(recipe, train_rows, edited), Path("c"),
                             Path("o")) is None


# ---------------------------------------------------------------------------------------------
# b. a damaged checkpoint on --resume: one guarded loader


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory, tiny_model_dir, train_listings):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(_recipe(out, "train.max_steps=2"), DualEncoder.from_pretrained(tiny_model_dir), train_listings,
          log=lambda s: None)
    return out


def _damage(path: Path, case: str) -> None:
    good = path.read_bytes()
    if case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif case == "a list":
        torch.save([1, 2, 3], path)
    elif case == "missing keys":
        state = torch.load(path, weights_only=True)
        del state["optimizer"], state["torch_rng"]
        torch.save(state, path)
    elif case == "pickle with globals":
        torch.save({"model": {}, "payload": Payload()}, path)
    else:
        state = torch.load(path, weights_only=True)
        name = next(k for k, v in state["model"].items() if v.ndim == 2)
        if case == "wrong sizes":
            state["model"][name] = torch.zeros(3, 5)
        elif case == "wrong keys":
            state["model"]["no.such.weight"] = state["model"].pop(name)
        elif case == "wrong optimizer":
            state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1] * 7
        torch.save(state, path)


CHECKPOINT_CASES = ["truncated", "empty", "garbage", "a list", "missing keys",
                    "pickle with globals", "wrong sizes", "wrong keys", "wrong optimizer"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(case, checkpoint_run, tmp_path,
                                                          tiny_model_dir, train_listings):
    out = tmp_path / "run"
    shutil.copytree(checkpoint_run, out)
    path = out / "checkpoints" / "last.pt"
    _damage(path, case)
    with pytest.raises(CheckpointError) as err:
        train(_recipe(out, "train.max_steps=3"), DualEncoder.from_pretrained(tiny_model_dir),
              train_listings, resume=True, log=lambda s: None)
    assert_one_line(err.value, str(path), "cannot be resumed from")
    assert isinstance(err.value, EclipError)
    assert not PWNED.exists()  # no pickle payload ever runs
    if case == "pickle with globals":
        assert "nothing was run" in str(err.value)


def test_the_cli_prints_a_damaged_checkpoint_as_one_line(checkpoint_run, tmp_path, tiny_catalog,
                                                         capsys):
    out = tmp_path / "run"
    shutil.copytree(checkpoint_run, out)
    (out / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 cut")
    model = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_MODEL.items()]
    code = main(["train", "--catalog", str(tiny_catalog), "--output-dir", str(out), "--resume",
                 "train.max_steps=3", "train.batch_size=16", "train.device=cpu",
                 "train.progress=false", *model])
    err = capsys.readouterr().err
    assert code == 2 and "last.pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# c. a killed run's temporaries are cleaned when it resumes (the rest: tests/test_atomic.py)


def test_train_cleans_what_a_killed_run_left(checkpoint_run, tmp_path, tiny_model_dir, train_listings):
    out = tmp_path / "run"
    shutil.copytree(checkpoint_run, out)
    dead = dead_pid()
    leftovers = [out / "checkpoints" / f".last.pt.tmp-{dead}-0badf00d",
                 out / f".model.tmp-{dead}-0badf00d", out / f".init.tmp-{dead}-0badf00d",
                 out / f".metrics.jsonl.tmp-{dead}-0badf00d"]
    for path in leftovers:
        path.mkdir() if "model" in path.name or "init" in path.name else path.write_bytes(b"x")
        age(path)
    train(_recipe(out, "train.max_steps=3"), DualEncoder.from_pretrained(tiny_model_dir), train_listings,
          resume=True, log=lambda s: None)
    assert not any(p.exists() for p in leftovers)


# ---------------------------------------------------------------------------------------------
# d. metrics.jsonl after a resume: each step once


def test_a_resumed_run_logs_each_step_once(tmp_path, tiny_model_dir, train_listings, crash_in_loss):
    out = tmp_path / "run"
    recipe = _recipe(out, "train.max_steps=5")
    with crash_in_loss(4):  # in step 4: steps 1-3 logged, the checkpoint of step 2 written
        train(recipe, DualEncoder.from_pretrained(tiny_model_dir), train_listings, log=lambda s: None)
    assert sorted(logged_losses(out)) == [1, 2, 3]
    train(recipe, DualEncoder.from_pretrained(tiny_model_dir), train_listings, resume=True,
          log=lambda s: None)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4, 5]  # 3 logged once, by the resumed run
