"""benchmarks/gpu_train.py (GPU figures, issue 15) checked on the CPU with tiny models: its FLOP
accounting against closed forms, and one end-to-end run of the script with ``--device cpu --tiny``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_flops_forward_and_backward(bench):
    m, k, n = 5, 7, 3
    layer = torch.nn.Linear(k, n)
    x = torch.randn(m, k)
    assert bench.count_flops(lambda: layer(x))[1] == 2 * m * n * k
    # backward: the weight's gradient, plus the input's when it needs one
    assert bench.count_flops(lambda: layer(x).sum().backward())[1] == 2 * (2 * m * n * k)
    x.requires_grad_()
    assert bench.count_flops(lambda: layer(x).sum().backward())[1] == 3 * (2 * m * n * k)


def test_cpu_attention_is_counted(bench):
    """torch's counter knows CUDA's fused attention kernels but not the CPU's; the script adds it."""
    b, h, s, d = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    forward = 2 * (2 * b * h * s * s * d)  # q k^T, then the scores times v
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))[1] == forward
    # backward: the scores again, then the gradients of the scores, v, q and k
    total = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())[1]
    assert total == forward + 5 * (2 * b * h * s * s * d)


def test_peak_table(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("NVIDIA L40S") == 362.0
    assert bench.peak_tflops("NVIDIA L4") == 121.0
    assert bench.peak_tflops("NVIDIA A10") == 125.0
    assert bench.peak_tflops("NVIDIA A10G") is None
    assert bench.peak_tflops("Some Future GPU") is None


def test_bad_sizes_are_a_usage_error(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--device", "cpu", "--tiny", "--sizes", "16,lots"])
    assert exit_info.value.code == 2
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed  # the script runs each model in a worker process
def test_tiny_run_on_cpu(tmp_path):
    out = tmp_path / "tiny.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--peak-tflops", "0.5", "--steps", "2", "--warmup", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["peak_tflops"] == 0.5
    rows = result["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    for model in ("vit_b16_bert", "clip_vit_b16"):
        mine = [r for r in rows if r["model"] == model and r["impl"] == "eclip"]
        (through,) = [r for r in mine if r["kind"] == "throughput"]
        assert through["batch"] == 8 and len(through["step_s"]) == 2
        assert through["pairs_per_s"] == pytest.approx(8 / through["step_s_median"])
        # the counted forward pass is exactly the closed form (towers, attention, patch convolution,
        # projections); the step adds the backward pass (about twice that) and the loss
        assert through["forward_flops_counted"] == through["forward_flops_analytic"] > 0
        assert 2.5 < through["flops_per_step"] / through["forward_flops_counted"] < 3.5
        assert 0 < through["loss_flops"] < through["flops_per_step"]
        assert through["achieved_tflops"] == pytest.approx(
            through["flops_per_step"] / through["step_s_median"] / 1e12)
        assert through["mfu"] == pytest.approx(through["achieved_tflops"] / 0.5)
        assert through["peak_mem_mib"] is None  # CPU: no device memory counter
        sweep = {r["batch"]: r for r in mine if r["kind"] == "memory"}
        assert sorted(sweep) == [16, 32, 64]
        for size, row in sweep.items():
            assert row["streams"] == size // 8 and row["pairs_per_s"] > 0
            assert row["input_mib"] > 0 and row["peak_mem_mib"] is None
            assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 0.5)
    assert any("open_clip" in note and "--open-clip-python" in note for note in result["notes"])
    assert "| eclip | clip_vit_b16 |" in done.stdout and "micro x streams" in done.stdout


def test_budget_spent_skips_with_a_note(bench, tmp_path, capsys):
    """No time left: every run is reported as skipped (no worker starts), and the tables still print."""
    out = tmp_path / "none.json"
    bench.main(["--device", "cpu", "--tiny", "--budget-s", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [(r["model"], r["skipped"]) for r in result["rows"]] == [
        ("vit_b16_bert", "no time left in the budget"), ("clip_vit_b16", "no time left in the budget")]
    printed = capsys.readouterr().out
    assert "| eclip | vit_b16_bert | | | no time left in the budget |" in printed


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not os.environ.get("ECLIP_OPEN_CLIP_PYTHON"),
                    reason="set ECLIP_OPEN_CLIP_PYTHON to the python of an open_clip_torch environment")
def test_open_clip_side_matches_eclip_clip(tmp_path):
    """open_clip's CLIP and eclip's CLIP start have the same shapes: parameters and forward FLOPs."""
    out = tmp_path / "oc.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--models", "clip_vit_b16", "--sizes", "16", "--steps", "1",
                           "--open-clip-python", os.environ["ECLIP_OPEN_CLIP_PYTHON"]],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    through = {r["impl"]: r for r in rows if r["kind"] == "throughput"}
    assert through["open_clip"]["params_m"] == through["eclip"]["params_m"]
    assert (through["open_clip"]["forward_flops_counted"] == through["eclip"]["forward_flops_counted"]
            == through["eclip"]["forward_flops_analytic"])
    assert [r["batch"] for r in rows if r["kind"] == "memory" and r["impl"] == "open_clip"] == [16]


def test_sizes_past_the_deadline_are_skipped_with_a_note(bench):
    """A worker whose share of the budget is spent still gives its throughput row, and says why each
    size of the memory sweep was not run."""
    import time

    args = bench.parse_args(["--device", "cpu", "--tiny", "--worker", "eclip", "--model", "clip_vit_b16",
                             "--steps", "1", "--warmup", "0", "--deadline", str(time.time())])
    threads = torch.get_num_threads()
    try:
        result = bench.worker(args)
    finally:
        torch.set_num_threads(threads)
    assert result["device"]["name"] == "cpu"
    through, *sweep = result["rows"]
    assert through["kind"] == "throughput" and through["pairs_per_s"] > 0
    assert through["forward_flops_counted"] == through["forward_flops_analytic"]
    assert [(r["batch"], r["streams"]) for r in sweep] == [(16, 2), (32, 4), (64, 8)]
    assert all(r["skipped"].startswith("predicted") and "budget left" in r["skipped"] for r in sweep)
