"""Fine-tuning controls: towers locked by layer groups, layer-wise learning-rate decay, WiSE-FT."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from torch import nn

import tiny_checkpoints as tc
from recipes import tiny_recipe
from eclip.catalog.readers import read_catalog
from eclip.catalog.splits import split_listings
from eclip.errors import ConfigError, ModelError
from eclip.model import DualEncoder, DualEncoderConfig, load_model
from eclip.model.merge import merge_models, merge_state_dicts
from eclip.train.checkpoint import load_checkpoint
from eclip.train.optim import param_groups
from eclip.train.recipe import TrainConfig, load_recipe
from eclip.train.trainer import train


_recipe = partial(tiny_recipe, base=[
    "train.batch_size=16", "train.epochs=1", "train.log_every=1", "train.checkpoint_every=100",
    "train.warmup_steps=0", "train.lr=0.01", "train.max_steps=2"])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tc.make_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture
def clip(clip_dir):
    return load_model(clip_dir)


@pytest.fixture
def data(tiny_catalog):
    listings = read_catalog(tiny_catalog).listings
    return split_listings(listings, load_recipe(None).data)


def _group_state(tower, group):
    state = dict(tower.named_parameters())
    return {name: state[name].detach().clone() for name in group.params}


# ----------------------------------------------------------------------------------- layer groups
def _check_groups(tower, blocks: int) -> None:
    groups = tower.layer_groups()
    names = [name for group in groups for name in group.params]
    assert sorted(names) == sorted(n for n, _ in tower.named_parameters())  # each parameter once
    assert len(names) == len(set(names))
    labels = [group.name for group in groups]
    assert labels[0] == "embeddings" and labels[1:blocks + 1] == [f"block {i}" for i in range(blocks)]
    assert labels[blocks + 1:] in (["head"], [])


def test_every_tower_lists_its_layer_groups_bottom_up(tmp_path, tiny_model_dir):
    clip = load_model(tc.make_clip(tmp_path / "clip"))
    _check_groups(clip.text_tower, 2)
    _check_groups(clip.image_tower, 2)
    assert clip.text_tower.layer_groups()[-1].params == ("model.final_layer_norm.weight",
                                                         "model.final_layer_norm.bias")
    assert "model.pre_layrnorm.weight" in clip.image_tower.layer_groups()[0].params
    siglip = load_model(tc.make_siglip(tmp_path / "siglip"))
    _check_groups(siglip.text_tower, 2)
    _check_groups(siglip.image_tower, 2)
    assert "model.head.probe" in siglip.image_tower.layer_groups()[-1].params  # the pooling head
    vtde = load_model(tc.make_vtde(tmp_path / "vtde"))  # BERT + ViT with poolers
    _check_groups(vtde.text_tower, 2)
    _check_groups(vtde.image_tower, 2)
    assert vtde.text_tower.layer_groups()[-1].params[0].startswith("model.pooler.")
    scratch = load_model(tiny_model_dir)  # scratch BERT (1 layer) + vit tiny
    _check_groups(scratch.text_tower, 1)
    _check_groups(scratch.image_tower, scratch.image_tower.num_blocks)
    convnext = DualEncoder.build(DualEncoderConfig(
        image_tower="hf", image_model=str(tc.make_convnext(tmp_path / "convnext")), image_size=32,
        text_model=str(tc.make_bert(tmp_path / "bert")), max_length=32))
    _check_groups(convnext.image_tower, 2)  # its stages
    effnet = DualEncoder.build(DualEncoderConfig(text_tower="scratch", scratch_hidden=32,
                                                 scratch_layers=1, scratch_heads=2,
                                                 image_tower="efficientnet_lite0", image_size=32,
                                                 pretrained=False), tokenizer=scratch.tokenizer)
    _check_groups(effnet.image_tower, 16)
    assert effnet.image_tower.layer_groups()[-1].params == (
        "net._conv_head.weight", "net._bn1.weight", "net._bn1.bias")


def test_top_layer_groups_train_the_rest_is_locked(clip):
    clip.set_trainable(text_layers=1, image_layers=2)
    text, image = clip.text_tower.layer_groups(), clip.image_tower.layer_groups()
    for groups, top in ((text, 1), (image, 2)):
        for index, group in enumerate(groups):
            params = dict(clip.named_parameters())
            prefix = "text_tower." if groups is text else "image_tower."
            trainable = {params[prefix + name].requires_grad for name in group.params}
            assert trainable == {index >= len(groups) - top}, group.name
    clip.train()
    assert clip.text_tower.training and clip.image_tower.training  # unlocked: dropout on
    assert clip.text_proj.weight.requires_grad and clip.log_scale.requires_grad
    clip.set_trainable()
    assert all(p.requires_grad for p in clip.parameters())


def test_layer_counts_out_of_range_or_on_a_locked_tower_are_refused(clip):
    with pytest.raises(ConfigError, match="between 1 and 4"):
        clip.set_trainable(text_layers=5)
    clip.set_trainable(image=False, image_layers=1).train()  # a locked tower's head alone trains
    head = set(clip.image_tower.layer_groups()[-1].params)
    assert {n for n, p in clip.image_tower.named_parameters() if p.requires_grad} == head
    assert not clip.image_tower.training  # locked: eval mode all the same
    with pytest.raises(ConfigError, match="unlocked text tower"):
        clip.set_trainable(text=False, text_layers=1)
    with pytest.raises(ConfigError, match="at least 1"):
        load_recipe(None, ["train.text_trainable_layers=0"])


def test_batch_norms_of_locked_groups_keep_their_statistics(tiny_model_dir):
    scratch = load_model(tiny_model_dir)
    model = DualEncoder.build(DualEncoderConfig(text_tower="scratch", scratch_hidden=32,
                                                scratch_layers=1, scratch_heads=2,
                                                image_tower="efficientnet_lite0", image_size=32,
                                                pretrained=False), tokenizer=scratch.tokenizer)
    model.set_trainable(image_layers=3).train()  # the head and the top two blocks
    top = model.image_tower.layer_groups()[-3:]
    top_names = {name.rsplit(".", 1)[0] for group in top for name in group.params}
    norms = {name: m for name, m in model.image_tower.named_modules()
             if isinstance(m, nn.BatchNorm2d)}
    assert norms
    for name, module in norms.items():
        assert module.training == (name in top_names), name
    model.eval().train()  # and again after an evaluation
    assert all(m.training == (n in top_names) for n, m in norms.items())


def test_locked_groups_do_not_move_in_training_and_unlocked_ones_do(tmp_path, clip_dir, data):
    before = load_model(clip_dir)
    result = train(_recipe(tmp_path / "run", text_trainable_layers=2, image_trainable_layers=1),
                   load_model(clip_dir), data.train, log=lambda s: None)
    assert result.steps == 2
    for tower, top in (("text_tower", 2), ("image_tower", 1)):
        old, new = getattr(before, tower), getattr(result.model, tower)
        groups = old.layer_groups()
        trained = dict(new.named_parameters())
        for index, group in enumerate(groups):
            moved = [not torch.equal(value, trained[name].detach())
                     for name, value in _group_state(old, group).items()]
            if index >= len(groups) - top:
                assert any(moved), (tower, group.name)
            else:
                assert not any(moved), (tower, group.name)
    assert not torch.equal(before.text_proj.weight, result.model.text_proj.weight)


# ------------------------------------------------------------------------ layer-wise lr decay
def _old_param_groups(model, cfg):
    """The optimizer groups of eclip before layer-wise decay (verbatim), for the bit-identity check."""
    scales = {"": 1.0, "text_tower.": cfg.tower_lr_scale,
              "image_tower.": cfg.tower_lr_scale if cfg.image_lr_scale is None else cfg.image_lr_scale}
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = next((p for p in ("text_tower.", "image_tower.") if name.startswith(p)), "")
        no_decay = param.ndim < 2 or name == "log_scale"
        groups.setdefault((part, no_decay), []).append(param)
    return [
        {"params": params, "lr": cfg.lr * scales[part],
         "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        for (part, no_decay), params in sorted(groups.items())
    ]


def _same_groups(new, old):
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.keys() == b.keys()
        assert a["lr"] == b["lr"] and a["weight_decay"] == b["weight_decay"]
        assert len(a["params"]) == len(b["params"])
        assert all(p is q for p, q in zip(a["params"], b["params"]))


@pytest.mark.parametrize("settings", [
    {}, {"tower_lr_scale": 0.1}, {"tower_lr_scale": 0.3, "image_lr_scale": 0.05},
    {"lock_image": True, "image_trainable_layers": 2}, {"lock_text": True, "lock_image": True},
])
def test_no_decay_gives_exactly_the_groups_of_before(clip_dir, tiny_model_dir, settings):
    models = [load_model(tiny_model_dir)]  # scratch BERT + vit
    if not settings.get("image_trainable_layers"):  # the hf image tower cannot be cut
        models.append(load_model(clip_dir))
    cfg = TrainConfig(lr=3e-4, weight_decay=0.05, **settings)
    recipe = load_recipe(None, [f"train.{k}={v}" for k, v in settings.items()]
                         + ["train.lr=3e-4", "train.weight_decay=0.05"])
    for model in models:
        model.set_trainable(image=not cfg.lock_image, text=not cfg.lock_text,
                            image_layers=cfg.image_trainable_layers)
        model.logit_bias.requires_grad_(False)  # as under the softmax loss
        _same_groups(param_groups(model, cfg), _old_param_groups(model, cfg))
        _same_groups(param_groups(model, recipe), _old_param_groups(model, cfg))  # a Recipe too


def test_layer_wise_decay_gives_each_parameter_the_documented_lr(clip):
    cfg = TrainConfig(lr=1e-3, tower_lr_scale=0.5, image_lr_scale=0.2, text_lr_decay=0.5,
                      image_lr_decay=0.8, weight_decay=0.1, text_trainable_layers=3)
    clip.set_trainable(text_layers=cfg.text_trainable_layers)
    optimizer = torch.optim.AdamW(param_groups(clip, cfg), lr=cfg.lr)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    expected = {}
    for prefix, scale, decay in (("text_tower.", 0.5, 0.5), ("image_tower.", 0.2, 0.8)):
        groups = getattr(clip, prefix[:-1]).layer_groups()
        for index, group in enumerate(groups):
            for name in group.params:
                expected[prefix + name] = 1e-3 * scale * decay ** (len(groups) - 1 - index)
    named = dict(clip.named_parameters())
    assert len(lr_of) == sum(p.requires_grad for p in clip.parameters())
    for name, param in named.items():
        if not param.requires_grad:
            assert id(param) not in lr_of, name
            continue
        assert lr_of[id(param)] == pytest.approx(expected.get(name, 1e-3), rel=1e-12), name
        no_decay = param.ndim < 2 or name == "log_scale"
        assert wd_of[id(param)] == (0.0 if no_decay else 0.1), name
    # the heads: projections, scale and bias at lr; the embeddings of the image tower the lowest
    assert lr_of[id(clip.text_proj.weight)] == lr_of[id(clip.log_scale)] == 1e-3
    emb = named["image_tower.model.embeddings.patch_embedding.weight"]
    assert lr_of[id(emb)] == pytest.approx(1e-3 * 0.2 * 0.8 ** 3)
    # only the top three text groups train: the text embeddings have no group
    assert id(named["text_tower.model.embeddings.token_embedding.weight"]) not in lr_of


@pytest.mark.parametrize("override", ["text_lr_decay=0", "image_lr_decay=1.5", "text_lr_decay=-0.1",
                                      "wise_alpha=1.2", "wise_alpha=-0.5"])
def test_out_of_range_decay_and_alpha_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_recipe(None, [f"train.{override}"])


# --------------------------------------------------------------------------------------- merge
def _nudged(model: DualEncoder, seed: int = 1) -> DualEncoder:
    import copy

    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.1)
    return other


def test_merge_gives_the_endpoints_exactly_and_the_midpoint(clip):
    tuned = _nudged(clip)
    init_state = {k: v.clone() for k, v in clip.state_dict().items()}
    tuned_state = {k: v.clone() for k, v in tuned.state_dict().items()}
    for alpha, expected in ((0.0, init_state), (1.0, tuned_state)):
        merged = merge_models(clip, tuned, alpha).state_dict()
        assert merged.keys() == tuned_state.keys()
        for name, value in merged.items():
            assert torch.equal(value, expected[name]), (alpha, name)
    half = merge_models(clip, tuned, 0.5)
    for name, value in half.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (init_state[name] + tuned_state[name]) / 2,
                                       rtol=0, atol=1e-7)
    assert half.config == tuned.config and half.tokenizer is not None
    assert half is not tuned and half is not clip
    for name, value in clip.state_dict().items():  # the models given are unchanged
        assert torch.equal(value, init_state[name])
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, tuned_state[name])


def test_merge_reads_model_directories_and_the_starting_checkpoint(tmp_path, clip, clip_dir):
    tuned = _nudged(clip)
    tuned.save_pretrained(tmp_path / "tuned")
    from_dirs = merge_models(clip_dir, tmp_path / "tuned", 0.25)
    in_memory = merge_models(clip, tuned, 0.25)
    for name, value in in_memory.state_dict().items():
        assert torch.equal(value, from_dirs.state_dict()[name]), name


def test_integer_buffers_come_from_the_finetuned_model():
    init = {"w": torch.zeros(3), "n": torch.tensor([1, 2]), "flag": torch.tensor(False)}
    tuned = {"w": torch.ones(3), "n": torch.tensor([5, 6]), "flag": torch.tensor(True)}
    merged = merge_state_dicts(init, tuned, 0.5)
    assert torch.equal(merged["w"], torch.full((3,), 0.5))
    assert torch.equal(merged["n"], tuned["n"]) and merged["flag"].item() is True
    half = {"w": torch.zeros(2, dtype=torch.bfloat16)}
    assert merge_state_dicts(half, {"w": torch.ones(2, dtype=torch.bfloat16)}, 0.5)["w"].dtype == \
        torch.bfloat16


def test_merge_refuses_models_of_different_architectures(tmp_path, clip, clip_dir, tiny_model_dir):
    siglip = load_model(tc.make_siglip(tmp_path / "siglip"))
    with pytest.raises(ModelError, match="differ in architecture: '"):
        merge_models(clip, siglip, 0.5)
    with pytest.raises(ModelError, match="differ in architecture"):
        merge_models(tiny_model_dir, clip_dir, 0.5)
    other = _nudged(clip)
    other.image_proj = nn.Linear(other.image_proj.in_features, 7, bias=False)
    with pytest.raises(ModelError, match=r"'image_proj.weight' has shape \(24, 32\) in the starting "
                                         r"model and \(7, 32\)"):
        merge_models(clip, other, 0.5)
    with pytest.raises(ConfigError, match="alpha"):
        merge_models(clip, _nudged(clip), 1.5)


@pytest.mark.slow
def test_wise_alpha_saves_the_merge_of_the_start_and_the_trained_weights(tmp_path, tiny_model_dir,
                                                                         data):
    start = load_model(tiny_model_dir)
    out = tmp_path / "run"
    result = train(_recipe(out, wise_alpha=0.3), load_model(tiny_model_dir),
                   data.train, log=lambda s: None)
    trained = load_checkpoint(out / "checkpoints")["model"]  # the un-merged final weights
    expected = merge_state_dicts(start.state_dict(), trained, 0.3)
    saved = load_model(out / "model").state_dict()
    moved = False
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name
        assert torch.equal(result.model.state_dict()[name], value), name
        moved |= not torch.equal(trained[name], start.state_dict()[name])
    assert moved  # the run trained: the merge is not the start
    assert any(not torch.equal(trained[name], saved[name]) for name in trained)


def test_image_trainable_layers_trains_the_top_of_any_locked_image_tower(clip, data, tmp_path):
    """One knob for "train only the top of the image tower": a CLIP checkpoint's tower cannot be
    cut between blocks (the EfficientNet / vit fast path), so image_trainable_layers=2 with a
    locked tower trains its top block and head unlocked instead of stopping."""
    assert not getattr(clip.image_tower, "num_blocks", 0)
    groups = clip.image_tower.layer_groups()
    before = {k: v.clone() for k, v in clip.state_dict().items() if k.startswith("image_tower.")}
    messages = []
    train(_recipe(tmp_path / "run", lock_image="true", image_trainable_layers=2), clip, data.train,
          log=messages.append)
    assert any("image_trainable_layers=2" in m and "cannot be cut" in m for m in messages)
    after = clip.state_dict()
    moved = {k for k, v in before.items() if not torch.equal(v, after[k])}
    top = {f"image_tower.{n}" for g in groups[-2:] for n in g.params}
    assert moved and moved <= top  # the top block and the head, nothing below


def test_the_demo_recipe_starts_from_a_clip_checkpoint(clip_dir):
    """``eclip train --config demo --init-from CLIP_DIR`` (issue 23's friction): the demo's locked
    EfficientNet settings meet a CLIP tower that cannot be cut. The run goes on with the tower's
    top groups unlocked, and the demo's from-scratch model keys are named as unused."""
    from eclip.demo import bundled_recipe
    from eclip.model import model_from_config
    from eclip.model.load import unused_by_start
    from eclip.train.optim import prepare_finetune, top_of_image_tower

    recipe = load_recipe(bundled_recipe("demo"), [f"model.init_from={clip_dir}"])
    assert recipe.train.lock_image and recipe.train.image_trainable_layers == 3
    unused = unused_by_start(recipe.model)
    assert {"text_tower", "scratch_layers"} <= set(unused)  # the demo's own, not the defaults
    assert "max_length" not in unused and "init_from" not in unused  # a start honours / records them
    model = model_from_config(recipe.model)
    messages = []
    cfg = top_of_image_tower(recipe.train, model, log=messages.append)
    assert not cfg.lock_image and cfg.image_trainable_layers == 3 and cfg.image_cut_blocks == 0
    assert any("cannot be cut" in m for m in messages)
    prepare_finetune(model, cfg)
    top = {n for g in model.image_tower.layer_groups()[-3:] for n in g.params}
    assert {n for n, p in model.image_tower.named_parameters() if p.requires_grad} == top
    assert unused_by_start(load_recipe(bundled_recipe("demo")).model) == []  # no start, no note


def test_image_trainable_blocks_is_the_old_name_of_image_trainable_layers():
    """The EfficientNet-era knob still loads, with a warning that names the new one: N blocks are
    N + 1 layer groups (the blocks and the head); 0 was "off" and stays so, silently."""
    with pytest.warns(FutureWarning, match="image_trainable_layers=3"):
        old = load_recipe(None, ["train.lock_image=true", "train.image_trainable_blocks=2"]).train
    new = load_recipe(None, ["train.lock_image=true", "train.image_trainable_layers=3"]).train
    assert old == new and old.image_trainable_blocks is None
    assert (old.image_trainable_layers, old.image_cut_blocks) == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_recipe(None, ["train.image_trainable_blocks=0"]).train.image_trainable_layers is None
    with pytest.raises(ConfigError, match="old name of train.image_trainable_layers.*set only"):
        load_recipe(None, ["train.image_trainable_blocks=1", "train.image_trainable_layers=2"])
    assert load_recipe(None, ["train.image_trainable_layers=3"]).train.image_cut_blocks == 0  # unlocked
