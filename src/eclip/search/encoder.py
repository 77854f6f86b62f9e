"""The query encoder: the index's model, loaded on first use, turning a query text or photo into a
unit vector of the index's spaces (``onnx_query.py`` runs the same over ONNX Runtime)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from eclip.encode import eval_transform, model_composer
from eclip.encode.text import query_listing


class QueryEncoder:
    """The index's model, loaded on first use. Forward passes of concurrent queries run in
    parallel; tokenizing is one at a time (a fast tokenizer is not re-entrant). Generations built
    with the same model share one encoder.
    """

    backend = "pytorch"

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._model = None
        self._composer = None
        self._transform = None
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    @property
    def model(self):
        with self._load_lock:
            if self._model is None:
                from eclip.model import load_model

                model = load_model(self.model_dir).eval()
                self._composer, self._transform = model_composer(model), eval_transform(model)
                self._model = model
            return self._model

    def tokens(self, query: str) -> dict[str, torch.Tensor]:
        """A query as the model's text composer renders a listing with only this title, tokenized."""
        model = self.model
        text = self._composer.compose(query_listing(query))
        with self._tokenizer_lock:
            return model.tokenize([text])

    def pixels(self, image) -> torch.Tensor:
        """A photo as the model's eval transform gives it, [1, 3, H, W]."""
        self.model  # noqa: B018 - loads the transform
        return self._transform(image)[None]

    def text(self, query: str) -> np.ndarray:
        tokens = self.tokens(query)
        with torch.inference_mode():
            return self.model.encode_text(tokens["input_ids"], tokens["attention_mask"])[0].numpy()

    def image(self, image) -> np.ndarray:
        pixels = self.pixels(image)
        with torch.inference_mode():
            return self.model.encode_image(pixels)[0].numpy()
