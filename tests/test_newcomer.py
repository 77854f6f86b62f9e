"""A newcomer's own catalog, first try (issue 14): renamed CSV columns, a split column with only train
and test, broken rows, a huge PNG; baseline (0 steps), threads, quiet logs, an index that holds the
test listings."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from eclip.catalog.config import DataConfig
from eclip.catalog.load import load_catalog
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import VAL_SALT, catalog_bucket, eval_splits, split_listings
from eclip.cli import build_parser, main
from eclip.config import default_threads, use_threads
from eclip.errors import ConfigError

COLUMNS = "data.column_map={title: item_name, images: img, product_id: item_no, catalog_id: group}"


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """60 listings of 20 products in a CSV with its own column names (item_no, group, item_name,
    img, cat_path, maker, split: train and test only); row 5 has no title, row 9 a broken image."""
    root = tmp_path_factory.mktemp("newcomer")
    images = root / "pics"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        product = i // 3
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 255, 3)
        rgba[4:28, 4 + product % 8:28, 3] = 255
        Image.fromarray(rgba, "RGBA").save(images / f"{i}.png")
        rows.append({"item_no": f"N{i:03d}", "group": f"G{product}",
                     "item_name": f"clip art {product} shape {product % 4}", "img": f"{i}.png",
                     "cat_path": "Art > Shapes" if product % 2 else "Art > Animals",
                     "maker": "OpenArt", "split": "test" if product % 5 == 0 else "train"})
    rows[4]["item_name"] = ""
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows[8]["img"] = "broken.png"
    path = root / "shop.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, images


def _model_overrides(config: dict) -> list[str]:
    return [f"model.{k}={json.dumps(v)}" for k, v in config.items()]


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def baseline_run(shop, tmp_path_factory):
    """``eclip train train.epochs=0 --threads 1`` on the shop: exit status, printed lines, the run
    folder and torch's threads after it."""
    path, images = shop
    run = tmp_path_factory.mktemp("baseline") / "run"
    before = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--catalog", str(path), "--image-root", str(images),
                     "--output-dir", str(run), "--threads", "1", COLUMNS, "train.epochs=0",
                     *_model_overrides(TINY_MODEL)])
    threads_after = torch.get_num_threads()
    torch.set_num_threads(before)
    return code, out.getvalue(), err.getvalue(), run, threads_after


# 1. a baseline for one's own catalog -----------------------------------------------------------


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
                 "--output-dir", str(run), COLUMNS, "train.max_steps=0",
                 *_model_overrides(tiny_model_config)])
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


# 2. large images are kept at reduced size; the limit is data.max_pixels -------------------------


def test_a_large_png_is_decoded_at_reduced_size_and_the_limit_is_a_setting(tmp_path, capsys,
                                                                           tiny_model_dir):
    images = tmp_path / "imgs"
    images.mkdir()
    big = Image.new("1", (9500, 9500), 1)  # 90 megapixels, above PIL's warning threshold
    ImageDraw.Draw(big).rectangle((1000, 1000, 6000, 8000), fill=0)
    big.save(images / "poster.png")  # a 1-bit PNG: tiny on disk, 90 MB decoded
    del big
    Image.new("RGB", (32, 32), (200, 20, 20)).save(images / "small.png")
    path = tmp_path / "shop.jsonl"
    path.write_text('{"product_id": "big", "title": "poster", "images": "imgs/poster.png"}\n'
                    '{"product_id": "small", "title": "red", "images": "imgs/small.png"}\n')

    with warnings.catch_warnings(record=True) as caught:  # PIL's own warning is silenced
        kept = load_catalog(DataConfig(catalog=str(path)), progress=False, log=lambda _: None)
        lowered = load_catalog(DataConfig(catalog=str(path), max_pixels=20_000_000),
                               progress=False, log=lambda _: None)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert [x.product_id for x in kept.listings] == ["big", "small"]  # 90M: decoded, reduced
    # 90M > 4 x 20M: too large to decode; the listing has no other photo
    assert [(i.product_id, i.line, i.action) for i in lowered.issues] == [
        ("big", 1, "dropped_image"), ("big", 1, "skipped_row")]
    assert "1 too large" in lowered.summary()

    # the setting from the command line: data.max_pixels=... (a recipe's data section)
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "--threads", "1", "data.max_pixels=20000000"]) == 0
    bad = json.loads((tmp_path / "bad_rows.json").read_text())
    assert [(i["product_id"], i["field"]) for i in bad["issues"] if i["action"] == "dropped_image"] \
        == [("big", "images")]
    assert "over 4 x max_pixels=20000000 (data.max_pixels)" in bad["issues"][0]["reason"]
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "--threads", "1", "data.max_pixels=25000000"]) == 0
    assert "wrote 2 embeddings" in capsys.readouterr().out
    assert main(["embed", "--model", str(tiny_model_dir), "--catalog", str(path), "--out",
                 str(out), "data.max_pixels=0"]) == 2
    assert "data.max_pixels must be >= 1" in capsys.readouterr().err


