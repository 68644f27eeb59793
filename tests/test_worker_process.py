"""What a worker process does to itself at start (workers/tasks.py)."""

from __future__ import annotations

import gc

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
