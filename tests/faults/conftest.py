"""One stack for every fault test (package scope): the Procfile's web, worker,
generator and beat processes on

- a scratch PostgreSQL database reached through a ``TcpSwitch`` (cut it and,
  from the app's view, the database went away; the shared server is never
  stopped),
- a private ``redis-server`` on a free port without persistence (kill it and
  restart it empty; the machine's Redis on 6379 is never touched),
- its own bucket on moto's S3 server, behind another switch,
- the fake Replicate and OpenAI servers (this process), counting paid creates.

A test that kills a process starts a new one (``FaultStack.restart``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

from app import create_app
from app.cli import upgrade_database
from tests.fakes.openai_images import FakeOpenAIImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_switch import TcpSwitch
from tests.faults.stack import FaultStack
from tests.support import procs as P
from tests.support.buckets import public_bucket
from tests.support.redis_server import PrivateRedis
from tests.support.services import (
    free_port,
    postgres_ok,
    scratch_postgres_db,
    unavailable,
)

REPLICATE_TOKEN, OPENAI_KEY = "r8_faults", "sk-faults"
BUCKET = "bff-faults"


# Short stall timeouts and a 2 s maintenance beat make recovery take seconds.
FAST = {
    "BFF_STALL_TIMEOUT": "6",
    "BFF_MAINTENANCE_INTERVAL": "2",
    "BFF_BROKER_VISIBILITY_TIMEOUT": "20",
}


@contextmanager
def fault_stack(
    service_env, s3_server, tmp_path_factory, timings: dict[str, str], bucket: str = BUCKET
) -> Iterator[FaultStack]:
    """The Procfile's processes on their own database, Redis and ``bucket``,
    with ``timings`` (stall timeout, maintenance interval) over the defaults."""
    if not postgres_ok():
        unavailable("PostgreSQL on 127.0.0.1:5432")
    logs = tmp_path_factory.mktemp("fault-logs")
    try:
        redis = PrivateRedis(logs)
        redis.start()
    except RuntimeError as exc:
        unavailable(f"a private redis-server ({exc})")
    public_bucket(s3_server, bucket)
    moto = urlsplit(s3_server)
    bucket_switch = TcpSwitch(moto.hostname, moto.port)
    replicate = FakeReplicate(token=REPLICATE_TOKEN).start()
    openai = FakeOpenAIImages(key=OPENAI_KEY).start()
    # Our own database: the beat below re-dispatches every stalled generation
    # it can see, and must not pick up the other integration stacks' jobs.
    with scratch_postgres_db() as direct_url:
        upgrade_database(direct_url)
        pg = urlsplit(direct_url)
        db_switch = TcpSwitch(pg.hostname, pg.port or 5432)
        via_switch = direct_url.replace(pg.netloc, f"{pg.username}@127.0.0.1:{db_switch.port}")
        port = free_port()
        env = {
            **service_env,
            "DATABASE_URL": via_switch,
            "REDIS_URL": redis.url,
            "R2_ENDPOINT_URL": bucket_switch.url,
            "R2_BUCKET_NAME": bucket,
            "R2_CDN_URL": f"{s3_server}/{bucket}",
            **P.fake_providers_env(replicate, openai),
            "BFF_STAGE_MAX_ATTEMPTS": "4",
            "BFF_SUBMIT_RATE_LIMIT": "1000/60",
            **P.procfile_env(port),
            "BFF_VAR_DIR": str(tmp_path_factory.mktemp("fault-var")),
            **timings,
        }
        app = create_app({**env, "DATABASE_URL": direct_url, "CELERY_BROKER_URL": "memory://"})
        st = FaultStack(
            base_url=f"http://127.0.0.1:{port}",
            env=env,
            app=app,
            replicate=replicate,
            openai=openai,
            bucket=bucket_switch,
            database=db_switch,
            redis=redis,
            s3_endpoint=s3_server,
            bucket_name=bucket,
            logs=logs,
        )
        try:
            for name in ("web", "worker", "generator", "beat"):
                st.start(name, wait=False)
            st.wait_ready()
            yield st
        finally:
            st.stop_all()
            replicate.stop()
            openai.stop()
            bucket_switch.close()
            db_switch.close()
            redis.kill()


@pytest.fixture(scope="package")
def fstack(service_env, s3_server, tmp_path_factory) -> Iterator[FaultStack]:
    with fault_stack(service_env, s3_server, tmp_path_factory, FAST) as st:
        yield st


@pytest.fixture
def faults(fstack) -> FaultStack:
    """The stack with every dependency up, nothing left in flight from an
    earlier test, and the fakes' counters at zero."""
    fstack.bucket.restore()
    fstack.database.restore()
    if not fstack.redis.ping():
        fstack.redis.start()
    for name in ("web", "worker", "generator", "beat"):
        if not fstack.procs[name].alive():
            fstack.restart(name)
    fstack.wait_idle(timeout=90)
    fstack.replicate.reset()
    fstack.openai.reset()
    fstack.replicate.latency, fstack.openai.latency = 1.0, 0.0
    return fstack
