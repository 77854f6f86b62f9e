"""Issue 10 end to end through the command line: a team's CLIP checkpoint, fine-tuned on its own CSV
catalog (other column names), compared with where it started, exported for transformers, merged.

``eclip train --init-from CKPT`` -> ``eclip eval --models init=CKPT eclip=RUN/model`` ->
``eclip export --format transformers`` (loaded by ``transformers.AutoModel``: the same vectors) ->
``eclip merge --alpha`` (the endpoints are the two models).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tiny_checkpoints as tc
from eclip.cli import main
from eclip.model import DualEncoder, load_model

pytestmark = pytest.mark.e2e

TOL = 1e-5
COLUMNS = ("data.column_map={title: name, images: picture, product_id: sku, catalog_id: family, "
           "category: dept, split: part}")
WORDS = ["red cotton t-shirt", "blue denim jeans", "wireless earbuds", "leather wallet",
         "running shoes white", "steel water bottle", "kids winter jacket", "ceramic coffee mug"]


def _write_shop(root) -> tuple:
    """54 listings of 18 catalogs (3 photos and titles each) in a CSV with the shop's own columns,
    split by catalog: 12 catalogs train, 3 val, 3 test."""
    images = root / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(54):
        family = i // 3
        base = np.array([(family * 53) % 256, (family * 97) % 256, (family * 31) % 256])
        pixels = np.clip(base + rng.integers(-25, 26, size=(40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        rows.append({"sku": f"S{i}", "family": f"F{family}", "picture": f"{i}.png",
                     "name": f"{WORDS[family % len(WORDS)]} size {i % 3 + 1}",
                     "dept": ("fashion", "home")[family % 2],
                     "part": ("train", "train", "train", "train", "val", "test")[family % 6]})
    path = root / "shop.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny random CLIPModel checkpoint and an ``eclip train --init-from`` run on the shop CSV."""
    root = tmp_path_factory.mktemp("pretrained_cli")
    ckpt = tc.make_clip(root / "ckpt")
    catalog, images = _write_shop(root)
    out = root / "run"
    code = main(["train", "--init-from", str(ckpt), "--catalog", str(catalog), "--image-root",
                 str(images), "--output-dir", str(out), COLUMNS, "train.epochs=1",
                 "train.batch_size=12", "train.max_steps=3", "train.warmup_steps=1",
                 "train.lr=1e-3", "train.device=cpu", "train.progress=false"])
    assert code == 0
    return {"ckpt": ckpt, "catalog": catalog, "images": images, "out": out, "root": root}


def _vectors(model: DualEncoder):
    transform = model.image_transform()
    pixels = torch.stack([transform(im) for im in tc.photos()])
    with torch.no_grad():
        return pixels, model.encode_image(pixels), model.encode_text(**model.tokenize(tc.TEXTS))


def test_train_from_a_clip_checkpoint_moves_its_weights(run):
    model = load_model(run["out"] / "model")
    start = load_model(run["ckpt"])  # a raw CLIPModel directory reads as it is
    assert model.config.init_from == str(run["ckpt"])
    moved = [name for name, p in model.state_dict().items()
             if p.is_floating_point() and not torch.equal(p, start.state_dict()[name])]
    assert any(n.startswith("image_tower.") for n in moved)
    assert any(n.startswith("text_tower.") for n in moved)
    assert json.loads((run["out"] / "bad_rows.json").read_text())["issues"] == []


def test_eval_compares_the_checkpoint_with_the_model_trained_from_it(run, capsys):
    out = run["root"] / "eval"
    code = main(["eval", "--models", f"init={run['ckpt']}", f"eclip={run['out'] / 'model'}",
                 "--catalog", str(run["catalog"]), "--image-root", str(run["images"]),
                 "--out", str(out), "--quiet", COLUMNS, "eval.seeds=1", "eval.plots=false"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert {row["model"] for row in report["rows"]} >= {"init", "eclip"}
    # init is compared with the subject eclip, with an interval, though it is neither baseline nor clip
    assert report["subject"] == "eclip" and report["comparisons"]
    assert {(c["model"], c["reference"]) for c in report["comparisons"]} == {("eclip", "init")}
    assert "Subject: **eclip**, compared with init" in (out / "report.md").read_text()
    for model in ("init", "eclip"):
        assert {row["task"] for row in report["rows"] if row["model"] == model} >= {
            "category", "retrieval"}
    assert (out / "report.md").is_file() and "eval finished" in capsys.readouterr().out


def test_export_loads_in_transformers_with_eclip_vectors(run, capsys):
    from transformers import AutoModel, AutoTokenizer

    exported = run["root"] / "exported"
    assert main(["export", "--model", str(run["out"] / "model"), "--format", "transformers",
                 "--out", str(exported)]) == 0
    assert str(exported) in capsys.readouterr().out
    model = load_model(run["out"] / "model").eval()
    pixels, image, text = _vectors(model)
    hf = AutoModel.from_pretrained(exported).eval()  # transformers alone, with its own tokenizer
    assert type(hf).__name__ == "CLIPModel"
    tokens = AutoTokenizer.from_pretrained(exported)(tc.TEXTS, padding=True, truncation=True,
                                                     return_tensors="pt")
    with torch.no_grad():
        hf_image = F.normalize(hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        hf_text = F.normalize(hf.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(hf_image, image, atol=TOL, rtol=0)
    torch.testing.assert_close(hf_text, text, atol=TOL, rtol=0)


def test_merge_endpoints_are_the_two_models(run, capsys):
    tuned_dir = run["out"] / "model"
    for alpha, expected in (("0", run["ckpt"]), ("1", tuned_dir)):
        merged = run["root"] / f"merged-{alpha}"
        assert main(["merge", "--init", str(run["ckpt"]), "--model", str(tuned_dir),
                     "--alpha", alpha, "--out", str(merged)]) == 0
        _, image, text = _vectors(load_model(merged).eval())
        _, want_image, want_text = _vectors(load_model(expected).eval())
        torch.testing.assert_close(image, want_image, atol=TOL, rtol=0)
        torch.testing.assert_close(text, want_text, atol=TOL, rtol=0)
    assert "merged-0" in capsys.readouterr().out


def test_refused_export_and_bad_merge_are_one_line_errors(run, tiny_model_dir, tmp_path, capsys):
    # eclip's own ViT tower has no transformers equivalent: refused, saying why, nothing written
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eclip export: error:") and "'vit' image tower" in err
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()
    assert main(["merge", "--init", str(run["ckpt"]), "--model", str(run["out"] / "model"),
                 "--alpha", "1.5", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "alpha" in err and err.count("\n") == 1
    assert main(["merge", "--init", str(tiny_model_dir), "--model", str(run["out"] / "model"),
                 "--alpha", "0.5", "--out", str(tmp_path / "m")]) == 2
    assert "differ in architecture" in capsys.readouterr().err
