"""A ZIP archive written as it is sent: the standard library's ``zipfile`` writes into a sink that a
generator empties, so the response starts at once and memory stays at one read chunk whatever the
number or size of the files.

Members are stored, not compressed: stacked FITS are float32 noise to a compressor, and storing keeps
the server's CPU free. Sizes and CRCs follow each member in a data descriptor (the stream cannot seek
back), and ZIP64 records are used where a member or the archive passes 4 GiB, as every current unzip
tool reads them.
"""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

FLUSH_BYTES = 1 << 20     # hand bytes to the server at least every MiB


@dataclass
class Member:
    name: str                                   # path inside the archive
    size: int                                   # expected size, bytes (decides ZIP64)
    chunks: Callable[[], Iterable[bytes]]       # called when the member's turn comes
    modified: float | None = None               # Unix time; now when None


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file whose bytes are collected until drained."""

    def __init__(self):
        super().__init__()
        self._parts: list[bytes] = []
        self.pending = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self.pending += len(data)
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.pending = 0
        return data


def stream(members: Iterable[Member]) -> Iterator[bytes]:
    """Yield the bytes of a ZIP archive holding *members*, in order."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=time.gmtime(member.modified or time.time())[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = member.size
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=member.size >= zipfile.ZIP64_LIMIT * 0.95) as out:
                for chunk in member.chunks():
                    out.write(chunk)
                    if sink.pending >= FLUSH_BYTES:
                        yield sink.drain()
            if sink.pending:
                yield sink.drain()
    if sink.pending:
        yield sink.drain()
