"""Tokenizers: train one on the catalog (Korean-friendly) or load the one a model was built with."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from eclip.errors import ConfigError, ModelError
from eclip.model.config import DualEncoderConfig
from eclip.model.files import guard_model_dir
from eclip.model.hf import quiet_transformers, resolve_text_model

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_MAX_LENGTH = 512
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a Unigram tokenizer on ``texts`` and wrap it as a ``transformers.PreTrainedTokenizerFast``.

    Text is NFKC-normalised (Hangul stays as composed syllables, full-width forms fold to ASCII) and
    lower-cased (Hangul has no case), whitespace is collapsed, and words are split at whitespace,
    punctuation and between digits. Every character seen in training is in the vocabulary, so text
    seen in training never produces [UNK]; an unseen character costs one [UNK] piece, not the word.
    Encodings are BERT-style: ``[CLS] text [SEP]`` (pairs: ``[CLS] a [SEP] b [SEP]``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size must be larger than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
    ])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="[UNK]", show_progress=False)
    count = 0

    def counted() -> Iterable[str]:
        nonlocal count
        for text in texts:
            count += 1
            yield text

    tokenizer.train_from_iterator(counted(), trainer)
    if count == 0:
        raise ConfigError("cannot train a tokenizer on no texts: the training catalog is empty")
    tokenizer.model = _canonical_unigram(json.loads(tokenizer.to_str())["model"]["vocab"], models)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=MODEL_MAX_LENGTH, unk_token="[UNK]",
        pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )


def _canonical_unigram(vocab: list[list], models):
    """The trained pieces in a fixed order: special tokens, then the pieces sorted by text.

    The Unigram trainer returns the same pieces from run to run but in an order (and with scores)
    that vary in their last digits, which would hand the pieces other ids and so other embedding rows
    of a freshly initialised text tower; sorting makes the ids, and the baseline, reproducible.
    """
    scores = {piece: score for piece, score in vocab}
    pieces = list(SPECIAL_TOKENS) + sorted(p for p in scores if p not in SPECIAL_TOKENS)
    return models.Unigram([(p, scores[p]) for p in pieces], unk_id=SPECIAL_TOKENS.index("[UNK]"),
                          byte_fallback=False)


def load_tokenizer(config: DualEncoderConfig, model_dir: str | Path | None = None):
    """The tokenizer saved in ``model_dir``, else the one of ``config.text_model`` (``hf`` towers)."""
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
            raise ModelError(f"{model_dir / _TOKENIZER_FILES[0]} is missing: the model directory has no "
                             f"tokenizer; save it again with DualEncoder.save_pretrained")
        return _auto_tokenizer(guard_model_dir(model_dir))
    if config.text_tower == "scratch":
        raise ConfigError("text_tower 'scratch' has no stock tokenizer: train one with "
                          "eclip.model.train_tokenizer(texts, config.scratch_vocab_size) and pass it")
    return _auto_tokenizer(resolve_text_model(config.text_model))


def _auto_tokenizer(directory: Path):
    """The tokenizer of ``directory`` (its files checked by ``guard_model_dir``); whatever the
    tokenizers / transformers libraries raise on a damaged file becomes a ModelError naming it."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():  # it peeks at config.json, whose model_type it may not know
            return AutoTokenizer.from_pretrained(str(directory))
    except Exception as err:  # noqa: BLE001 - the Rust tokenizers raise a bare Exception
        names = [n for n in _TOKENIZER_FILES + ("vocab.txt", "sentencepiece.bpe.model",
                                                 "spiece.model") if (directory / n).is_file()]
        where = directory / names[0] if names else directory
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise ModelError(f"{where}: the tokenizer cannot be loaded ({reason})") from None
