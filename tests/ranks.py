"""Ranks of a test's process group: a free port, and processes spawned one per rank.

Spawn, not fork: a forked child of a process whose torch thread pools are running can hang.
"""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any, Callable


def free_port() -> int:
    """A TCP port nothing listens on now (the group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(target: Callable[..., Any], world: int, *args: Any, timeout: float = 120) -> None:
    """``target(rank, world, port, *args)`` in ``world`` spawned processes; every one must exit 0
    (one still running after ``timeout`` seconds is killed and fails the test)."""
    port, context = free_port(), multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=(rank, world, port, *args))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout)
    for rank, proc in enumerate(procs):
        if proc.is_alive():
            proc.kill()
        assert proc.exitcode == 0, f"rank {rank} failed (exit code {proc.exitcode}); see its stderr"
