"""The built-in text towers: ``hf`` (any transformers text model directory, the bundled
all-MiniLM-L6-v2 by default) and ``scratch`` (a small BERT over a tokenizer trained on the
catalog). Importing this module registers them."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from eclip.errors import ConfigError
from eclip.model.config import DualEncoderConfig
from eclip.model.hf import (HFModelTower, build_hf_model, check_max_length, check_vocab,
                            hf_config_from_dict, load_checked, pooled_size, pooling_kwargs,
                            quiet_transformers, resolve_text_model)
from eclip.model.towers import TextTower, register_text_tower


class HFTextTower(HFModelTower, TextTower):
    """A Hugging Face text encoder with mean (over the attention mask), CLS or the model's own
    pooling (``pooler``: ``pooler_output`` -- BERT's tanh head, CLIP's EOS token, SigLIP's head).

    Transformers' text models mask padding out of attention, and the three poolings read only
    unmasked positions (SigLIP's last position is the exception: its models pad to ``max_length``,
    which ``DualEncoder.text_features`` never trims)."""

    masks_padding = True

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.out_dim = (pooled_size(model, text=True) if pooling == "pooler"
                        else int(model.config.hidden_size))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@register_text_tower("hf")
def build_hf_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> HFTextTower:
    """Any Hugging Face AutoModel directory; with ``load_weights`` its weights, else its architecture."""
    if load_weights:
        from transformers import AutoConfig, AutoModel

        path = resolve_text_model(config.text_model)
        pooler = config.text_pooling == "pooler"

        def load():
            with quiet_transformers():
                return AutoModel.from_pretrained(
                    path, output_loading_info=True,
                    **pooling_kwargs(AutoConfig.from_pretrained(path), pooler))

        model = load_checked(load, path, "text_model", config.text_model)
    elif config.text_hf_config is not None:
        model = build_hf_model(hf_config_from_dict(config.text_hf_config, "text_hf_config"),
                                config.text_pooling == "pooler")
    else:
        from transformers import AutoConfig

        model = build_hf_model(AutoConfig.from_pretrained(resolve_text_model(config.text_model)),
                                config.text_pooling == "pooler")
    check_vocab(model, tokenizer)
    check_max_length(model, config)
    return HFTextTower(model, config.text_pooling)


@register_text_tower("scratch")
def build_scratch_text_tower(config: DualEncoderConfig, tokenizer: Any, load_weights: bool) -> HFTextTower:
    """A small randomly initialised BERT sized by ``scratch_*`` over the catalog-trained tokenizer."""
    if config.text_hf_config is not None:
        hf_config = hf_config_from_dict(config.text_hf_config, "text_hf_config")
    else:
        from transformers import BertConfig

        if tokenizer is None:
            raise ConfigError("text_tower 'scratch' needs a tokenizer trained on the catalog: "
                              "call eclip.model.train_tokenizer(texts, vocab_size) and pass it")
        hf_config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=config.scratch_hidden,
            num_hidden_layers=config.scratch_layers, num_attention_heads=config.scratch_heads,
            intermediate_size=4 * config.scratch_hidden, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    model = build_hf_model(hf_config)
    check_vocab(model, tokenizer)
    check_max_length(model, config)
    return HFTextTower(model, config.text_pooling)

