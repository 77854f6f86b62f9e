"""A model's identity: one SHA-256 over the files that decide its vectors.

``eclip embed`` records it with the vectors (Parquet metadata, the Ray manifest) and the search
index records it in ``info.json``, so that vectors of two models are never mixed in one index. The
hash covers the weights (``*.safetensors``, ``*.bin``, ``*.pt``) and the configuration files
(``*.json``, ``*.txt``, ``*.model``: the model's config, its tokenizer) at its top level, by name
and content, in name order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from eclip.errors import EclipError

_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".txt", ".model")
PARQUET_KEY = b"eclip.model_sha256"  # the key in the Parquet schema metadata
MANIFEST_KEY = "model_sha256"  # the key in the Ray manifest and in the index's info.json


def model_sha256(model_dir: str | Path) -> str:
    """The SHA-256 of the model directory's weights and configuration (see the module docstring)."""
    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.glob("*") if p.is_file() and p.suffix in _SUFFIXES)
    if not any(p.suffix in (".safetensors", ".bin", ".pt") for p in files):
        raise EclipError(f"{model_dir} holds no model weights (*.safetensors / *.bin)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
