"""A user's own catalog through the command line: renamed CSV columns, transparent PNGs, broken files."""

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eclip.cli import build_parser, main
from eclip.errors import EclipError


@pytest.fixture
def shop_catalog(tmp_path, write_csv):
    """40 listings in 10 products; RGBA PNGs; two rows with broken images, one with no title."""
    root = tmp_path / "shop_images"
    root.mkdir()
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 30, 200), (30, 160, 30), (220, 200, 40), (120, 40, 160)]
    rows = []
    for i in range(40):
        product = i // 4
        rgba = np.zeros((40, 40, 4), np.uint8)
        rgba[..., :3] = colours[product % 5]
        rgba[..., 3] = 0
        size = 10 + 3 * (product // 5) + int(rng.integers(0, 3))
        rgba[20 - size // 2:20 + size // 2, 20 - size // 2:20 + size // 2, 3] = 255
        Image.fromarray(rgba, "RGBA").save(root / f"item{i}.png")
        rows.append({"item_no": f"A{i}", "group": f"G{product}", "item_name":
                     f"[무료배송] product {product} colour {product % 5} ★특가★",
                     "photo": f"item{i}.png", "cat": "Home > Deco > Lamp" if product % 2 else
                     "Home > Kitchen > Cup", "maker": "ACME"})
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows[3]["photo"] = "broken.png"
    rows[7]["photo"] = "missing.jpg"
    rows[11]["item_name"] = ""
    path = tmp_path / "shop.csv"
    write_csv(path, rows)
    return path, root


@pytest.mark.e2e
def test_own_csv_catalog_trains_and_embeds_with_a_bad_row_report(shop_catalog, tmp_path, capsys,
                                                                 tiny_model_config):
    path, root = shop_catalog
    run = tmp_path / "run"
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in tiny_model_config.items()]
    overrides += ["data.column_map={title: item_name, images: photo, product_id: item_no, "
                  "catalog_id: group, category: cat, brand: maker}",
                  "data.val_fraction=0.2", "train.epochs=2", "train.batch_size=8",
                  "train.progress=false"]
    code = main(["train", "--catalog", str(path), "--image-root", str(root), "--output-dir",
                 str(run), *overrides])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 3 rows" in out
    report = json.loads((run / "bad_rows.json").read_text())
    by_row = {(i["row"], i["field"]) for i in report["issues"]}
    assert {(4, "images"), (8, "images"), (12, "title")} <= by_row
    assert (run / "model" / "model.safetensors").is_file()

    emb_path = tmp_path / "emb.parquet"
    # without the column mapping the catalog has no 'title' column: a clear error, no traceback
    code = main(["embed", "--model", str(run / "model"), "--catalog", str(path), "--image-root",
                 str(root), "--out", str(emb_path)])
    assert code == 2 and "item_name" in capsys.readouterr().err
    code = main(["embed", "--model", str(run / "model"), "--catalog", str(path), "--image-root",
                 str(root), "--out", str(emb_path), overrides[len(tiny_model_config)]])
    assert code == 0
    assert (tmp_path / "bad_rows.json").is_file()
    table = pq.read_table(emb_path).to_pydict()
    assert len(table["product_id"]) == 37 and "A3" not in table["product_id"]
    vectors = np.array(table["product_embedding"])
    assert vectors.shape == (37, 2 * tiny_model_config["embed_dim"])  # fused: [image; text]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the model composes text the way it was trained: its saved config carries the composer
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["text_composer"] == {}


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    code = main(["train", "--catalog", str(tmp_path / "nope.csv"), "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert "nope.csv" in err and "Traceback" not in err
    assert main(["train", "train.epoch=3"]) == 2
    assert "unknown key 'epoch'" in capsys.readouterr().err


def _commands() -> list[str]:
    from eclip.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_help_answers_for_eclip_and_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    assert {"export", "merge", "train", "eval"} <= set(_commands())
    for command in _commands():
        assert f"\n    {command}" in listing  # listed, with its one-line help
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: eclip {command}") and f"examples:\n  eclip {command}" in out


def test_help_imports_nothing_heavy():
    code = ("import sys; from eclip.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'transformers', 'faiss'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_defaults_are_the_library_s():
    from eclip.catalog.shards import prepare_shards
    from eclip.cli import build_parser
    from eclip.encode import embed_listings
    from eclip.search import VectorSettings

    def default(func, name):
        return inspect.signature(func).parameters[name].default

    parser = build_parser()
    args = parser.parse_args(["prepare", "--catalog", "c.csv", "--out", "o"])
    assert (args.shard_size, args.image_size) == (default(prepare_shards, "shard_size"),
                                                  default(prepare_shards, "image_size"))
    args = parser.parse_args(["embed", "--model", "m", "--catalog", "c.csv", "--out", "e"])
    assert args.batch_size == default(embed_listings, "batch_size")
    args = parser.parse_args(["index", "--out", "i"])
    settings = VectorSettings()
    assert (args.kind, args.exact_max, args.target_recall) == (
        settings.kind, settings.exact_max, settings.target_recall)
    args = parser.parse_args(["export", "--model", "m", "--out", "x"])
    assert args.format == "transformers"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--model", "m", "--out", "x", "--format", "tflite"])


def test_train_flags_are_recipe_overrides():
    from eclip.cli import build_parser
    from eclip.cli.options import data_overrides

    args = build_parser().parse_args(["train", "--init-from", "ckpt", "--catalog", "c.csv",
                                      "--output-dir", "run", "--strict", "train.epochs=1"])
    assert data_overrides(args) == ["train.epochs=1", "data.catalog=c.csv",
                                     "train.output_dir=run", "model.init_from=ckpt",
                                     "data.strict=true"]


def test_eval_models_may_be_followed_by_overrides():
    from eclip.tasks.suite import parse_model_specs

    models, overrides = parse_model_specs(["eclip=runs/a/model", "data.column_map.title=name",
                                           "init=ckpt", "eval.seeds=2"])
    assert models == {"eclip": Path("runs/a/model"), "init": Path("ckpt")}
    assert overrides == ["data.column_map.title=name", "eval.seeds=2"]
    with pytest.raises(EclipError, match="names no model"):
        parse_model_specs(["eval.seeds=2"])


def test_the_command_line_only_parses_and_calls():
    """Every command module stays small and every function short: what a command does is a
    library function (``eclip index``'s own logic is the search package's to take over)."""
    import ast

    import eclip.cli

    package = Path(eclip.cli.__file__).parent
    for path in sorted(package.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert source.count("\n") < 600, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and node.name != "cmd_index":
                length = node.end_lineno - node.lineno + 1
                assert length < 80, f"{path.name}:{node.lineno} {node.name} has {length} lines"


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
