"""The photo loader that embedding, indexing, the evaluation's views and the feature cache share.

Photos are decoded to uint8 pixels (``ImageTransform.pixels``) in DataLoader worker processes, a
batch at a time, while the tower runs on the previous batch; the batch is normalised where the tower
runs (``ImageTransform.normalize``: bit for bit what ``ImageTransform.__call__`` gives photo by
photo). Workers come from :func:`default_num_workers` (the cores this process may use, less one for
the process itself); a single batch, or a machine with one core, loads in the process itself.
Training's loader (``eclip.train.data``) takes its worker default from here too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from eclip.catalog.images import ImageTransform, load_image


def default_num_workers(processes_per_machine: int = 1, *, reserve: int = 1) -> int:
    """Loader worker processes for one process: the cores this process may use
    (``os.sched_getaffinity``), less ``reserve`` for the process itself, shared among
    ``processes_per_machine`` (torchrun's local world size); 0 (load in the process) when that
    leaves none."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, cores // max(1, processes_per_machine) - reserve)


class PhotoPixels(Dataset):
    """Item ``i``: the uint8 pixels of ``paths[i]`` under ``transform`` (no augmentation)."""

    def __init__(self, paths: list[str], transform: ImageTransform):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform.pixels(load_image(self.paths[index]))


def photo_pixel_batches(paths: list[str], transform: ImageTransform, *, batch_size: int = 128,
                        num_workers: int | None = None) -> Iterator[torch.Tensor]:
    """float32 pixel batches of ``paths`` in order (decoded as uint8 in ``num_workers`` worker
    processes, default :func:`default_num_workers`, two batches ahead each; normalised here)."""
    batches = -(-len(paths) // batch_size)
    workers = default_num_workers() if num_workers is None else num_workers
    workers = min(workers, batches - 1) if batches > 1 else 0
    # a generator of its own: a DataLoader with workers draws their base seed from it, and would
    # otherwise take it from torch's global RNG, shifting every later draw of the caller (a
    # training run's dropout after its feature cache, say)
    loader = DataLoader(PhotoPixels(paths, transform), batch_size=batch_size, shuffle=False,
                        num_workers=workers, prefetch_factor=2 if workers else None,
                        generator=torch.Generator().manual_seed(0))
    for pixels in loader:
        yield transform.normalize(pixels)


def photo_batches(paths: list[str], transform: ImageTransform, run: Callable, *,
                  batch_size: int = 128, progress: bool = False, desc: str = "images",
                  num_workers: int | None = None) -> list[torch.Tensor]:
    """``run(pixels)`` for the photos of ``paths``, ``batch_size`` at a time, in order: one tensor
    per batch (:func:`photo_pixel_batches`)."""
    from tqdm.auto import tqdm

    batches = photo_pixel_batches(paths, transform, batch_size=batch_size, num_workers=num_workers)
    return [run(pixels) for pixels in tqdm(batches, total=-(-len(paths) // batch_size), desc=desc,
                                           disable=not progress, unit="batch")]
