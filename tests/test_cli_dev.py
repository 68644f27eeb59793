"""``bff dev``: what it keeps across restarts, where it keeps it, and a stop
while it starts. (Running it for real: tests/integration/test_embedded.py.)"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support.services import free_port


def test_the_dev_key_is_kept_across_restarts(app):
    from app.api.auth import revoke
    from app.cli.dev import _dev_key

    with app.app_context():
        first = _dev_key(app)
        assert _dev_key(app) == first  # a restart shows the same key
        with app.extensions["bff"].db.session() as session:
            revoke(session, "_".join(first.split("_")[:2]))
        assert _dev_key(app) not in (first, "")  # a revoked one is replaced


def test_bff_dev_makes_its_own_var_folder_private_and_refuses_a_shared_one(tmp_path):
    """``BFF_VAR_DIR=/tmp`` must neither make /tmp 0700 nor hold the server's
    database and broker where every account may write."""
    import click

    from app.cli.dev import _keep_private

    shared, ours = tmp_path / "shared", tmp_path / "new" / "var"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp
    before = os.umask(0o022)
    try:
        with pytest.raises(click.ClickException, match="shared with other accounts"):
            _keep_private(shared)
        _keep_private(ours)
    finally:
        os.umask(before)
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert ours.stat().st_mode & 0o777 == 0o700


def test_a_ctrl_c_while_bff_dev_starts_stops_what_it_had_started(runner, monkeypatch):
    """A Ctrl-C between starting the worker and starting web left the worker
    running, holding the broker and the next ``make dev``'s jobs."""
    from app.cli import dev

    started: list[subprocess.Popen] = []
    asked: list[list[str]] = []
    real = subprocess.Popen

    def popen(args: list[str], **kwargs: object) -> subprocess.Popen:
        asked.append(args)
        if started:  # the second process: the Ctrl-C comes as it starts
            os.kill(os.getpid(), signal.SIGINT)
        started.append(real(["sleep", "60"], start_new_session=True))
        return started[-1]

    monkeypatch.setattr(dev.subprocess, "Popen", popen)
    monkeypatch.setattr(dev, "_wait_ready", lambda base: pytest.fail("went on past the Ctrl-C"))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        result = runner.invoke(["dev", "--port", str(free_port())])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        for proc in started:
            alive = proc.poll() is None
            proc.kill()
            proc.wait()
            assert not alive, "a process bff dev started outlived its Ctrl-C"
    assert len(asked) == 2 and started, result.output  # the Ctrl-C came mid-start
