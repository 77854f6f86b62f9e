"""Small files for the hostile-input tests: photos, JSONL catalogs, and the checks every such test
makes (a one-line error naming its parts; no file opened outside a folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from eclip.atomic import PROCESS_START

PWNED = Path(os.environ.get("TMPDIR", "/tmp")) / f"eclip-pwned-{os.getpid()}"


class Payload:
    """A pickle with a global: unpickled by a full ``torch.load`` it would create ``PWNED``."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def png(path: Path, colour=(200, 30, 30), size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def no_file_outside(opened: list[str], outside: Path) -> None:
    bad = [p for p in opened if Path(p).is_relative_to(outside.resolve())]
    assert not bad, f"opened outside the image root: {bad}"


def assert_one_line(exc: BaseException, *parts: str) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    for part in parts:
        assert part in text, (part, text)
    return text


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path: Path, seconds: float = 3600) -> None:
    old = PROCESS_START - seconds
    os.utime(path, (old, old), follow_symlinks=False)
