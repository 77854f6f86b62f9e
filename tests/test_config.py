import json
import shutil

import pytest
import torch

from eclip.catalog.config import DataConfig
from eclip.catalog.readers import read_catalog
from eclip.cli import main
from eclip.config import apply_overrides, default_threads, load_yaml, parse_override, use_threads
from eclip.errors import ConfigError, ModelError
from eclip.train.recipe import TrainConfig, load_recipe

from files import assert_one_line, jsonl


def test_override_values_are_read_as_yaml():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("train.lock_image=true") == (["train", "lock_image"], True)
    assert parse_override("data.column_map={title: name}") == (["data", "column_map"], {"title": "name"})
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")


def test_precedence_defaults_then_yaml_then_cli(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\nmodel:\n  embed_dim: 64\n")
    recipe = load_recipe(path, ["train.lr=0.5", "data.catalog=x.csv"])
    assert recipe.train.epochs == 3          # from YAML
    assert recipe.train.lr == 0.5            # CLI beats YAML
    assert recipe.train.batch_size == 64     # default
    assert recipe.data.catalog == "x.csv"
    assert recipe.model.embed_dim == 64      # the model section is a DualEncoderConfig


def test_unknown_key_is_named_with_known_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in section 'train'.*epochs"):
        load_recipe(None, ["train.epoch=3"])


def test_type_errors_are_reported():
    with pytest.raises(ConfigError, match="'train.epochs' must be int"):
        load_recipe(None, ["train.epochs=many"])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_bundled_demo_recipe_parses():
    from eclip.demo import bundled_recipe

    recipe = load_recipe(bundled_recipe("demo"))
    assert recipe.train.lock_image is True and recipe.train.targets == "catalog"


def test_exponent_without_dot_is_a_number_in_yaml_and_cli(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 3e-4\n")
    assert load_recipe(path).train.lr == 3e-4
    assert load_recipe(None, ["train.weight_decay=1E-2"]).train.weight_decay == 0.01


@pytest.mark.parametrize("name", ["from_clip", "from_siglip"])
def test_fine_tuning_recipes_start_from_a_checkpoint(name, tmp_path):
    """The bundled fine-tuning recipes build the checkpoint's model (tiny here) with its loss."""
    from tiny_checkpoints import make_clip, make_siglip

    from eclip.demo import bundled_recipe
    from eclip.model import model_from_config
    from eclip.train.trainer import loss_kind

    checkpoint = (make_clip if name == "from_clip" else make_siglip)(tmp_path / "ckpt")
    recipe = load_recipe(bundled_recipe(name), [f"model.init_from={checkpoint}"])
    assert recipe.train.targets == "catalog" and recipe.train.precision == "bf16"
    model = model_from_config(recipe.model)
    assert model.config.init_from == str(checkpoint)
    assert loss_kind(recipe.train, model) == ("softmax" if name == "from_clip" else "sigmoid")


def test_crop_resample_is_a_data_setting_checked_against_pil_filters():
    recipe = load_recipe(None, ["data.crop_resample=bicubic"])
    assert recipe.data.crop_resample == "bicubic"
    assert load_recipe(None, []).data.crop_resample == "bilinear"
    with pytest.raises(ConfigError, match="data.crop_resample must be one of"):
        load_recipe(None, ["data.crop_resample=cubic"])


# ------------------------------------------------------------------ the model section, typed
def test_model_section_is_typed_at_load_time(tmp_path):
    """The recipe's ``model`` section is a DualEncoderConfig built when the recipe is read, so a
    wrong key or value is named then, not when the model is built minutes later."""
    from eclip.model import DualEncoderConfig
    from eclip.train.recipe import Recipe

    recipe = load_recipe(None, ["model.image_size=96", "model.text_pooling=cls"])
    assert isinstance(recipe.model, DualEncoderConfig)
    assert (recipe.model.image_size, recipe.model.text_pooling) == (96, "cls")
    assert load_recipe(None).model == DualEncoderConfig()  # no section: the defaults
    # a Python caller's mapping is checked the same way
    assert Recipe(model={"embed_dim": 32}).model.embed_dim == 32
    with pytest.raises(ConfigError, match=r"unknown key 'embed_dimension' in section 'model'.*embed_dim"):
        Recipe(model={"embed_dimension": 32})


@pytest.mark.parametrize("override, message", [
    ("model.embed_dimension=64", r"unknown key 'embed_dimension' in section 'model'; known keys: .*embed_dim"),
    ("model.embed_dim=0", r"model.embed_dim must be >= 1, got 0"),
    ("model.max_length=-3", r"model.max_length must be >= 1, got -3"),
    ("model.image_size=5000", r"model.image_size must be in \[1, 4096\], got 5000"),
    ("model.init_temperature=0", r"model.init_temperature must be > 0, got 0"),
    ("model.fusion_weight=1.5", r"model.fusion_weight must be in \[0, 1\]"),
    ("model.text_pooling=max", r"model.text_pooling must be one of mean, cls, pooler, got 'max'"),
    ("model.vit_preset=huge", r"model.vit_preset must be one of tiny, small, base"),
    ("model.pretrained=maybe", r"'model.pretrained' must be bool"),
    ("model.scratch_hidden=30", r"model.scratch_hidden \(30\) must be divisible by model.scratch_heads"),
])
def test_bad_model_settings_name_the_key_when_the_recipe_loads(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, [override])
    path = tmp_path / "r.yaml"  # the same from a recipe file
    key, value = override.split("=", 1)
    path.write_text(f"model:\n  {key.split('.', 1)[1]}: {value}\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


BAD_OPTIONS = [
    ("train.grad_clip=-1", "> 0"), ("train.grad_clip=0", "> 0"),
    ("train.checkpoint_every=0", ">= 1"), ("train.log_every=0", ">= 1"),
    ("train.lr=-1", "> 0"), ("train.lr=0", "> 0"), ("train.lr=.nan", "> 0"), ("train.lr=.inf", "> 0"),
    ("train.num_workers=-1", ">= 0"), ("train.epochs=-1", ">= 0"), ("train.batch_size=0", ">= 1"),
    ("train.warmup_steps=-5", ">= 0"), ("train.min_lr_ratio=1.5", "in [0, 1]"),
    ("train.min_lr_ratio=-0.1", "in [0, 1]"), ("train.weight_decay=-0.1", ">= 0"),
    ("train.per_group=0", ">= 1"), ("train.max_steps=-1", ">= 0"), ("train.eval_batch_size=0", ">= 1"),
    ("train.micro_batch_size=0", ">= 1"), ("train.loss_chunk_size=0", ">= 1"),
    ("train.tower_lr_scale=-1", ">= 0"), ("train.image_lr_scale=-1", ">= 0"),
    ("train.text_text_weight=-1", ">= 0"), ("train.image_trainable_blocks=-1", ">= 0"),
    ("train.seed=-1", ">= 0"),
    ("data.val_fraction=1", "in [0, 1)"), ("data.val_fraction=-0.1", "in [0, 1)"),
    ("data.shuffle_buffer=-1", ">= 0"), ("data.max_pixels=0", ">= 1"), ("train.threads=0", ">= 1"),
]


@pytest.mark.parametrize("override,allowed", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
def test_numeric_option_out_of_range_is_a_config_error_naming_key_and_range(override, allowed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert_one_line(err.value, key, allowed)


@pytest.mark.parametrize("override", ["train.grad_clip=.inf", "train.max_steps=null",
                                      "train.image_lr_scale=null", "data.val_fraction=0",
                                      "train.min_lr_ratio=0", "train.min_lr_ratio=1",
                                      "train.epochs=0", "train.num_workers=0", "train.warmup_steps=0",
                                      "train.max_steps=0", "train.threads=null"])
def test_edge_values_inside_the_ranges_are_accepted(override):
    load_recipe(None, [override])


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"train\.grad_clip"):
        TrainConfig(grad_clip=-1.0)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        DataConfig(val_fraction=1.0)


def test_cli_rejects_a_bad_option_with_one_line(world, tmp_path, capsys):
    root, _ = world
    catalog = jsonl(root / "c.jsonl", [{"title": "t", "images": ["good.png"]}])
    code = main(["train", "--catalog", str(catalog), "--output-dir", str(tmp_path / "run"),
                 "train.grad_clip=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "train.grad_clip" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_recipe_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("train:\n  lr: 1.0e-4  # caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert_one_line(err.value, str(path), "UTF-8")


def test_absurd_image_size_is_a_config_error():
    from eclip.model import DualEncoderConfig

    for key in ("image_size", "image_resize_size"):
        with pytest.raises(ConfigError) as err:
            DualEncoderConfig(**{key: 100_000})
        assert_one_line(err.value, f"model.{key}", "4096")


def test_max_length_beyond_the_text_models_positions_fails_at_build(tiny_model_dir, tiny_catalog,
                                                                   tmp_path):
    from conftest import TINY_MODEL

    from eclip.model import DualEncoder, DualEncoderConfig
    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model

    listings = read_catalog(tiny_catalog).listings[:30]
    with pytest.raises(ConfigError) as err:  # scratch tower: 512 positions
        build_model(Recipe(model={**TINY_MODEL, "max_length": 600}), listings)
    assert_one_line(err.value, "model.max_length=600", "512")
    hf = DualEncoderConfig(text_tower="hf", max_length=1000, image_tower="vit", image_size=32,
                           pretrained=False, embed_dim=16)
    with pytest.raises(ConfigError) as err:  # the bundled MiniLM (BERT): 512 positions
        DualEncoder.build(hf)
    assert_one_line(err.value, "model.max_length=1000", "512")
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "config.json").read_text(encoding="utf-8"))
    config["max_length"] = 600
    (copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError) as err:  # a model directory's config.json
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, "config.json", "model.max_length=600")


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
