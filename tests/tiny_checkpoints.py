"""Tiny random transformers checkpoints, built offline from configs, for tests that need a CLIP,
a SigLIP, a VisionTextDualEncoder or single towers on disk.

Every builder takes a directory, writes ``config.json`` + weights + tokenizer + image processor
there with ``save_pretrained`` (as the hub ships them) and returns the directory. Weights are random
(``seed``); tokenizers are word-level ones trained on the spot on :data:`CORPUS` with ``tokenizers``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

CORPUS = [
    "red cotton t-shirt size m", "blue denim jeans slim fit", "wireless earbuds with case",
    "leather wallet black", "running shoes white 270", "stainless steel water bottle 1l",
    "kids winter jacket green", "ceramic coffee mug set of 2", "gaming mouse rgb", "yoga mat purple",
]
TEXTS = ["red cotton t-shirt", "wireless earbuds with case black", "yoga mat", "unseen words here ok",
         "blue denim jeans slim fit size m white running shoes 270 stainless steel"]


def _word_tokenizer(specials: list[str], unk: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials, show_progress=False))
    return tok


def clip_tokenizer(max_length: int = 16):
    """``<|startoftext|> words <|endoftext|>``, padded with ``<pad>`` (CLIP-style)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    tok = _word_tokenizer(specials, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 2), ("<|endoftext|>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                   unk_token="<unk>", bos_token="<|startoftext|>", eos_token="<|endoftext|>")


def siglip_tokenizer(max_length: int = 16):
    """``words </s>``, padded with ``<pad>`` (SigLIP-style: no start token)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _word_tokenizer(["<pad>", "<unk>", "</s>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                   unk_token="<unk>", eos_token="</s>")


def bert_tokenizer(max_length: int = 32):
    """``[CLS] words [SEP]``, padded with ``[PAD]`` (BERT-style)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = _word_tokenizer(specials, "[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="[PAD]",
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]")


_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
_TINY_VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=2, num_attention_heads=2)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every weight drawn anew (N(0, 0.2)); LayerNorms stay near identity so features vary."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * 0.2
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + noise * 0.5)
            else:
                param.copy_(noise)


def make_clip(directory: str | Path, seed: int = 0, shortest_edge: int = 36, crop: int = 32,
              resample: int = 3) -> Path:
    """A tiny random ``CLIPModel`` (32x32 images, patch 8; 16-token texts) with its
    ``CLIPImageProcessor`` (shortest edge ``shortest_edge``, centre crop ``crop``) and tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    directory = Path(directory)
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=16,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **_TINY_TEXT),
        vision_config=dict(_TINY_VISION, image_size=crop), projection_dim=24)
    model = CLIPModel(config)
    _randomise(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": shortest_edge}, crop_size={"height": crop, "width": crop},
                          resample=resample).save_pretrained(directory)
    return directory


def make_siglip(directory: str | Path, seed: int = 0, size: int = 32) -> Path:
    """A tiny random ``SiglipModel`` (squash to ``size``, mean/std 0.5, 16-token texts padded to
    max_length) with its ``SiglipImageProcessor`` and tokenizer; logit scale log 10, bias -3."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    directory = Path(directory)
    tokenizer = siglip_tokenizer()
    config = SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=16,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         **_TINY_TEXT),
        vision_config=dict(_TINY_VISION, image_size=size))
    model = SiglipModel(config)
    _randomise(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(directory)
    return directory


def vit_config(**overrides):
    from transformers import ViTConfig

    return ViTConfig(**{**_TINY_VISION, **overrides})


def bert_config(vocab_size: int):
    from transformers import BertConfig

    # 64 positions: above DualEncoderConfig's default max_length (48), which the build checks
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=64, **_TINY_TEXT)


def make_vtde(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random ``VisionTextDualEncoderModel``: ViT (pooler head) + BERT (pooler head), with a
    ``ViTImageProcessor`` (squash to 32, mean/std 0.5) and a BERT-style tokenizer."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel, ViTImageProcessorPil

    directory = Path(directory)
    tokenizer = bert_tokenizer()
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vit_config(), bert_config(len(tokenizer)), projection_dim=24)
    model = VisionTextDualEncoderModel(config)
    _randomise(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def make_vit(directory: str | Path, seed: int = 0, pooler: bool = True) -> Path:
    """A tiny random ``ViTModel`` directory (with or without its pooler) + ``ViTImageProcessor``."""
    from transformers import ViTImageProcessorPil, ViTModel

    directory = Path(directory)
    model = ViTModel(vit_config(), add_pooling_layer=pooler)
    _randomise(model, seed)
    model.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def make_convnext(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random ``ConvNextModel`` directory (no image processor: eclip's defaults apply)."""
    from transformers import ConvNextConfig, ConvNextModel

    directory = Path(directory)
    model = ConvNextModel(ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1],
                                         image_size=32))
    _randomise(model, seed)
    model.save_pretrained(directory)
    return directory


def make_bert(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random ``BertModel`` directory (with its pooler) and a BERT-style tokenizer."""
    from transformers import BertModel

    directory = Path(directory)
    tokenizer = bert_tokenizer()
    model = BertModel(bert_config(len(tokenizer)))
    _randomise(model, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def photos(seed: int = 0) -> list[Image.Image]:
    """Smooth-ish random RGB photos of different aspect ratios (wide, tall, square, tiny, odd)."""
    rng = np.random.default_rng(seed)
    images = []
    for width, height in [(64, 40), (37, 90), (48, 48), (20, 29), (101, 67)]:
        base = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
        small = Image.fromarray(base)
        noise = rng.integers(-20, 21, size=(height, width, 3))
        big = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int64)
        images.append(Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)))
    return images
