"""Shared fixtures: a tiny demo catalog and a tiny from-scratch model, built once per session."""

from __future__ import annotations

import csv

import pytest
import torch


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
