"""Dual encoder, tower registry, and the one way to open a model (``load_model``).

Modules, in import order (each imports only those above it):

- ``config``, ``files``, ``layers``: the config dataclass, guarded JSON reads, layer groups
- ``hf``, ``preprocessing``, ``towers``: transformers helpers, preprocessor_config.json <-> config,
  the tower interface and registry
- ``tokenizer``, ``text_towers``, ``image_towers``: tokenizers and the built-in towers
- ``dual_encoder``: the model, ``build`` from a config, eclip's own save / read
- ``from_transformers``, ``to_transformers``: transformers' dual encoders to and from a DualEncoder
- ``open_clip_siglip``, ``open_clip``: open_clip folders in and out (through transformers'
  SiglipModel for the timm-tower SigLIP ports, CLIPModel for OpenAI-style ViT CLIPs)
- ``load``: ``load_model``, the one way in, dispatching on what a folder holds
- ``onnx``, ``export``, ``merge``: the ways out, WiSE-FT

(``tests/test_model_modules.py`` holds this order and checks it.)
"""

from eclip.model.config import BUNDLED_MINILM, VIT_PRESETS, DualEncoderConfig
from eclip.model.dual_encoder import DualEncoder
from eclip.model.export import export_model
from eclip.model.load import from_checkpoint, load_model, model_from_config
from eclip.model.tokenizer import load_tokenizer, train_tokenizer
from eclip.model.towers import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    ImageTower,
    TextTower,
    register_image_tower,
    register_text_tower,
)

__all__ = [
    "BUNDLED_MINILM", "VIT_PRESETS", "DualEncoderConfig", "DualEncoder", "load_tokenizer",
    "train_tokenizer", "IMAGE_TOWERS", "TEXT_TOWERS", "ImageTower", "TextTower",
    "register_image_tower", "register_text_tower", "load_model", "model_from_config",
    "from_checkpoint", "export_model",
]
