"""The Procfile's ``web`` (gunicorn with gunicorn.conf.py) on a SQLite file,
local storage and an in-memory broker nothing consumes: the real HTTP server
in front of the app, without PostgreSQL or Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app import create_app
from app.cli import upgrade_database
from tests.conftest import make_user
from tests.support import procs as P
from tests.support.embedded import SERVICE_VARS
from tests.support.services import free_port


@dataclass
class LiveApi:
    base_url: str
    key: str
    app: object
    proc: P.Process

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def live_api(folder: Path, **extra: str) -> Iterator[LiveApi]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k not in SERVICE_VARS},
        **dict.fromkeys(SERVICE_VARS, ""),
        "DATABASE_URL": f"sqlite:///{folder / 'bff.db'}",
        "CELERY_BROKER_URL": "memory://",
        "STORAGE_BACKEND": "local",
        "BFF_MEDIA_ROOT": str(folder / "media"),
        "BFF_VAR_DIR": str(folder / "var"),
        "BFF_PUBLIC_URL": base,
        "PORT": str(port),
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "4",
        **extra,
    }
    upgrade_database(env["DATABASE_URL"])
    app = create_app(env)
    user = make_user(app, "live")
    proc = P.Process("web", P.procfile()["web"], env, folder)
    try:
        P.wait_for(lambda: P.http_ok(base + "/health"), 30, "the API", procs=[proc])
        yield LiveApi(base, user.key, app, proc)
    finally:
        proc.stop()
        app.extensions["bff"].db.engine.dispose()
