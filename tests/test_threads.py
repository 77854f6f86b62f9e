"""The torch thread default: the cores this process may use, less those other processes keep
busy when a command starts (on shared cores one thread is many times faster than several);
``ECLIP_THREADS`` and ``--threads`` / ``train.threads`` fix it."""

import os

import pytest
import torch

import eclip.config as config
from eclip.config import available_threads, busy_cores, use_threads
from eclip.errors import ConfigError


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("ECLIP_THREADS", raising=False)


@pytest.mark.parametrize("busy,threads", [(0.0, 8), (0.4, 8), (2.4, 6), (5.6, 2), (7.6, 1),
                                          (30.0, 1)])
def test_available_threads_leave_the_busy_cores_to_their_processes(monkeypatch, eight_cores,
                                                                    busy, threads):
    monkeypatch.setattr(config, "busy_cores", lambda: busy)
    assert available_threads() == threads


def test_available_threads_share_the_free_cores_among_torchrun_processes(monkeypatch, eight_cores):
    monkeypatch.setattr(config, "busy_cores", lambda: 2.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert available_threads() == 3  # (8 - 2) / 2
    monkeypatch.setattr(config, "busy_cores", lambda: 0.0)
    assert available_threads() == 4  # never more than the process's share: default_threads


def test_busy_cores_count_the_other_runnable_threads_on_this_process_cores(tmp_path, monkeypatch,
                                                                          eight_cores):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.61 0.70 5/812 4242\n")  # 5 runnable: this thread and 4 others
    assert busy_cores(samples=3, interval_s=0, loadavg=str(loadavg)) == 4.0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # this process may use 8 of 16 cores
    assert busy_cores(samples=1, loadavg=str(loadavg)) == 2.0
    loadavg.write_text("0.00 0.00 0.00 1/812 4242\n")  # only this one
    assert busy_cores(samples=1, loadavg=str(loadavg)) == 0.0
    # no /proc (not Linux): the 1-minute load average
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    assert busy_cores(samples=1, loadavg=str(tmp_path / "missing")) == 1.5


def test_the_environment_or_an_explicit_count_fix_the_threads(monkeypatch, eight_cores,
                                                              torch_threads):
    monkeypatch.setattr(config, "busy_cores", lambda: 7.9)  # would give 1
    monkeypatch.setenv("ECLIP_THREADS", "3")
    assert use_threads() == 3 and torch.get_num_threads() == 3
    assert use_threads(2) == 2 and torch.get_num_threads() == 2  # --threads / train.threads win
    monkeypatch.setenv("ECLIP_THREADS", "many")
    with pytest.raises(ConfigError, match="ECLIP_THREADS must be a positive integer"):
        use_threads()
    monkeypatch.setenv("ECLIP_THREADS", "0")
    with pytest.raises(ConfigError, match="ECLIP_THREADS must be a positive integer"):
        use_threads()
    monkeypatch.delenv("ECLIP_THREADS")
    assert use_threads() == 1 and torch.get_num_threads() == 1
