import pytest

from eclip.config import apply_overrides, load_yaml, parse_override
from eclip.errors import ConfigError
from eclip.train.recipe import load_recipe


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
