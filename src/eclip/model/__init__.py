"""Dual encoder, tower registry, save / load."""

from eclip.model.config import BUNDLED_MINILM, VIT_PRESETS, DualEncoderConfig
from eclip.model.dual_encoder import DualEncoder
from eclip.model.export import export_model
from eclip.model.pretrained import from_checkpoint, load_model
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
    "register_image_tower", "register_text_tower", "from_checkpoint", "load_model", "export_model",
]
