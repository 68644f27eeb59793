"""Starting and stopping the real processes (gunicorn, Celery workers) that
integration tests talk to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, cmd = line.partition(":")
            entries[name.strip()] = cmd.strip()
    return entries


class Process:
    """A process in its own group, logging to a file; stopped with its children."""

    def __init__(
        self, name: str, cmd: str, env: dict[str, str], log_dir: Path, cwd: Path = ROOT
    ) -> None:
        self.name, self.cmd = name, cmd
        self.log_path = log_dir / f"{name}.log"
        full_env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', os.environ['PATH'])}"}
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            ["bash", "-c", f"exec {cmd}"],
            env=full_env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(5)
        self.kill(signal.SIGKILL)  # stragglers in the group (prefork children)
        self.log.close()


@contextmanager
def running(
    env: dict[str, str], logs: Path, names=("web", "worker", "generator")
) -> Iterator[tuple[str, dict[str, Process]]]:
    """The Procfile's ``names`` (web first) on ``env``, each ready: the API's
    base URL and the processes by name. Stopped on the way out."""
    procs = {name: Process(name, procfile()[name], env, logs) for name in names}
    base = f"http://127.0.0.1:{env['PORT']}"
    try:
        wait_for(lambda: http_ok(base + "/health"), 60, "the API", procs=procs.values())
        for name in names[1:]:
            wait_for(lambda n=name: worker_ready(procs[n]), 60, f"the {name}", procs=procs.values())
        yield base, procs
    finally:
        for p in procs.values():
            p.stop()


def procfile_env(port: int) -> dict[str, str]:
    """The Procfile's variables for a stack on ``port``: two of each worker."""
    return {
        "PORT": str(port),
        "WORKER_CONCURRENCY": "2",
        "GENERATOR_CONCURRENCY": "8",
        "GUNICORN_WORKERS": "2",
        "BFF_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }


def fake_providers_env(replicate, openai) -> dict[str, str]:
    """The provider variables pointing the SDKs at the fake servers."""
    return {
        "REPLICATE_API_TOKEN": replicate.token,
        "REPLICATE_BASE_URL": replicate.url,
        "OPENAI_API_KEY": openai.key,
        "OPENAI_BASE_URL": openai.url + "/v1",
        "BFF_PROVIDER_POLL_SECONDS": "0.3",
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if not p.alive():
                raise RuntimeError(
                    f"{p.name} exited while waiting for {what}:\n" + p.output()[-4000:]
                )
        time.sleep(interval)
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in procs)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def together(n: int, call) -> list:
    """``call(i)`` for each i below ``n``, each in a thread of its own, all
    released at once; their answers in the order of i."""
    barrier, out = threading.Barrier(n), [None] * n

    def one(i: int) -> None:
        barrier.wait()
        out[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def worker_ready(proc: Process) -> bool:
    return " ready." in proc.output()
