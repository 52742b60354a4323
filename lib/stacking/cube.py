"""Disk-backed arrays shared by the worker processes: the registered-frame cube and the output image.

A worker maps the file only for the one frame or row block it is working on and unmaps it when the
task returns, so the pages it touched go back to the page cache instead of piling up in its resident
set: that is what keeps memory flat however many frames a stack has. Nothing is flushed explicitly;
every process maps the same page cache, so writes are visible to the others as soon as they are made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DiskArray:
    """An array in a file: cheap to pickle into a task, mapped on demand."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def create(cls, path: Path, dtype: str, shape: tuple[int, ...]) -> "DiskArray":
        """A new zero-filled array (a sparse file: no disk is used until written)."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with open(path, "wb") as handle:
            handle.truncate(size)
        return cls(str(path), dtype, tuple(int(n) for n in shape))

    def map(self, writable: bool = False) -> np.memmap:
        """Map the whole file; drop the returned array (end the task) to unmap it."""
        return np.memmap(self.path, dtype=self.dtype, mode="r+" if writable else "r", shape=self.shape)
