"""open_clip checkpoint folders in (model.init_from) and out (export --format open_clip).

The fixtures under tests/fixtures/open_clip/ were written by tests/fixtures/make_open_clip.py in an
open_clip_torch environment: tiny random open_clip models and open_clip's own encode_image /
encode_text vectors for fixed inputs. open_clip itself is not importable here (torchvision); the
live check runs where ECLIP_OPEN_CLIP_PYTHON names an open_clip python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eclip.errors import ModelError
from eclip.model import load_model
from eclip.model.export import export_model
from eclip.model.open_clip import CONFIG_FILE, from_hf_state, load_state, read_config, to_hf_state
from eclip.model.open_clip_siglip import register_timm_vit

FIXTURES = Path(__file__).parent / "fixtures" / "open_clip"
ALL_FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []
# OpenAI-style ViT CLIPs, and open_clip's timm-tower SigLIP ports
FAMILIES = [f for f in ALL_FAMILIES if not f.startswith("siglip")]
SIGLIP_FAMILIES = [f for f in ALL_FAMILIES if f.startswith("siglip")]
SCRIPT = Path(__file__).parent / "fixtures" / "make_open_clip.py"


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_open_clip", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


# the fixtures' tiny timm ViTs, taught to eclip as a user would teach it a new timm name
for _name, _args in _script().TIMM_VITS.items():
    register_timm_vit(_name, _args["num_heads"], _args.get("act_layer", "gelu"))


def _mask(model, ids):
    if model.config.text_padding == "max_length":
        # open_clip's SigLIP text tower attends over the padding too (eclip's tokenizer gives no mask)
        return torch.ones_like(ids)
    # open_clip's causal text model attends over everything; the pooled (end-of-text) vector only
    # sees the tokens before it, so masking the padding after it changes nothing
    eot = ids.argmax(dim=-1, keepdim=True)
    return (torch.arange(ids.shape[1])[None] <= eot).long()


def _vectors(model, data):
    ids = data["input_ids"]
    with torch.no_grad():
        return model.encode_image(data["pixel_values"]), model.encode_text(ids, _mask(model, ids))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_eclip_gives_open_clips_vectors(family):
    model = load_model(FIXTURES / family).eval()
    data = load_file(str(FIXTURES / family / "expected.safetensors"))
    image, text = _vectors(model, data)
    torch.testing.assert_close(image, data["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, data["text"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_settings_come_from_the_folder(family):
    model = load_model(FIXTURES / family)
    cfg = read_config(FIXTURES / family)
    pre = cfg["preprocess_cfg"]
    assert model.config.image_mean == pytest.approx(pre["mean"])
    assert model.config.image_std == pytest.approx(pre["std"])
    assert model.config.image_resample == pre["interpolation"]
    assert model.config.image_resize == {"shortest": "shortest_edge", "squash": "squash"}[pre["resize_mode"]]
    assert model.config.max_length == cfg["model_cfg"]["text_cfg"]["context_length"]
    state = load_state(FIXTURES / family)
    assert model.log_scale.item() == pytest.approx(float(state["logit_scale"]))
    if "logit_bias" in state:
        assert model.logit_bias.item() == pytest.approx(float(state["logit_bias"]))
    # the tokenizer comes from the folder's CLIP BPE files: known words are single tokens
    ids = model.tokenize(["red shoe"])["input_ids"][0].tolist()
    assert len(ids) == 4 and ids[-1] == max(ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_is_exact(family):
    state = load_state(FIXTURES / family)
    model_cfg = read_config(FIXTURES / family)["model_cfg"]
    back = from_hf_state(to_hf_state(state, model_cfg, "x"), model_cfg)
    state.pop("logit_bias", None)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key].reshape(value.shape), value), key


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_export_after_training_steps_round_trips(family, tmp_path):
    model = load_model(FIXTURES / family)
    data = load_file(str(FIXTURES / family / "expected.safetensors"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(2):  # a few steps, so that the export carries trained (not initial) weights
        image, text = _vectors_grad(model, data)
        loss = -(image @ text.T).diagonal().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    image, text = _vectors(model, data)
    assert not torch.allclose(image, data["image"], atol=1e-3)
    out = export_model(model, tmp_path / "oc", format="open_clip")
    assert (out / CONFIG_FILE).is_file() and (out / "open_clip_model.safetensors").is_file()
    again = load_model(out).eval()
    image2, text2 = _vectors(again, data)
    torch.testing.assert_close(image2, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text2, text, atol=1e-5, rtol=0)
    python = os.environ.get("ECLIP_OPEN_CLIP_PYTHON")
    if python:  # open_clip itself loads the export and gives eclip's vectors
        done = subprocess.run([python, str(SCRIPT), "--check-export", str(out),
                               str(FIXTURES / family / "expected.safetensors")],
                              capture_output=True, text=True, timeout=300, check=True)
        live = json.loads(done.stdout.strip().splitlines()[-1])
        torch.testing.assert_close(torch.tensor(live["image"]), image, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(live["text"]), text, atol=1e-5, rtol=0)
        if "tokens" in live:  # open_clip's tokenizer, read from the export, tokenizes as eclip does
            assert live["tokens"] == again.tokenize(_script().TEXTS)["input_ids"].tolist()


def _vectors_grad(model, data):
    ids = data["input_ids"]
    return model.encode_image(data["pixel_values"]), model.encode_text(ids, _mask(model, ids))


@pytest.mark.skipif(not os.environ.get("ECLIP_OPEN_CLIP_PYTHON"),
                    reason="set ECLIP_OPEN_CLIP_PYTHON to the python of an open_clip_torch environment")
def test_fixtures_regenerate_live(tmp_path):
    subprocess.run([os.environ["ECLIP_OPEN_CLIP_PYTHON"], str(SCRIPT), str(tmp_path)], check=True,
                   capture_output=True, timeout=300)
    for family in ALL_FAMILIES:
        model = load_model(tmp_path / family).eval()
        data = load_file(str(tmp_path / family / "expected.safetensors"))
        image, text = _vectors(model, data)
        torch.testing.assert_close(image, data["image"], atol=1e-5, rtol=0)
        torch.testing.assert_close(text, data["text"], atol=1e-5, rtol=0)


def _copy(family, tmp_path):
    target = tmp_path / family
    shutil.copytree(FIXTURES / family, target)
    return target


@pytest.mark.skipif(not FAMILIES, reason="no fixtures")
def test_unsupported_parts_are_refused_by_name(tmp_path):
    folder = _copy(FAMILIES[0], tmp_path)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="vision_cfg.attentional_pool"):
        load_model(folder)
    cfg["model_cfg"]["vision_cfg"].pop("attentional_pool")
    cfg["preprocess_cfg"]["resize_mode"] = "longest"
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="resize_mode 'longest'"):
        load_model(folder)


@pytest.mark.skipif(not FAMILIES, reason="no fixtures")
def test_folder_without_tokenizer_names_the_files(tmp_path):
    folder = _copy(FAMILIES[0], tmp_path)
    (folder / "vocab.json").unlink()
    with pytest.raises(ModelError, match="vocab.json \\+ merges.txt"):
        load_model(folder)


@pytest.mark.skipif(not FAMILIES, reason="no fixtures")
def test_missing_weight_is_named(tmp_path):
    from safetensors.torch import save_file

    folder = _copy(FAMILIES[0], tmp_path)
    state = load_state(folder)
    state.pop("visual.proj")
    save_file(state, str(folder / "open_clip_model.safetensors"))
    with pytest.raises(ModelError, match="'visual.proj' is missing"):
        load_model(folder)


@pytest.mark.skipif(not FAMILIES, reason="no fixtures")
def test_load_model_opens_an_open_clip_folder():
    model = load_model(FIXTURES / FAMILIES[0])
    assert model.config.init_from == str(FIXTURES / FAMILIES[0])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.e2e
@pytest.mark.parametrize("family", [f for f in ("vit_clip", "siglip") if f in ALL_FAMILIES])
def test_cli_train_from_open_clip_then_export_open_clip(tmp_path, capsys, family):
    """eclip train --init-from an open_clip folder -> eclip export --format open_clip -> the
    export rebuilds the trained model's vectors."""
    from test_cli_pretrained import COLUMNS, _write_shop

    from eclip.cli import main

    catalog, images = _write_shop(tmp_path)
    start = FIXTURES / family
    out = tmp_path / "run"
    assert main(["train", "--init-from", str(start), "--catalog", str(catalog), "--image-root",
                 str(images), "--output-dir", str(out), COLUMNS, "train.epochs=1",
                 "train.batch_size=12", "train.max_steps=2", "train.warmup_steps=1", "train.lr=1e-3",
                 "train.device=cpu", "train.progress=false"]) == 0
    trained = load_model(out / "model").eval()
    data = load_file(str(start / "expected.safetensors"))
    image, text = _vectors(trained, data)
    assert not torch.allclose(image, data["image"], atol=1e-4)  # training moved the weights
    assert main(["export", "--model", str(out / "model"), "--format", "open_clip",
                 "--out", str(tmp_path / "oc")]) == 0
    again = load_model(tmp_path / "oc").eval()
    image2, text2 = _vectors(again, data)
    torch.testing.assert_close(image2, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text2, text, atol=1e-5, rtol=0)
    texts = ["red shoe", "Blue  leather_bag!"]
    assert again.tokenize(texts)["input_ids"].tolist() == trained.tokenize(texts)["input_ids"].tolist()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_image_preprocessing_matches_open_clips(family):
    """eclip's image transform of a non-square photo equals open_clip's eval preprocessing (resize
    mode, interpolation, mean / std of the folder's preprocess_cfg)."""
    script = _script()
    model = load_model(FIXTURES / family)
    expected = load_file(str(FIXTURES / family / "expected.safetensors"))["photo_pixels"]
    torch.testing.assert_close(model.image_transform()(script.photo()), expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(not FAMILIES, reason="no fixtures")
def test_pytorch_bin_weights_and_tokenizer_json_folder(tmp_path):
    """The older hub layout: open_clip_pytorch_model.bin (read with weights_only) and a
    tokenizer.json without vocab.json / merges.txt."""
    folder = _copy(FAMILIES[0], tmp_path)
    reference = load_model(FIXTURES / FAMILIES[0]).eval()
    torch.save(load_state(folder), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_model.safetensors").unlink()
    reference.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    model = load_model(folder).eval()
    data = load_file(str(FIXTURES / FAMILIES[0] / "expected.safetensors"))
    image, text = _vectors(model, data)
    torch.testing.assert_close(image, data["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, data["text"], atol=1e-5, rtol=0)
    texts = ["red shoe", "blue leather bag"]
    assert model.tokenize(texts)["input_ids"].tolist() == reference.tokenize(texts)["input_ids"].tolist()


# ------------------------------------------------------------------ timm-tower SigLIP (SIGLIP_FAMILIES)
@pytest.mark.parametrize("family", SIGLIP_FAMILIES)
def test_siglip_settings_and_tokenizer_match_open_clips(family):
    """The SigLIP port reads as transformers' SigLIP: identity projections, texts padded to the
    context length with no attention mask, the folder's scale / bias / preprocessing, and
    open_clip's HFTokenizer output (its text cleaning included) for texts with capitals,
    punctuation, underscores and runs of spaces."""
    model = load_model(FIXTURES / family)
    cfg = read_config(FIXTURES / family)
    state = load_state(FIXTURES / family)
    assert model.config.projection == "identity" and model.config.text_padding == "max_length"
    assert model.config.embed_dim == cfg["model_cfg"]["embed_dim"]
    assert model.config.max_length == cfg["model_cfg"]["text_cfg"]["context_length"]
    assert model.log_scale.item() == pytest.approx(float(state["logit_scale"]))
    assert model.logit_bias.item() == pytest.approx(float(state["logit_bias"]))
    assert model.config.image_resize == "squash" and model.config.image_mean == [0.5, 0.5, 0.5]
    expected = load_file(str(FIXTURES / family / "expected.safetensors"))["tokens"]
    batch = model.tokenize(_script().TEXTS)
    assert batch["input_ids"].tolist() == expected.tolist()
    assert bool(batch["attention_mask"].eq(1).all())
    # the cleaning is what makes them equal: the raw tokenizer.json reads the capitals otherwise
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(FIXTURES / family / "tokenizer.json"))
    assert raw.encode(_script().TEXTS[1]).ids != expected[1][expected[1] != 0].tolist()


@pytest.mark.parametrize("family", SIGLIP_FAMILIES)
def test_siglip_state_dict_round_trip_is_exact(family):
    from eclip.model import open_clip_siglip as siglip

    state = load_state(FIXTURES / family)
    model_cfg = read_config(FIXTURES / family)["model_cfg"]
    config = siglip.hf_config(model_cfg, state, "x")
    back = siglip.from_hf_state(siglip.to_hf_state(state, config, "x"), config)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def _siglip_copy(tmp_path, edit):
    folder = _copy(SIGLIP_FAMILIES[0], tmp_path)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    edit(cfg["model_cfg"])
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    return folder


@pytest.mark.skipif(not SIGLIP_FAMILIES, reason="no fixtures")
@pytest.mark.parametrize("edit, message", [
    (lambda m: m["vision_cfg"].update(timm_pool="avg"), "timm_pool 'avg' is not supported"),
    (lambda m: m["vision_cfg"].update(timm_proj="linear"), "timm_proj 'linear' is not supported"),
    (lambda m: m["vision_cfg"].update(timm_model_name="convnext_base"),
     "timm_model_name 'convnext_base' is not a timm SigLIP ViT eclip knows"),
    (lambda m: m["text_cfg"].update(hf_model_name="xlm-roberta-base"),
     "text_cfg.hf_model_name 'xlm-roberta-base'"),
    (lambda m: m["text_cfg"].update(no_causal_mask=False), "text_cfg.no_causal_mask = False"),
    (lambda m: m["text_cfg"].update(pool_type="argmax"), "text_cfg.pool_type = 'argmax'"),
    (lambda m: m["text_cfg"].update(act_kwargs={"approximate": "sigmoid"}), "text_cfg.act_kwargs"),
    (lambda m: m["text_cfg"].update(tokenizer_kwargs={"clean": "ftfy"}), "clean 'ftfy'"),
    (lambda m: m.update(embed_dim=48), "embed_dim 48 differs from the timm tower's width"),
    (lambda m: m["vision_cfg"].update(image_size=64), "image_size 64 does not give"),
])
def test_siglip_parts_eclip_cannot_reproduce_are_refused_by_name(tmp_path, edit, message):
    with pytest.raises(ModelError, match=message):
        load_model(_siglip_copy(tmp_path, edit))


@pytest.mark.skipif(not SIGLIP_FAMILIES, reason="no fixtures")
def test_siglip_folder_without_tokenizer_json_names_the_files(tmp_path):
    folder = _copy(SIGLIP_FAMILIES[0], tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="add tokenizer.json"):
        load_model(folder)


@pytest.mark.skipif(not SIGLIP_FAMILIES, reason="no fixtures")
def test_a_siglip_of_unknown_origin_is_not_exported_to_open_clip(tmp_path):
    """Without the open_clip config it started from, the timm name is unknown: refused."""
    model = load_model(FIXTURES / SIGLIP_FAMILIES[0])
    del model.image_tower.model.config.open_clip_model_cfg
    with pytest.raises(ModelError, match="did not start from an open_clip folder"):
        export_model(model, tmp_path / "oc", format="open_clip")


@pytest.mark.skipif(not SIGLIP_FAMILIES, reason="no fixtures")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_a_siglip_port_then_export_to_open_clip(tmp_path, tiny_catalog, lora):
    """open_clip SigLIP -> eclip training steps (the trainer, sigmoid loss; full or LoRA on both
    towers, merged on save) -> eclip's saved model -> export --format open_clip -> the export gives
    the trained model's vectors (eclip re-read; open_clip itself where ECLIP_OPEN_CLIP_PYTHON is
    set)."""
    from recipes import tiny_recipe

    from eclip.catalog.readers import read_catalog
    from eclip.catalog.splits import split_listings
    from eclip.train.recipe import load_recipe
    from eclip.train.trainer import train

    family = SIGLIP_FAMILIES[0]
    recipe = tiny_recipe(tmp_path / "run", "train.batch_size=16", "train.epochs=1", "train.max_steps=2",
                         "train.warmup_steps=0", "train.lr=0.01", "train.loss=sigmoid",
                         *(["train.lora={rank: 2, targets: [q_proj, v_proj], towers: [text, image]}"]
                           if lora else []),
                         model={"init_from": str(FIXTURES / family)})
    if lora:
        pytest.importorskip("peft")
    data = split_listings(read_catalog(tiny_catalog).listings, load_recipe(None).data)
    result = train(recipe, load_model(FIXTURES / family), data.train, log=lambda s: None)
    assert result.steps == 2
    trained = load_model(tmp_path / "run" / "model").eval()  # eclip's own format, saved by training
    expected = load_file(str(FIXTURES / family / "expected.safetensors"))
    image, text = _vectors(trained, expected)
    assert not torch.allclose(image, expected["image"], atol=1e-4)  # training moved the weights
    out = export_model(trained, tmp_path / "oc", format="open_clip")
    again = load_model(out).eval()
    image2, text2 = _vectors(again, expected)
    torch.testing.assert_close(image2, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text2, text, atol=1e-5, rtol=0)
    assert again.logit_bias.item() == pytest.approx(trained.logit_bias.item())
    python = os.environ.get("ECLIP_OPEN_CLIP_PYTHON")
    if python:
        done = subprocess.run([python, str(SCRIPT), "--check-export", str(out),
                               str(FIXTURES / family / "expected.safetensors")],
                              capture_output=True, text=True, timeout=300, check=True)
        live = json.loads(done.stdout.strip().splitlines()[-1])
        torch.testing.assert_close(torch.tensor(live["image"]), image, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(live["text"]), text, atol=1e-5, rtol=0)


@pytest.mark.skipif(not SIGLIP_FAMILIES, reason="no fixtures")
def test_a_siglip_port_exports_to_transformers_too(tmp_path):
    """The same model as a transformers SiglipModel folder: eclip reads it back with the same
    vectors and the same tokens (the text cleaning travels in tokenizer.json)."""
    family = SIGLIP_FAMILIES[0]
    model = load_model(FIXTURES / family).eval()
    out = export_model(model, tmp_path / "hf", format="transformers")
    again = load_model(out).eval()
    data = load_file(str(FIXTURES / family / "expected.safetensors"))
    image, text = _vectors(again, data)
    torch.testing.assert_close(image, data["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, data["text"], atol=1e-5, rtol=0)
    assert again.tokenize(_script().TEXTS)["input_ids"].tolist() == data["tokens"].tolist()
