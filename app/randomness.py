"""Random bytes from ``os.urandom``, drawn 4 KiB at a time.

The same randomness, but an id or a task id costs no system call: each one
releases the GIL, and in a busy API process (32 threads) that hands the
interpreter to another thread, which costs a thread switch or two before it
comes back. A forked child starts empty, so it never hands out the bytes
its parent has (or will).
"""

from __future__ import annotations

import os
import threading


class RandomBytes:
    CHUNK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf, self._pos = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buf):
                self._buf, self._pos = os.urandom(max(self.CHUNK, n)), 0
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out

    def forget(self) -> None:
        """After a fork: nothing the parent drew is handed out here."""
        self._buf, self._pos = b"", 0
        self._lock = threading.Lock()  # in case the fork happened while it was held


_source = RandomBytes()
os.register_at_fork(after_in_child=_source.forget)


def random_bytes(n: int) -> bytes:
    return _source.take(n)
