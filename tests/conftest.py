"""Shared fixtures: a tiny demo catalog and a tiny from-scratch model, built once per session."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes import SHOP_COLUMNS, model_overrides


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    from eclip.catalog.demo import make_demo_catalog

    out = tmp_path_factory.mktemp("tiny_catalog")
    return make_demo_catalog(out, n_listings=120, seed=3, image_size=32, progress=False)


TINY_MODEL = {
    "text_tower": "scratch", "scratch_hidden": 32, "scratch_layers": 1, "scratch_heads": 2,
    "scratch_vocab_size": 300, "max_length": 24,
    "image_tower": "vit", "vit_preset": "tiny", "image_size": 32,
    "embed_dim": 16, "pretrained": False,
}


@pytest.fixture
def tiny_model_config():
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_catalog, tmp_path_factory):
    """A tiny dual encoder (scratch BERT + tiny ViT) saved as a model directory."""
    from eclip.catalog.readers import read_catalog
    from eclip.train.recipe import Recipe
    from eclip.train.run import build_model

    torch.manual_seed(0)
    listings = read_catalog(tiny_catalog).listings
    model = build_model(Recipe(model=dict(TINY_MODEL)), listings)
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def listings(tiny_catalog):
    """The tiny catalog's listings (a module's own copy: a test may change them)."""
    from eclip.catalog.readers import read_catalog

    return read_catalog(tiny_catalog).listings


@pytest.fixture(scope="module")
def train_listings(listings):
    """The training split of the tiny catalog's listings under the default recipe."""
    from eclip.catalog.splits import split_listings
    from eclip.train.recipe import load_recipe

    return split_listings(listings, load_recipe(None).data).train


@pytest.fixture(scope="session")
def tiny_index(tiny_model_dir, tiny_catalog, tmp_path_factory):
    """The tiny model's index (FAISS) of every listing of the tiny catalog, built once: read it
    or serve it, never write to it (``shutil.copytree`` it first)."""
    from eclip.catalog.readers import read_catalog
    from eclip.search import build_index

    out = tmp_path_factory.mktemp("tiny_index") / "index"
    build_index(tiny_model_dir, read_catalog(tiny_catalog).listings, out, progress=False)
    return out


@pytest.fixture
def one_thread():
    """Tiny models on a small shared machine train faster on one thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LossCrash(RuntimeError):
    """Raised inside a training step by ``crash_in_loss``."""


@pytest.fixture
def crash_in_loss(monkeypatch):
    """``with crash_in_loss(n): train(...)``: the n-th loss call raises, as a crash mid-run would;
    the block expects the crash, and the real loss is back in place after it."""
    import contextlib

    import eclip.train.trainer as trainer_mod

    real = trainer_mod.ContrastiveLoss

    @contextlib.contextmanager
    def crash(call: int):
        class CrashingLoss(real):
            calls = 0

            def forward(self, *args, **kwargs):
                CrashingLoss.calls += 1
                if CrashingLoss.calls == call:
                    raise LossCrash()
                return super().forward(*args, **kwargs)

        monkeypatch.setattr(trainer_mod, "ContrastiveLoss", CrashingLoss)
        try:
            with pytest.raises(LossCrash):
                yield
        finally:
            monkeypatch.setattr(trainer_mod, "ContrastiveLoss", real)

    return crash


def _write_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def write_csv():
    """``write_csv(path, rows)``: a user's CSV catalog with the rows' keys as its header."""
    return _write_csv


# A writer that opens ``sys.argv[1]`` through eclip.atomic, writes half of it, says so and waits
_HALF_WRITER = """
import sys, time
from eclip.atomic import atomic_open
with atomic_open(sys.argv[1], "wb") as handle:
    handle.write(b"half")
    handle.flush()
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def killed_writer(monkeypatch):
    """``killed_writer(path) -> Path``: a process writing ``path`` through ``eclip.atomic`` is killed
    with a real SIGKILL halfway; returns the temporary file it left. This process then counts as
    started after the kill (``eclip.atomic.PROCESS_START`` moved on), as the next command would."""
    import eclip.atomic

    def kill(path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        writer = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(path)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "ready"
            os.kill(writer.pid, signal.SIGKILL)
        finally:
            writer.kill()
            writer.wait(timeout=30)
        assert writer.returncode == -signal.SIGKILL
        [left] = [p for p in path.parent.iterdir()
                  if p.name.startswith(f".{path.name}.tmp-{writer.pid}-")]
        assert not path.exists() and left.read_bytes() == b"half"
        later = max(time.time(), left.stat().st_mtime) + 1
        monkeypatch.setattr(eclip.atomic, "PROCESS_START", later)
        return left

    return kill


@pytest.fixture
def world(tmp_path):
    """``root``: the catalog's folder (the image root) with ``good.png``; ``outside``: a folder next
    to it with ``secret.png``, a perfectly decodable image that must never be opened."""
    from files import png

    root, outside = tmp_path / "root", tmp_path / "outside"
    png(root / "good.png")
    png(outside / "secret.png", colour=(1, 2, 3))
    return root, outside


@pytest.fixture
def opened(monkeypatch):
    """Every path the image decoder opens (``open`` as the images module sees it)."""
    import eclip.catalog.images as images_module

    seen: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        seen.append(os.path.realpath(os.fspath(file)))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", spy, raising=False)
    return seen


@pytest.fixture(scope="session")
def shop(tmp_path_factory):
    """60 listings of 20 products in a CSV with its own column names (item_no, group, item_name,
    img, cat_path, maker, split: train and test only); row 5 has no title, row 9 a broken image."""
    root = tmp_path_factory.mktemp("newcomer")
    images = root / "pics"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        product = i // 3
        rgba = np.zeros((32, 32, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 255, 3)
        rgba[4:28, 4 + product % 8:28, 3] = 255
        Image.fromarray(rgba, "RGBA").save(images / f"{i}.png")
        rows.append({"item_no": f"N{i:03d}", "group": f"G{product}",
                     "item_name": f"clip art {product} shape {product % 4}", "img": f"{i}.png",
                     "cat_path": "Art > Shapes" if product % 2 else "Art > Animals",
                     "maker": "OpenArt", "split": "test" if product % 5 == 0 else "train"})
    rows[4]["item_name"] = ""
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows[8]["img"] = "broken.png"
    path = root / "shop.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, images


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def baseline_run(shop, tmp_path_factory):
    """``eclip train train.epochs=0 --threads 1`` on the shop: exit status, printed lines, the run
    folder and torch's threads after it."""
    from eclip.cli import main

    path, images = shop
    run = tmp_path_factory.mktemp("baseline") / "run"
    before = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--catalog", str(path), "--image-root", str(images),
                     "--output-dir", str(run), "--threads", "1", SHOP_COLUMNS, "train.epochs=0",
                     *model_overrides(TINY_MODEL)])
    threads_after = torch.get_num_threads()
    torch.set_num_threads(before)
    return code, out.getvalue(), err.getvalue(), run, threads_after
