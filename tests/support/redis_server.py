"""A private, throw-away ``redis-server`` (no persistence) on a free port, for
tests that must kill the broker. The machine's shared Redis on 6379 is never
touched: other sessions and CI jobs use it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.services import free_port


class PrivateRedis:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.popen: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> None:
        """Start empty: ``--save ""`` and no AOF, so a restart loses everything."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.popen = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.log_path.parent)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server did not start: {self.log_path}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: everything in it (queued and unacked messages) is gone."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis("127.0.0.1", self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def dbsize(self) -> int:
        import redis

        return int(redis.Redis("127.0.0.1", self.port).dbsize())
