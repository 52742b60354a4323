"""Disk-backed arrays shared by the worker processes: the registered-frame cube and the output image.

A worker maps the file only for the one frame or output block it is writing and unmaps it when the
task returns, so the pages it touched go back to the page cache instead of piling up in its resident
set: that is what keeps memory flat however many frames a stack has. Nothing is flushed explicitly;
every process maps the same page cache, so writes are visible to the others as soon as they are made.

Row blocks of the cube are read (read_rows) rather than mapped: touching one page of a mapped file
makes the kernel map up to 64 KB around it, and a thin block across hundreds of frames touches a few
KB in each of thousands of places, so a mapping would hold many times the block itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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

    def open(self) -> BinaryIO:
        """The file, unbuffered, for read_rows."""
        return open(self.path, "rb", buffering=0)

    def read_rows(self, handle: BinaryIO, plane: tuple[int, ...], rows: tuple[int, int], out: np.ndarray) -> None:
        """Read rows [rows[0], rows[1]) of one 2-D plane (plane indexes every axis but the last two)
        into out, a C-contiguous (rows, W) array of this array's dtype, with one read."""
        height, width = self.shape[-2:]
        row_bytes = width * np.dtype(self.dtype).itemsize
        offset = (int(np.ravel_multi_index(plane, self.shape[:-2])) * height + rows[0]) * row_bytes
        if os.preadv(handle.fileno(), [out], offset) != out.nbytes:
            raise OSError(f"{self.path} ends before row {rows[1]} of plane {plane}")
