"""What a worker process does to itself at start (workers/tasks.py)."""

from __future__ import annotations

import gc

import pytest
from celery.signals import worker_init


def test_a_starting_worker_freezes_what_it_loaded():
    import workers.tasks  # noqa: F401  (connects the signal handlers)

    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        worker_init.send(sender=None)
        # the loaded app is out of the collector's sight: full collections stay short
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_a_stage_waits_as_often_as_its_runner_says(monkeypatch):
    """Celery's retry count covers every wait (provider polls, rate-limit
    tokens): it must not cap them. With ``max_retries=20`` the 21st wait
    raised MaxRetriesExceededError and dropped a live job's message."""
    from celery.canvas import Signature
    from celery.exceptions import Retry

    import workers
    import workers.tasks as tasks
    from app.pipeline.runner import Outcome

    sent: list[dict] = []
    monkeypatch.setattr(tasks, "run_stage", lambda *a, **k: Outcome(True, 0.5))
    monkeypatch.setattr(Signature, "apply_async", lambda sig, **_: sent.append(sig.options))
    task = tasks.generate
    with workers.flask_app.app_context():
        for retries in (0, 20, 500):
            task.push_request(
                id="t-1",
                args=["gen_waiting"],
                kwargs={},
                retries=retries,
                called_directly=False,
                is_eager=False,
                delivery_info={},
            )
            try:
                with pytest.raises(Retry) as raised:
                    tasks._run(task, "gen_waiting", "generate")
            finally:
                task.pop_request()
            assert raised.value.when == 0.5
            assert sent[-1]["retries"] == retries + 1 and sent[-1]["countdown"] == 0.5
    assert len(sent) == 3
