"""The fault stack's handle: start, kill and restart its processes, submit a
batch, wait for it, and check the promise (``assert_nothing_lost``)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import text

from tests.conftest import User, make_user
from tests.fakes.openai_images import FakeOpenAIImages
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_switch import TcpSwitch
from tests.integration.helpers import FINAL, submit
from tests.support import procs as P
from tests.support.buckets import s3_client
from tests.support.redis_server import PrivateRedis

PROCESS_TYPES = ("web", "worker", "generator", "beat")
_serial = itertools.count(1)


@dataclass
class Batch:
    user: User
    counts: dict[str, int]  # generation id -> images asked for


@dataclass
class FaultStack:
    base_url: str
    env: dict[str, str]
    app: Any  # on the direct database URL: the test can read while the switch is cut
    replicate: FakeReplicate
    openai: FakeOpenAIImages
    bucket: TcpSwitch
    database: TcpSwitch
    redis: PrivateRedis
    s3_endpoint: str
    bucket_name: str
    logs: Path
    procs: dict[str, P.Process] = field(default_factory=dict)

    # ------------------------------------------------------------ processes
    def start(self, kind: str, wait: bool = True) -> P.Process:
        """A new process of a Procfile type, under a fresh name (and log file)."""
        name = f"{kind}-{next(_serial)}"
        cmd = P.procfile()[kind]
        cmd = cmd.replace(f"{kind}@", f"{name}@")  # Celery node names stay unique
        cmd = cmd.replace("/tmp/celerybeat-schedule", str(self.logs / f"{name}-schedule"))
        proc = P.Process(name, cmd, self.env, self.logs)
        self.procs[kind] = proc
        if wait:
            self.wait_ready(kind)
        return proc

    def wait_ready(self, *kinds: str) -> None:
        for kind in kinds or PROCESS_TYPES:
            proc = self.procs[kind]
            P.wait_for(lambda p=proc, k=kind: _ready(self, k, p), 60, proc.name, procs=[proc])

    def kill(self, kind: str) -> None:
        """SIGKILL the process group: no ack, no cleanup, prefork children too."""
        proc = self.procs[kind]
        proc.kill()
        proc.popen.wait(10)
        proc.stop()

    def restart(self, kind: str) -> P.Process:
        if self.procs.get(kind) and self.procs[kind].alive():
            self.procs[kind].stop()
        return self.start(kind)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def log(self, kind: str) -> str:
        return self.procs[kind].output()

    # ------------------------------------------------------------ requests
    def user(self, name: str) -> User:
        return make_user(self.app, f"{name}-{next(_serial)}")

    def submit(self, user: User, provider: str, prompt: str, **settings: Any) -> str:
        return submit(
            self.base_url, user.headers, prompt, settings={"provider": provider, **settings}
        )

    def submit_batch(self, user: User, plan: list[tuple[str, int]]) -> Batch:
        """``plan``: (provider, images) per generation."""
        counts = {}
        for i, (provider, count) in enumerate(plan):
            gen_id = self.submit(user, provider, f"silk slip dress, look {i}", count=count)
            counts[gen_id] = count
        return Batch(user, counts)

    def get(self, user: User, gen_id: str) -> dict[str, Any]:
        resp = requests.get(f"{self.base_url}/api/generate/{gen_id}", headers=user.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_final(self, batch: Batch, timeout: float) -> dict[str, dict[str, Any]]:
        """Every generation of the batch in a final state within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        while True:
            for gen_id in batch.counts:
                if gen_id not in done:
                    gen = self.get(batch.user, gen_id)
                    if gen["status"] in FINAL:
                        done[gen_id] = gen
            if len(done) == len(batch.counts):
                return done
            if time.monotonic() > deadline:
                stuck = {g: self.get(batch.user, g) for g in batch.counts if g not in done}
                summary = {
                    g: (v["status"], [(s["name"], s["status"], s["attempts"]) for s in v["stages"]])
                    for g, v in stuck.items()
                }
                tails = "\n".join(
                    f"--- {p.name}\n{p.output()[-2500:]}" for p in self.procs.values()
                )
                raise AssertionError(f"not final after {timeout}s: {summary}\n{tails}")
            time.sleep(0.25)

    def wait_idle(self, timeout: float) -> None:
        """No generation pending or processing (a failed test's batch would
        otherwise bill the next test's counters)."""

        def idle() -> bool:
            with self.app.extensions["bff"].db.session() as s:
                busy = "SELECT count(*) FROM generations WHERE status IN ('pending', 'processing')"
                return not s.execute(text(busy)).scalar_one()

        P.wait_for(idle, timeout, "the previous test's generations to finish")

    # ------------------------------------------------------------ the promise
    def bucket_keys(self) -> set[str]:
        keys: set[str] = set()
        pages = s3_client(self.s3_endpoint).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket_name):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        return keys

    def recorded_keys(self) -> set[str]:
        with self.app.extensions["bff"].db.session() as s:
            assets = s.execute(text("SELECT r2_key FROM generation_assets")).scalars()
            uploads = s.execute(
                text("SELECT input_key FROM generations WHERE input_key IS NOT NULL")
            ).scalars()
            return set(assets) | set(uploads)

    def paid_images(self) -> int:
        """What the fake providers billed: Replicate predictions + OpenAI images."""
        return self.replicate.creates + self.openai.calls()

    def assert_nothing_lost(
        self,
        batch: Batch,
        gens: dict[str, dict[str, Any]],
        all_completed: bool = True,
        lost_in_crash: int = 0,
    ) -> None:
        """Every generation final (the caller waited), each completed one with
        all its images in the bucket, each paid image made exactly once, and no
        object in the bucket without a row. ``lost_in_crash``: how many creates
        may have been in flight in a worker process that died (the documented
        gap: Replicate has no idempotency key, so an id never received is lost);
        each must be a prediction our code never polled."""
        if all_completed:
            bad = {
                g: (v["status"], v["error"]) for g, v in gens.items() if v["status"] != "completed"
            }
            assert not bad, f"not completed: {bad}"
        in_bucket = self.bucket_keys()
        made = 0
        for gen_id, gen in gens.items():
            if gen["status"] != "completed":
                continue
            assert len(gen["assets"]) == batch.counts[gen_id], gen
            if gen["provider"] != "local":  # the offline renderer costs nothing
                made += len(gen["assets"])
            for asset in gen["assets"]:
                key = asset["url"].split(f"/{self.bucket_name}/", 1)[1]
                assert key in in_bucket, f"{gen_id}: asset {key} is not in the bucket"
        extra = self.paid_images() - made
        lost_ids = self.replicate.never_polled()
        if extra and lost_in_crash:
            assert extra == len(lost_ids) <= lost_in_crash, (
                f"paid for {self.paid_images()} images, made {made}, "
                f"{len(lost_ids)} prediction(s) never polled, at most {lost_in_crash} in flight"
            )
            return
        assert extra == 0, (
            f"paid for {self.paid_images()} images, made {made}: "
            f"replicate creates {self.replicate.creates}, openai {self.openai.calls()}\n"
            + self.creates_report()
        )
        orphans = in_bucket - self.recorded_keys()
        assert not orphans, f"objects in the bucket without a row: {sorted(orphans)}"

    def creates_report(self) -> str:
        """For a failure: each Replicate prediction (its generation, model,
        when made, whether polled or canceled), and what the workers logged
        of takeovers and cancels, so a rare double create can be read."""
        fake, t0 = self.replicate, min(self.replicate.create_times, default=0.0)
        lines = []
        for pid, p in sorted(fake.predictions.items(), key=lambda kv: kv[1]["created"]):
            gen = (p.get("webhook") or "").rpartition("generation=")[2] or "?"
            flags = ("polled" if pid in fake.polled else "never polled") + (
                ", canceled" if p.get("canceled_at") else ""
            )
            lines.append(f"  {p['created'] - t0:7.2f}s {pid} {p['model']} {gen} ({flags})")
        clues = ("taken over", "stopped", "canceling predictions", "running elsewhere")
        for log in sorted(self.logs.glob("*.log")):
            lines += [
                f"  {log.name}: {line.strip()[:300]}"
                for line in log.read_text(errors="replace").splitlines()
                if any(c in line for c in clues)
            ]
        return "\n".join(lines)


def _ready(st: FaultStack, kind: str, proc: P.Process) -> bool:
    if kind == "web":
        return P.http_ok(st.base_url + "/health")
    if kind == "beat":
        return "beat: Starting" in proc.output()
    return P.worker_ready(proc)
