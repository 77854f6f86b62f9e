"""Starting from a transformers checkpoint (CLIP, SigLIP, VisionTextDualEncoder, single towers):
eclip's vectors equal the checkpoint's, through eclip's own image transform and tokenisation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import tiny_checkpoints as tc
from eclip.errors import ConfigError, ModelError
from eclip.model import DualEncoder, DualEncoderConfig, load_model, model_from_config
from eclip.model.from_transformers import checkpoint_kind
from eclip.model.load import model_format
from eclip.model.preprocessing import image_settings

TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"clip": tc.make_clip(root / "clip"), "siglip": tc.make_siglip(root / "siglip"),
            "vtde": tc.make_vtde(root / "vtde")}


def _reference(directory, kind):
    """The checkpoint in transformers, used as its model card says."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    processor = AutoImageProcessor.from_pretrained(directory)
    pixels = processor(images=tc.photos(), return_tensors="pt")["pixel_values"]
    padding = "max_length" if kind == "siglip" else True
    tokens = tokenizer(tc.TEXTS, padding=padding, truncation=True,
                       max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
    with torch.no_grad():
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    return model, pixels, image, text


def _eclip_vectors(model: DualEncoder):
    transform = model.image_transform()
    pixels = torch.stack([transform(im) for im in tc.photos()])
    with torch.no_grad():
        return pixels, model.encode_image(pixels), model.encode_text(**model.tokenize(tc.TEXTS))


@pytest.mark.parametrize("kind", ["clip", "siglip", "vtde"])
def test_checkpoint_vectors_equal_transformers(checkpoints, kind):
    directory = checkpoints[kind]
    assert checkpoint_kind(directory) == kind
    model = load_model(directory).eval()
    hf, ref_pixels, ref_image, ref_text = _reference(directory, kind)
    pixels, image, text = _eclip_vectors(model)
    assert pixels.shape == ref_pixels.shape
    torch.testing.assert_close(pixels, ref_pixels, atol=TOL, rtol=0)
    torch.testing.assert_close(image, ref_image, atol=TOL, rtol=0)
    torch.testing.assert_close(text, ref_text, atol=TOL, rtol=0)
    assert ref_image.std() > 0.05 and ref_text.std() > 0.05  # not degenerate vectors
    assert model.logit_scale().item() == pytest.approx(hf.logit_scale.exp().item(), rel=1e-6)
    if kind == "siglip":
        assert model.logit_bias.item() == pytest.approx(hf.logit_bias.item())
        assert model.config.projection == "identity" and model.config.text_padding == "max_length"
    else:
        assert model.logit_bias.item() == pytest.approx(-10.0)
    assert model.config.max_length == hf.config.text_config.max_position_embeddings


def test_clip_preprocessing_settings(checkpoints):
    settings = image_settings(checkpoints["clip"])
    assert settings["image_resize"] == "shortest_edge"
    assert (settings["image_size"], settings["image_resize_size"]) == (32, 36)
    assert settings["image_resample"] == "bicubic"
    assert settings["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


@pytest.mark.parametrize("resample", [2, 0, 1])  # bilinear, nearest, lanczos: the same pixels too
def test_clip_pixels_other_resample(tmp_path, resample):
    from transformers import AutoImageProcessor

    directory = tc.make_clip(tmp_path / "clip", shortest_edge=40, crop=32, resample=resample)
    model = load_model(directory)
    ref = AutoImageProcessor.from_pretrained(directory)(images=tc.photos(), return_tensors="pt")
    pixels = torch.stack([model.image_transform()(im) for im in tc.photos()])
    torch.testing.assert_close(pixels, ref["pixel_values"], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_save_and_reload_round_trip(checkpoints, tmp_path, kind):
    model = load_model(checkpoints[kind]).eval()
    _, image, text = _eclip_vectors(model)
    saved = model.save_pretrained(tmp_path / "eclip")
    processor = json.loads((saved / "preprocessor_config.json").read_text())
    assert processor["image_resize"] == model.config.image_resize
    again = load_model(saved).eval()
    assert again.config == model.config
    _, image2, text2 = _eclip_vectors(again)
    torch.testing.assert_close(image2, image, atol=TOL, rtol=0)
    torch.testing.assert_close(text2, text, atol=TOL, rtol=0)
    assert again.logit_bias.item() == model.logit_bias.item()


def test_load_model_reads_a_checkpoint_and_the_class_only_its_own_format(checkpoints, tmp_path):
    loaded = load_model(checkpoints["clip"]).eval()
    assert model_format(checkpoints["clip"]) == "transformers"
    with pytest.raises(ModelError, match="eclip.model.load_model"):
        DualEncoder.from_pretrained(checkpoints["clip"])  # conversion stays out of the model class
    saved = loaded.save_pretrained(tmp_path / "saved")
    assert model_format(saved) == "eclip"
    _, image, text = _eclip_vectors(loaded)
    _, image2, text2 = _eclip_vectors(DualEncoder.from_pretrained(saved).eval())
    torch.testing.assert_close(image, image2, atol=0, rtol=0)
    torch.testing.assert_close(text, text2, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="keeps its own settings, max_length"):
        load_model(saved, max_length=8)


def test_from_checkpoint_is_a_deprecated_alias(checkpoints):
    from eclip.model import from_checkpoint

    with pytest.warns(DeprecationWarning, match="load_model"):
        model = from_checkpoint(checkpoints["clip"], max_length=8)
    assert model.config.max_length == 8


def test_init_from_in_config_with_overrides(checkpoints):
    config = DualEncoderConfig(init_from=str(checkpoints["clip"]), max_length=8,
                               text_composer={"fields": ["title"]})
    with pytest.raises(ConfigError, match="load_model"):
        DualEncoder.build(config)  # a checkpoint is opened by load_model, not built
    model = model_from_config(config)
    assert model.config.max_length == 8 and model.config.text_composer == {"fields": ["title"]}
    assert model.config.text_tower == "hf" and model.config.image_tower == "hf"
    assert model.tokenize(tc.TEXTS)["input_ids"].shape[1] == 8
    with pytest.raises(ConfigError, match="embed_dim cannot be set"):
        load_model(checkpoints["clip"], embed_dim=7)


def test_unsupported_directories_are_refused(tmp_path, checkpoints):
    bert = tc.make_bert(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"config.json: model_type 'bert' is not a checkpoint"):
        load_model(bert)
    with pytest.raises(ModelError, match="model_type 'bert'"):
        DualEncoder.from_pretrained(bert)
    with pytest.raises(ModelError, match="config.json is missing"):
        load_model(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        load_model(broken)
    # a CLIP whose processor eclip cannot reproduce (no resize) is refused, naming the file
    odd = tc.make_clip(tmp_path / "odd")
    data = json.loads((odd / "preprocessor_config.json").read_text())
    (odd / "preprocessor_config.json").write_text(json.dumps({**data, "do_resize": False}))
    with pytest.raises(ModelError, match="preprocessor_config.json: do_resize is false"):
        load_model(odd)


def test_hf_vision_tower_next_to_hf_text_tower(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    vit, bert = tc.make_vit(tmp_path / "vit"), tc.make_bert(tmp_path / "bert")
    config = DualEncoderConfig(image_tower="hf", image_model=str(vit), text_model=str(bert),
                               text_pooling="pooler", embed_dim=16)
    model = DualEncoder.build(config).eval()
    assert model.config.image_resize == "squash" and model.config.image_size == 32
    vit_ref, bert_ref = AutoModel.from_pretrained(vit).eval(), AutoModel.from_pretrained(bert).eval()
    pixels = torch.stack([model.image_transform()(im) for im in tc.photos()])
    tokens = AutoTokenizer.from_pretrained(bert)(tc.TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.image_features(pixels), vit_ref(pixel_values=pixels).pooler_output,
                                   atol=TOL, rtol=0)
        ours = model.text_features(**model.tokenize(tc.TEXTS))
        torch.testing.assert_close(ours, bert_ref(**tokens).pooler_output, atol=TOL, rtol=0)
        image, text = model.encode_image(pixels), model.encode_text(**model.tokenize(tc.TEXTS))
    again = load_model(model.save_pretrained(tmp_path / "eclip")).eval()
    assert again.config.image_pooling == "pooler"
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(pixels), image, atol=TOL, rtol=0)
        torch.testing.assert_close(again.encode_text(**again.tokenize(tc.TEXTS)), text, atol=TOL, rtol=0)


def test_hf_vision_tower_without_pooler_uses_cls(tmp_path):
    from transformers import AutoModel

    vit = tc.make_vit(tmp_path / "vit", pooler=False)
    config = DualEncoderConfig(image_tower="hf", image_model=str(vit), text_model=str(tc.make_bert(tmp_path / "b")))
    model = DualEncoder.build(config).eval()
    assert model.config.image_pooling == "cls"
    pixels = torch.stack([model.image_transform()(im) for im in tc.photos()[:2]])
    ref = AutoModel.from_pretrained(vit, add_pooling_layer=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.image_features(pixels),
                                   ref(pixel_values=pixels).last_hidden_state[:, 0], atol=TOL, rtol=0)


def test_hf_convnext_tower(tmp_path):
    from transformers import AutoModel

    convnext = tc.make_convnext(tmp_path / "convnext")
    config = DualEncoderConfig(image_tower="hf", image_model=str(convnext), image_size=32,
                               text_model=str(tc.make_bert(tmp_path / "b")))
    model = DualEncoder.build(config).eval()
    assert model.image_tower.out_dim == 16
    pixels = torch.stack([model.image_transform()(im) for im in tc.photos()[:2]])
    with torch.no_grad():
        ref = AutoModel.from_pretrained(convnext).eval()(pixel_values=pixels).pooler_output
        torch.testing.assert_close(model.image_features(pixels), ref, atol=TOL, rtol=0)


def test_whole_checkpoint_as_image_model_is_refused(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="model.init_from"):
        DualEncoder.build(DualEncoderConfig(image_tower="hf", image_model=str(checkpoints["clip"]),
                                            text_model=str(tc.make_bert(tmp_path / "bert"))))
