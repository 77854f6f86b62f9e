"""Damaged files of a model directory (``eclip.model.files``): every JSON file read before
transformers sees it, ``auto_map`` (remote code) refused, truncated weights named; one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eclip.errors import ModelError
from eclip.model import DualEncoder

from files import PWNED, assert_one_line


def _model_copy(tiny_model_dir, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def test_tokenizer_json_that_is_not_json(tiny_model_dir, tmp_path):
    copy = _model_copy(tiny_model_dir, tmp_path)
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, str(copy / "tokenizer.json"), "not valid JSON")


def test_tokenizer_json_that_tokenizers_refuse(tiny_model_dir, tmp_path):
    copy = _model_copy(tiny_model_dir, tmp_path)
    (copy / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}', encoding="utf-8")
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, str(copy), "tokenizer cannot be loaded")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_auto_map_asking_for_remote_code_is_refused(tiny_model_dir, tmp_path, name):
    copy = _model_copy(tiny_model_dir, tmp_path)
    (copy / "evil.py").write_text(f"open({str(PWNED)!r}, 'w')\n", encoding="utf-8")
    data = json.loads((copy / name).read_text(encoding="utf-8"))
    data["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTokenizer", None]}
    (copy / name).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, str(copy / name), "auto_map", "trust_remote_code")
    assert not PWNED.exists()


def test_auto_map_in_a_transformers_checkpoint_is_refused(tmp_path):
    from eclip.model import load_model

    directory = tmp_path / "clip"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(
        {"model_type": "clip", "auto_map": {"AutoModel": "modeling.Evil"}}), encoding="utf-8")
    with pytest.raises(ModelError) as err:
        load_model(directory)
    assert_one_line(err.value, "config.json", "auto_map")


@pytest.mark.parametrize("cut", [4, 60, -100])
def test_truncated_safetensors(tiny_model_dir, tmp_path, cut):
    copy = _model_copy(tiny_model_dir, tmp_path)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:cut])
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, str(weights), "damaged or truncated")


def test_config_json_nested_too_deeply_or_not_utf8(tiny_model_dir, tmp_path):
    copy = _model_copy(tiny_model_dir, tmp_path)
    (copy / "preprocessor_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, "preprocessor_config.json", "nested too deeply")
    (copy / "preprocessor_config.json").write_bytes(b'{"image_size": "caf\xe9"}')
    with pytest.raises(ModelError) as err:
        DualEncoder.from_pretrained(copy)
    assert_one_line(err.value, "preprocessor_config.json", "UTF-8")
