"""Random bytes from ``os.urandom``, drawn 4 KiB at a time per thread.

The same randomness, but an id or a task id costs no system call: each one
releases the GIL, and in a busy API process (32 threads) that hands the
interpreter to another thread, which costs a thread switch or two before it
comes back.

Each thread draws its own chunk, so taking bytes needs no lock. A shared
chunk behind a lock was measured worse than a system call per id: with 16
busy threads the lock convoyed (a holder preempted by a GIL switch makes
every other taker sleep on it, and each hand-over then costs a switch):
~1.5 voluntary context switches and +0.1 ms of CPU per API submit. A forked
child starts with nothing drawn, so it never hands out the bytes its parent
has (or will).
"""

from __future__ import annotations

import os
import threading


class RandomBytes:
    CHUNK = 4096

    def __init__(self) -> None:
        self._local = threading.local()
        self._epoch = 0  # bumped in a forked child: every thread's chunk is the parent's

    def take(self, n: int) -> bytes:
        local = self._local
        buf, pos, epoch = getattr(local, "state", (b"", 0, -1))
        if epoch != self._epoch or pos + n > len(buf):
            buf, pos = os.urandom(max(self.CHUNK, n)), 0
        local.state = (buf, pos + n, self._epoch)
        return buf[pos : pos + n]

    def forget(self) -> None:
        """After a fork: nothing the parent drew is handed out here."""
        self._epoch += 1


_source = RandomBytes()
os.register_at_fork(after_in_child=_source.forget)


def random_bytes(n: int) -> bytes:
    return _source.take(n)