# 3. validation carved by catalog when the split column has none --------------------------------


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


# 4. column-map errors: all at once, in the form the user types ---------------------------------


@pytest.mark.e2e
def test_column_problems_come_at_once_in_the_cli_form(shop, tmp_path, capsys):
    path, images = shop
    code = main(["train", "--catalog", str(path), "--image-root", str(images), "--output-dir",
                 str(tmp_path / "run"), "data.column_map.catalog_id=grp"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "data.column_map.catalog_id=grp: the file has no column 'grp'" in err
    assert "no 'title' column (set data.column_map.title=item_name?)" in err
    assert "no 'images' column (set data.column_map.images=img?)" in err
    assert "The file's columns: cat_path, group, img, item_name, item_no, maker, split" in err
    assert "column_map={" not in err


@pytest.mark.e2e
def test_unused_lookalike_columns_are_a_warning_in_the_summary(baseline_run):
    _, out, _, _, _ = baseline_run
    warning = next(x for x in out.splitlines() if x.startswith("warning: unused column"))
    assert "'cat_path' (data.column_map.category=cat_path)" in warning
    assert "'maker' (data.column_map.brand=maker)" in warning


# 5. the bad-row report: file lines and product ids ---------------------------------------------


@pytest.mark.e2e
def test_bad_row_report_gives_file_lines_and_product_ids(baseline_run):
    _, out, _, run, _ = baseline_run
    issues = json.loads((run / "bad_rows.json").read_text())["issues"]
    where = {(i["row"], i["line"], i["product_id"], i["field"], i["action"]) for i in issues}
    assert (5, 6, "N004", "title", "skipped_row") in where  # row 5 is line 6: the header is line 1
    assert (9, 10, "N008", "images", "dropped_image") in where


# 6. --quiet everywhere; no bars where stderr is not a terminal ---------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


REQUIRED = {"demo": [], "make-demo-catalog": ["--out", "x"], "train": [],
            "embed": ["--model", "m", "--out", "x"], "eval": ["--models", "a=m", "--out", "x"],
            "prepare": ["--out", "x"], "index": ["--out", "x"], "serve": ["--index", "x"],
            "export": ["--model", "m", "--out", "x"],
            "merge": ["--init", "a", "--model", "b", "--alpha", "0.5", "--out", "x"],
            "mine-catalogs": ["--model", "m", "--out", "x"]}


def test_every_command_takes_quiet():
    commands = _subcommands()
    assert set(commands) == set(REQUIRED)
    parser = build_parser()
    for name, args in REQUIRED.items():
        assert parser.parse_args([name, "--quiet", *args]).quiet is True, name


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from eclip.cli import options

    args = argparse.Namespace(quiet=False)
    monkeypatch.setattr(options.sys.stderr, "isatty", lambda: False, raising=False)
    assert options.progress(args) is False
    monkeypatch.setattr(options.sys.stderr, "isatty", lambda: True, raising=False)
    assert options.progress(args) is True
    assert options.progress(argparse.Namespace(quiet=True)) is False


# 7. threads: train.threads / --threads, a sane default, one helper ------------------------------


@pytest.mark.e2e
def test_threads_flag_sets_torch_threads(baseline_run):
    _, out, _, _, threads_after = baseline_run
    assert threads_after == 1
    assert "torch threads: 1 per process (train.threads)" in out


def test_default_threads_follow_the_cores_this_process_may_use(monkeypatch, torch_threads):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the cores shared among the ranks
    assert default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(200)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_threads() == 32  # capped
    assert use_threads(2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        use_threads(0)
    from eclip.train.recipe import load_recipe

    assert load_recipe(None, ["train.threads=3"]).train.threads == 3
    with pytest.raises(ConfigError, match="train.threads must be >= 1"):
        load_recipe(None, ["train.threads=0"])


# 8. an index that holds the test listings says so ----------------------------------------------


@pytest.mark.e2e
def test_index_warns_about_held_out_listings_and_can_index_one_split(shop, baseline_run,
                                                                     tmp_path, capsys):
    path, images = shop
    _, _, _, run, _ = baseline_run
    common = ["--model", str(run / "model"), "--catalog", str(path), "--image-root",
              str(images), "--threads", "1", COLUMNS]
    assert main(["index", *common, "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    warning = next(x for x in out.splitlines() if "are indexed" in x)
    assert warning.startswith("warning: 12 listings of split 'test' are indexed")
    assert "measures memory, not generalisation" in warning and "--split train" in warning
    assert main(["index", *common, "--split", "train", "--out", str(tmp_path / "train")]) == 0
    out = capsys.readouterr().out
    assert "are indexed" not in out and "indexing the 46 listings of split train (of 58)" in out
    from eclip.search import SearchIndex

    index = SearchIndex.open(tmp_path / "train")
    test_id = "N000"  # product 0 is a test product
    assert index.listing(test_id) is None and index.listing("N003") is not None
    assert main(["index", *common, "--split", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no listing has split nope" in capsys.readouterr().err
