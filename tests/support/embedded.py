"""The embedded default started the way `make dev` starts it: `bff dev` as a
subprocess in an empty folder, with no services and no keys in its environment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import free_port

BFF = str(Path(sys.executable).parent / "bff")
# Variables from the developer's shell must not leak into the embedded default.
SERVICE_VARS = tuple(
    """DATABASE_URL REDIS_URL CELERY_BROKER_URL STORAGE_BACKEND R2_ENDPOINT_URL
    R2_ACCESS_KEY_ID R2_SECRET_ACCESS_KEY R2_BUCKET_NAME R2_CDN_URL REPLICATE_API_TOKEN
    OPENAI_API_KEY REPLICATE_BASE_URL OPENAI_BASE_URL BFF_DEFAULT_PROVIDER BFF_PUBLIC_URL
    BFF_MEDIA_ROOT""".split()
)


@dataclass
class Embedded:
    base_url: str
    key: str
    folder: Path
    try_line: str  # what `bff dev` printed after "Try:"
    env: dict[str, str]  # for `bff` subprocesses: BFF_API_URL and BFF_API_KEY set
    proc: subprocess.Popen
    output: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def db_path(self) -> Path:
        return self.folder / "var" / "bff.db"

    def stop(self, timeout: float = 20) -> bool:
        """Ctrl-C, as a user stops `make dev`; True if everything exited in time."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return False


@contextmanager
def embedded_system(folder: Path) -> Iterator[Embedded]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["BFF_VAR_DIR"] = str(folder / "var")  # not the checkout's own var/
    proc = subprocess.Popen(
        [BFF, "dev", "--port", str(port), "--concurrency", "2"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        key, deadline = None, time.monotonic() + 90
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            if len(lines) >= 2 and lines[-2].startswith("API key"):
                key = line.strip()
        assert key and re.fullmatch(r"bff_[0-9a-f]{8}_\S+", key), "".join(lines)
        # Keep draining the output so the child never blocks on a full pipe.
        threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        [try_line] = [x.split("Try:", 1)[1].strip() for x in lines if x.startswith("Try:")]
        cli_env = {**env, "BFF_API_URL": base, "BFF_API_KEY": key}
        yield Embedded(base, key, folder, try_line, cli_env, proc, lines)
    finally:
        if proc.poll() is None:
            Embedded("", "", folder, "", env, proc).stop()
