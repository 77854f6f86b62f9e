"""Ray for the batch engines: imported lazily, started on this machine or joined by address.

A job calls :func:`ray_session`: where Ray is already running in this process (a test's module
fixture, a notebook) it is used as it is; otherwise ``address`` joins a running cluster (the
head's ``HOST:PORT``, or ``auto`` on a node of it), and without one a new local Ray is started on
this machine's cores (no dashboard) and shut down when the job ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eclip.errors import ConfigError, EclipError

INSTALL_HINT = "pip install 'eclip[ray]'"
# Test-only: "MARKER:N" makes the actor that receives block N exit once (MARKER is created first,
# so the retried block succeeds). What the fault-tolerance tests use; never set it otherwise.
CRASH_ENV = "ECLIP_RAY_CRASH_ONCE"


def require_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is the extra's point
    except ImportError as exc:
        raise EclipError(f"the ray engine needs Ray Data ({exc.name or 'ray'} is not installed): "
                         f"{INSTALL_HINT}") from None
    return ray


def local_cpus() -> int:
    """The cores this process may use (its affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                progress: bool = True) -> Iterator[Any]:
    """Ray for the duration of a job: the running one, the cluster at ``address``, or a local one
    on ``num_cpus`` cores (default: all this process may use)."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": progress,
                                  "logging_level": logging.WARNING if progress else logging.ERROR}
        if address:
            check_reachable(address)  # Ray itself retries an unreachable address for minutes
            kwargs["address"] = address
        else:
            # "local": a new Ray of our own, even where another (or a stale record of one) exists
            kwargs.update(address="local", num_cpus=num_cpus or local_cpus(),
                          include_dashboard=False)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token (and its "
                    "token: RAY_AUTH_TOKEN or ~/.ray/auth_token)") if address else ""
            raise EclipError(f"cannot start or join {where}: {first}{hint}") from None
        started = True
    quiet_data(progress)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A one-line error where nothing answers at ``address`` (the head's ``HOST:PORT``; ``auto``
    is left to Ray). A Ray Client address (``ray://``) is refused: Ray Data does not run through
    Ray Client (Ray 2.60 fails inside Ray Data); a job on the cluster joins it by ``auto``."""
    import socket

    if address.startswith("ray://"):
        raise ConfigError(f"--ray-address {address}: Ray Data does not run through Ray Client "
                          "(ray://); run eclip on a node of the cluster with --ray-address auto "
                          "(e.g. ray job submit -- eclip embed --engine ray --ray-address auto "
                          "...) or give the head's HOST:6379")
    if address == "auto":
        return
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} is not HOST:PORT (the head's, e.g. "
                          "head:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EclipError(f"cannot reach the Ray cluster at {address}: "
                         f"{exc.strerror or exc}") from None


def quiet_data(progress: bool) -> None:
    """Ray Data's progress bars only where eclip draws its own; its logs at warnings (errors only
    without progress bars: a quiet job)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.WARNING if progress else logging.ERROR)


def pool_size(ray, workers: int | None, cpus_per_worker: int, *, gpu: bool = False) -> int:
    """Actors in the pool: ``workers``, else as many as the cluster's CPUs hold (``gpu``: and at
    most one per GPU where it has GPUs)."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {workers!r}")
        return workers
    resources = ray.cluster_resources()
    size = max(1, int(resources.get("CPU", 1)) // cpus_per_worker)
    gpus = int(resources.get("GPU", 0))
    return min(size, gpus) if gpu and gpus else size


def gpus_per_worker(ray) -> int:
    """One GPU per actor where the cluster has GPUs, else none."""
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def actor_pool(ray, size: int):
    """A fixed pool of ``size`` actors. Ray Data restarts an actor that dies and runs its block
    again (its actor pools default to ``max_restarts=-1``, ``max_task_retries=-1``; passing them is
    deprecated in Ray 2.60), which ``tests/test_ray_engine.py`` pins by killing one mid-job."""
    return ray.data.ActorPoolStrategy(size=size)


def crash_plan() -> tuple[str, int] | None:
    """The test-only crash (see ``CRASH_ENV``), read in the driver and handed to the actors."""
    value = os.environ.get(CRASH_ENV)
    if not value:
        return None
    marker, _, block = value.rpartition(":")
    if not marker or not block.isdigit():
        raise ConfigError(f"{CRASH_ENV} must be MARKER_FILE:BLOCK, got {value!r}")
    return marker, int(block)


def maybe_crash(plan: tuple[str, int] | None, block: int) -> None:
    """Exit this worker process at once if ``plan`` names ``block`` and has not fired yet."""
    if plan is None or plan[1] != block:
        return
    try:
        fd = os.open(plan[0], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(17)


@contextmanager
def job_errors(what: str) -> Iterator[None]:
    """A failed Ray job as one line: the eclip error a worker raised, where one did, else the
    last line of Ray's (the exception)."""
    ray = require_ray()
    failures: tuple[type[BaseException], ...] = (ray.exceptions.RayError,)
    try:
        from ray.data.exceptions import UserCodeException

        failures += (UserCodeException,)
    except ImportError:  # older Ray Data
        pass
    try:
        yield
    except failures as exc:
        cause: BaseException | None = exc
        for _ in range(20):  # Ray's wrappers: .cause is the worker's own exception
            if cause is None:
                break
            inner = getattr(cause, "cause", None)
            if isinstance(inner, BaseException) and inner is not cause:
                cause = inner
            elif isinstance(cause, EclipError) and not isinstance(cause, failures):
                raise EclipError(str(cause)) from None
            else:
                cause = cause.__cause__
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise EclipError(f"{what} failed on Ray: {lines[-1] if lines else type(exc).__name__}") \
            from None
