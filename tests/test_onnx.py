"""ONNX export: each tower kind's graphs, run by ONNX Runtime, give eclip's vectors to 1e-4 on titles
and photos of several batch and sequence sizes; the query encoder of an index uses them when the
index holds them and search results equal PyTorch's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny_checkpoints as tc
from eclip.errors import ModelError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from eclip.model import DualEncoder, DualEncoderConfig  # noqa: E402
from eclip.model.onnx import META_FILE, OnnxTowers, export_onnx, has_onnx  # noqa: E402

TITLES = tc.TEXTS + ["red", "ceramic coffee mug set of 2 with a very long title that runs on and on"]


def _vectors_match(model: DualEncoder, directory) -> None:
    towers = OnnxTowers(directory)
    transform = model.image_transform()
    pixels = torch.stack([transform(im) for im in tc.photos()])
    with torch.no_grad():
        for rows in (1, 4, len(TITLES)):  # batch and padded widths change
            tokens = model.tokenize(TITLES[:rows])
            ours = model.encode_text(**tokens).numpy()
            theirs = towers.text(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
            assert theirs.shape == ours.shape
            assert np.abs(theirs - ours).max() <= 1e-4
            assert np.allclose(np.linalg.norm(theirs, axis=1), 1, atol=1e-5)
        for rows in (1, len(pixels)):
            ours = model.encode_image(pixels[:rows]).numpy()
            theirs = towers.image(pixels[:rows].numpy())
            assert theirs.shape == ours.shape
            assert np.abs(theirs - ours).max() <= 1e-4


def test_scratch_bert_and_vit_towers(tiny_model_dir, tmp_path):
    model = DualEncoder.from_pretrained(tiny_model_dir).eval()
    out = export_onnx(model, tmp_path / "onnx")
    assert has_onnx(out)
    meta = json.loads((out / META_FILE).read_text())
    assert (meta["embed_dim"], meta["text_tower"], meta["image_tower"]) == (16, "scratch", "vit")
    _vectors_match(model, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_hf_text_and_image_towers_clip(tmp_path):
    from eclip.model.pretrained import from_checkpoint

    model = from_checkpoint(tc.make_clip(tmp_path / "clip")).eval()
    _vectors_match(model, export_onnx(model, tmp_path / "onnx"))


def test_hf_bert_text_and_efficientnet_image_towers(tmp_path):
    model = DualEncoder.build(DualEncoderConfig(
        text_model=str(tc.make_bert(tmp_path / "bert")), max_length=32,
        image_tower="efficientnet_lite0", image_size=32, pretrained=False, embed_dim=16)).eval()
    _vectors_match(model, export_onnx(model, tmp_path / "onnx"))


def test_refused_export_names_the_tower_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    model = DualEncoder.from_pretrained(tiny_model_dir).eval()
    original = OnnxTowers.image
    monkeypatch.setattr(OnnxTowers, "image", lambda self, pixels: original(self, pixels) * 1.001)
    with pytest.raises(ModelError, match="'vit' image tower to ONNX: ONNX Runtime's vectors differ"):
        export_onnx(model, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    tower = type(model.image_tower)
    forward = tower.forward

    def data_dependent(self, pixel_values):  # python control flow on a value: torch.export refuses
        out = forward(self, pixel_values)
        return out if float(pixel_values.mean()) > 0 else -out

    monkeypatch.setattr(tower, "forward", data_dependent)
    with pytest.raises(ModelError, match="cannot export the 'vit' image tower to ONNX"):
        export_onnx(model, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ModelError, match="not an empty directory"):
        export_onnx(model, tmp_path / "full")


def test_missing_onnxruntime_says_how_to_install(monkeypatch, tiny_model_dir, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = DualEncoder.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match=r"pip install 'eclip\[onnx\]'"):
        export_onnx(model, tmp_path / "onnx")
