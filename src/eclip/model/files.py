"""The one guarded reader of a model directory's files (eclip's own, or a transformers one).

Before anything in a directory is handed to transformers or tokenizers, its JSON files are read
here: a file that is not JSON (or nested too deeply, or not UTF-8) is a ModelError naming it, and
an ``auto_map`` (a request to import Python code that ships with the directory) is refused: eclip
never passes ``trust_remote_code``, and says so instead of letting transformers ask or fail.
Weights that cannot be read (a truncated or damaged safetensors file) get :func:`weights_error`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eclip.errors import ModelError

# the JSON files of a model directory that eclip or transformers read
JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "preprocessor_config.json", "processor_config.json", "generation_config.json")
# files whose ``auto_map`` makes transformers import code from the directory
CODE_KEYS = ("auto_map", "custom_pipelines")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, or a one-line ModelError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ModelError(f"{path} cannot be read: its JSON is nested too deeply") from None
    except UnicodeDecodeError as err:
        raise ModelError(f"{path} cannot be read: not UTF-8 text ({err.reason} at byte "
                         f"{err.start})") from None
    except ValueError as err:
        raise ModelError(f"{path} cannot be read: not valid JSON ({err})") from None
    except OSError as err:
        raise ModelError(f"{path} cannot be read: {err.strerror or err}") from None


def guard_model_dir(directory: str | Path) -> Path:
    """``directory`` once its JSON files read as JSON and none asks for remote code."""
    directory = Path(directory)
    for name in JSON_FILES:
        path = directory / name
        if not path.is_file():
            continue
        data = read_json(path)
        if isinstance(data, dict):
            asked = [key for key in CODE_KEYS if data.get(key)]
            if asked:
                raise ModelError(
                    f"{path} asks for Python code shipped with the model ({asked[0]}: "
                    f"{_short(data[asked[0]])}); eclip never runs a model directory's code "
                    f"(trust_remote_code): use a model whose architecture transformers has built in")
        elif name != "tokenizer.json":
            raise ModelError(f"{path} is not a JSON object")
    return directory


def weights_error(directory: str | Path, err: BaseException) -> ModelError:
    """A ModelError naming the weights file of ``directory`` that could not be read."""
    directory = Path(directory)
    files = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    where = files[0] if files else directory
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    return ModelError(f"{where} cannot be read (damaged or truncated?): {reason}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
