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

from eclip.model import DualEncoder, DualEncoderConfig, load_model  # noqa: E402
from eclip.model import onnx as eclip_onnx  # noqa: E402
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


@pytest.mark.slow
def test_serve_encodes_queries_with_onnx_and_finds_what_pytorch_finds(tiny_model_dir, tiny_catalog,
                                                                      tmp_path):
    """scratch BERT + vit: the graphs give eclip's vectors, and the API answers as under PyTorch."""
    from fastapi.testclient import TestClient

    from eclip.catalog.readers import read_catalog
    from eclip.search import build_index
    from eclip.search.api import create_app
    from eclip.search.onnx_query import onnx_dir

    listings = read_catalog(tiny_catalog).listings
    index = build_index(tiny_model_dir, listings, tmp_path / "index", progress=False)
    torch_client = TestClient(create_app(tmp_path / "index"))
    assert torch_client.get("/health").json()["query_encoder"] == "pytorch"
    onnx_client = TestClient(create_app(tmp_path / "index", onnx=True))  # exported on first start
    assert onnx_client.get("/health").json()["query_encoder"] == "onnx"
    graphs = onnx_dir(tmp_path / "index", index.model_sha1)
    assert has_onnx(graphs) and not [p for p in graphs.parent.iterdir() if p.name.startswith(".")]
    meta = json.loads((graphs / META_FILE).read_text())
    assert (meta["embed_dim"], meta["text_tower"], meta["image_tower"]) == (16, "scratch", "vit")
    assert meta["image_graph"] == "cls_last_layer"
    _vectors_match(load_model(tiny_model_dir).eval(), graphs)

    queries = [x.title for x in listings[:6]] + ["red cotton", "zzz unknown words"]
    for query in queries:
        for against in ("text", "image"):
            body = {"query": query, "k": 10, "mode": "vector", "against": against}
            ours, theirs = (c.post("/search/text", json=body).json()["results"]
                            for c in (torch_client, onnx_client))
            assert [r["product_id"] for r in ours] == [r["product_id"] for r in theirs]
            assert np.allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-4)
    for listing in listings[:3]:
        answers = []
        for client in (torch_client, onnx_client):
            with open(listing.images[0], "rb") as handle:
                answers.append(client.post("/search/image", files={"file": ("p.jpg", handle)},
                                           data={"k": "10", "against": "image"}).json()["results"])
        assert [r["product_id"] for r in answers[0]] == [r["product_id"] for r in answers[1]]
        assert np.allclose([r["score"] for r in answers[0]], [r["score"] for r in answers[1]], atol=1e-4)


@pytest.mark.slow
def test_hf_text_and_image_towers_clip(tmp_path):
    from eclip.model import load_model

    model = load_model(tc.make_clip(tmp_path / "clip")).eval()
    _vectors_match(model, export_onnx(model, tmp_path / "onnx"))
    assert json.loads((tmp_path / "onnx" / META_FILE).read_text())["image_graph"] == "cls_last_layer"


@pytest.mark.slow
def test_hf_bert_text_and_efficientnet_image_towers(tmp_path):
    model = DualEncoder.build(DualEncoderConfig(
        text_model=str(tc.make_bert(tmp_path / "bert")), max_length=32,
        image_tower="efficientnet_lite0", image_size=32, pretrained=False, embed_dim=16)).eval()
    _vectors_match(model, export_onnx(model, tmp_path / "onnx"))


def _cls_only_matches(model: DualEncoder) -> bool:
    """Whether the image graph with a CLS-only last layer is built for ``model`` and gives its
    vectors (batches of 1 and 3) while the last layer's MLP sees one token a photo."""
    side = model.config.image_size
    gen = torch.Generator().manual_seed(3)
    graph = eclip_onnx._cls_image_graph(model, torch.randn(2, 3, side, side, generator=gen))
    if graph is None:
        return False
    seen = []
    mlp = graph._names[4]
    hook = getattr(graph.layer, mlp).register_forward_hook(lambda m, args, y: seen.append(args[0].shape))
    with torch.no_grad():
        for rows in (1, 3):
            pixels = torch.randn(rows, 3, side, side, generator=gen)
            ours, theirs = model.encode_image(pixels), graph(pixels)
            assert theirs.shape == ours.shape and float((theirs - ours).abs().max()) <= 1e-6
    hook.remove()
    # the whole tower's MLP saw every token (3-D input), the graph's only the CLS token of each photo
    assert [s[0] for s in seen if len(s) == 2] == [1, 3]
    assert all(s[1] > 1 for s in seen if len(s) == 3) and len(seen) == 4
    return True


def test_cls_only_last_layer_gives_the_towers_vectors(tiny_model_dir, tmp_path, monkeypatch):
    """eclip's vit and a CLIP vision tower (pooler and cls pooling) get the CLS-only last layer,
    with the same vectors; a mean-pooled or attention-pooled tower, or a layer whose rewrite gives
    other vectors, keeps the whole path."""
    vit = load_model(tiny_model_dir).eval()
    assert _cls_only_matches(vit)
    clip = load_model(tc.make_clip(tmp_path / "clip")).eval()
    assert _cls_only_matches(clip)
    clip.image_tower.pooling = "cls"  # the CLS token before CLIP's post-layernorm
    assert _cls_only_matches(clip)
    clip.image_tower.pooling = "mean"  # every token's final state is read
    assert not _cls_only_matches(clip)
    siglip = load_model(tc.make_siglip(tmp_path / "siglip")).eval()  # attention-pooling head
    assert not _cls_only_matches(siglip)
    # a layer laid out otherwise than the table says (another attribute as the score scale): the
    # rewrite is checked against the tower in PyTorch and refused
    names = eclip_onnx._PRE_NORM_LAYERS["ViTLayer"]
    monkeypatch.setitem(eclip_onnx._PRE_NORM_LAYERS, "ViTLayer", names[:-1] + ("head_dim",))
    assert not _cls_only_matches(vit)


@pytest.mark.slow
def test_refused_export_names_the_tower_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    model = load_model(tiny_model_dir).eval()
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
    model = load_model(tiny_model_dir)
    with pytest.raises(ModelError, match=r"pip install 'eclip\[onnx\]'"):
        export_onnx(model, tmp_path / "onnx")
