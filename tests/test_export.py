"""Export: a model started from a checkpoint and trained a little is loaded by transformers and by
sentence-transformers (without eclip) and gives eclip's vectors; exports that cannot are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tiny_checkpoints as tc
from eclip.errors import ModelError
from eclip.model import DualEncoder, DualEncoderConfig, load_model
from eclip.model.export import export_model

TOL = 1e-5


def _train_a_little(model: DualEncoder, steps: int = 3) -> DualEncoder:
    """A few AdamW steps of a contrastive loss (softmax, plus the sigmoid bias term) on random pairs."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    transform = model.image_transform(train=True)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.stack([transform(im, gen) for im in tc.photos()])
    tokens = model.tokenize(tc.TEXTS)
    target = torch.arange(len(tc.TEXTS))
    for _ in range(steps):
        image, text, scale = model(pixels, **tokens)
        logits = scale * image @ text.T
        sigmoid = F.softplus(-(2 * torch.eye(len(target)) - 1) * (logits + model.logit_bias)).mean()
        loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target) + sigmoid
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _eclip_vectors(model: DualEncoder):
    transform = model.image_transform()
    pixels = torch.stack([transform(im) for im in tc.photos()])
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(**model.tokenize(tc.TEXTS))


@pytest.fixture(scope="module", params=["clip", "siglip"])
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    make = tc.make_clip if request.param == "clip" else tc.make_siglip
    start = make(root / "ckpt")
    model = _train_a_little(load_model(start))
    before = load_model(start).eval()
    moved = [name for name, p in model.named_parameters()
             if not torch.equal(p, dict(before.named_parameters())[name])]
    assert any(n.startswith("image_tower.") for n in moved) and any(n.startswith("text_tower.") for n in moved)
    return request.param, model, root


def test_transformers_export_gives_eclip_vectors(trained):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    kind, model, root = trained
    out = export_model(model, root / "hf")
    hf = AutoModel.from_pretrained(out).eval()
    assert type(hf).__name__ == {"clip": "CLIPModel", "siglip": "SiglipModel"}[kind]
    tokenizer = AutoTokenizer.from_pretrained(out)
    padding = "max_length" if kind == "siglip" else True
    tokens = tokenizer(tc.TEXTS, padding=padding, truncation=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(out)(images=tc.photos(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image = F.normalize(hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(hf.get_text_features(**tokens).pooler_output, dim=-1)
    ours_image, ours_text = _eclip_vectors(model)
    torch.testing.assert_close(image, ours_image, atol=TOL, rtol=0)
    torch.testing.assert_close(text, ours_text, atol=TOL, rtol=0)
    assert hf.logit_scale.exp().item() == pytest.approx(model.logit_scale().item(), rel=1e-6)
    if kind == "siglip":
        assert hf.logit_bias.item() == pytest.approx(model.logit_bias.item(), rel=1e-6)
    # the exported directory is itself a checkpoint eclip starts from, with the same vectors
    again_image, again_text = _eclip_vectors(load_model(out).eval())
    torch.testing.assert_close(again_image, ours_image, atol=TOL, rtol=0)
    torch.testing.assert_close(again_text, ours_text, atol=TOL, rtol=0)


def test_transformers_processor_loads(trained):
    from transformers import AutoProcessor

    kind, model, root = trained
    out = export_model(model, root / "hf-processor")
    processor = AutoProcessor.from_pretrained(out)
    batch = processor(text=tc.TEXTS[:2], images=tc.photos()[:2], padding=True, return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, model.config.image_size, model.config.image_size)


def test_sentence_transformers_export_gives_eclip_vectors(trained):
    from sentence_transformers import SentenceTransformer

    kind, model, root = trained
    out = export_model(model, root / "st", format="sentence-transformers")
    st = SentenceTransformer(str(out), device="cpu")
    ours_image, ours_text = _eclip_vectors(model)
    text = st.encode(tc.TEXTS, convert_to_tensor=True)
    image = st.encode(tc.photos(), convert_to_tensor=True)
    torch.testing.assert_close(text, ours_text, atol=TOL, rtol=0)
    torch.testing.assert_close(image, ours_image, atol=TOL, rtol=0)


@pytest.mark.slow
def test_vtde_and_hf_towers_export(tmp_path):
    from transformers import AutoModel, VisionTextDualEncoderModel

    vit, bert = tc.make_vit(tmp_path / "vit"), tc.make_bert(tmp_path / "bert")
    model = DualEncoder.build(DualEncoderConfig(image_tower="hf", image_model=str(vit), text_model=str(bert),
                                                text_pooling="pooler", embed_dim=16))
    model = _train_a_little(model, steps=2)
    out = export_model(model, tmp_path / "out")
    hf = AutoModel.from_pretrained(out).eval()
    assert isinstance(hf, VisionTextDualEncoderModel)
    pixels = torch.stack([model.image_transform()(im) for im in tc.photos()])
    tokens = model.tokenize(tc.TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1),
                                   model.encode_image(pixels), atol=TOL, rtol=0)
        torch.testing.assert_close(F.normalize(hf.get_text_features(**tokens).pooler_output, dim=-1),
                                   model.encode_text(**tokens), atol=TOL, rtol=0)


def test_exports_that_cannot_give_eclip_vectors_are_refused(tmp_path, tiny_model_config):
    from eclip.model import train_tokenizer

    tokenizer = train_tokenizer(tc.CORPUS, 60)
    scratch = DualEncoder.build(DualEncoderConfig(**{**tiny_model_config, "scratch_vocab_size": 60}), tokenizer)
    with pytest.raises(ModelError, match="cannot export the 'vit' image tower: only 'hf' image towers"):
        export_model(scratch, tmp_path / "a")
    vit, bert = tc.make_vit(tmp_path / "vit"), tc.make_bert(tmp_path / "bert")
    mean = DualEncoder.build(DualEncoderConfig(image_tower="hf", image_model=str(vit), text_model=str(bert),
                                               text_pooling="mean", embed_dim=16))
    with pytest.raises(ModelError, match="cannot export text pooling 'mean'"):
        export_model(mean, tmp_path / "b", format="sentence-transformers")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ModelError, match="unknown export format 'tflite'"):
        export_model(mean, tmp_path / "c", format="tflite")
