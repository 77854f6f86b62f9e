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
    assert recipe.model == {"embed_dim": 64}


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
    from eclip.model import DualEncoder, DualEncoderConfig
    from eclip.train.trainer import loss_kind

    checkpoint = (make_clip if name == "from_clip" else make_siglip)(tmp_path / "ckpt")
    recipe = load_recipe(bundled_recipe(name), [f"model.init_from={checkpoint}"])
    assert recipe.train.targets == "catalog" and recipe.train.precision == "bf16"
    model = DualEncoder.build(DualEncoderConfig.from_dict(recipe.model))
    assert model.config.init_from == str(checkpoint)
    assert loss_kind(recipe.train, model) == ("softmax" if name == "from_clip" else "sigmoid")


def test_crop_resample_is_a_data_setting_checked_against_pil_filters():
    recipe = load_recipe(None, ["data.crop_resample=bicubic"])
    assert recipe.data.crop_resample == "bicubic"
    assert load_recipe(None, []).data.crop_resample == "bilinear"
    with pytest.raises(ConfigError, match="data.crop_resample must be one of"):
        load_recipe(None, ["data.crop_resample=cubic"])
