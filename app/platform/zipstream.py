"""A ZIP archive written straight into a response: ``zipfile`` writes to a
sink that is emptied after every write, so at most one chunk of one member
is held at a time, never the archive. On an unseekable sink ``zipfile``
writes each member's sizes after its data (a data descriptor), as
streaming ZIP writers do; every unzip tool reads that."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

CHUNK = 64 * 1024


class _Sink:
    """A write-only, unseekable stream whose written bytes are taken away."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


@dataclass(frozen=True)
class Member:
    name: str
    read: Callable[[], bytes]  # called when the member's turn comes
    compress: bool = False  # images are compressed already: stored as they are


def stream_zip(members: Iterable[Member]) -> Iterator[bytes]:
    """The archive of ``members``, in order, as chunks of bytes."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w") as zf:  # type: ignore[arg-type]
        for member in members:
            info = zipfile.ZipInfo(member.name, time.gmtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED if member.compress else zipfile.ZIP_STORED
            data = member.read()
            with zf.open(info, mode="w") as dest:
                for start in range(0, len(data), CHUNK):
                    dest.write(data[start : start + CHUNK])
                    if chunk := sink.take():
                        yield chunk
            del data
            if chunk := sink.take():
                yield chunk
    if chunk := sink.take():  # the central directory
        yield chunk
