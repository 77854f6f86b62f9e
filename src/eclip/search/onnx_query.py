"""Query encoding under ONNX Runtime: the index's model towers as ONNX graphs, used by the search
service when the index holds them, PyTorch otherwise.

The graphs of an index live in ``INDEX_DIR/onnx/<model_sha1>/`` (written by ``eclip index --onnx``
or ``eclip serve --onnx`` on its first start, atomically: a folder renamed into place), so every
generation built with the same model shares them and a new model never picks up stale ones.

:class:`OnnxEncoder` has the interface of the index's PyTorch encoder (``model``, ``text(query)``,
``image(photo)``, ``backend``) and takes it as its delegate for what stays in Python: the text
composer, the tokenizer, the image transform and the model that classification reads; only the
forward passes run in ONNX Runtime (one intra-op thread per session: queries run in parallel).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from eclip.model.onnx import OnnxTowers, export_onnx, has_onnx
from eclip.search.generation import current_generation, read_info

log = logging.getLogger("eclip.search")

ONNX_DIR = "onnx"


def onnx_dir(index_dir: str | Path, model_sha1: str) -> Path:
    """Where an index keeps the ONNX graphs of the model with this digest."""
    return Path(index_dir) / ONNX_DIR / model_sha1


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def write_index_onnx(index_dir: str | Path) -> Path:
    """The ONNX graphs of the model of ``index_dir``'s generation in service, exported now unless the
    index already holds them; returns their folder. ModelError when onnxruntime is missing or a
    tower cannot be exported."""
    generation = current_generation(index_dir)
    target = onnx_dir(index_dir, read_info(generation).model_sha1)
    if has_onnx(target):
        return target
    from eclip.model import load_model

    export_onnx(load_model(generation / "model").eval(), target)
    log.info("wrote the ONNX query encoder to %s", target)
    return target


class OnnxEncoder:
    """The query encoder over ONNX Runtime sessions (loaded on first use)."""

    backend = "onnx"

    def __init__(self, delegate, directory: Path, *, threads: int = 1, optimization: str = "all"):
        self.delegate = delegate
        self.directory = directory
        self._threads, self._optimization = threads, optimization
        self._towers: OnnxTowers | None = None
        self._lock = threading.Lock()

    @property
    def model(self):
        return self.delegate.model

    @property
    def towers(self) -> OnnxTowers:
        with self._lock:
            if self._towers is None:
                self._towers = OnnxTowers(self.directory, threads=self._threads,
                                          optimization=self._optimization)
            return self._towers

    def text(self, query: str) -> np.ndarray:
        tokens = self.delegate.tokens(query)
        return self.towers.text(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())[0]

    def image(self, image) -> np.ndarray:
        return self.towers.image(self.delegate.pixels(image).numpy())[0]


def query_encoder(index_dir: Path, model_sha1: str, torch_encoder):
    """An :class:`OnnxEncoder` when ``index_dir`` holds the model's graphs and onnxruntime is
    installed, else ``torch_encoder``; the choice is logged."""
    directory = onnx_dir(index_dir, model_sha1)
    if not has_onnx(directory):
        log.info("query encoder: pytorch (no ONNX graphs in %s; write them with eclip index --onnx)",
                 directory.parent)
        return torch_encoder
    if not _onnxruntime_available():
        log.warning("query encoder: pytorch (the index holds ONNX graphs but onnxruntime is not "
                    "installed: pip install 'eclip[onnx]')")
        return torch_encoder
    log.info("query encoder: onnx (%s)", directory)
    return OnnxEncoder(torch_encoder, directory)
