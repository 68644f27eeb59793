"""Live status: every stage transition and final state is announced here.

With Redis configured, events go to the pub/sub channel
``bff:events:<generation id>`` (the SSE endpoint subscribes); without it,
readers fall back to polling the database. Publishing never fails a stage.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)


def channel(generation_id: str) -> str:
    return f"bff:events:{generation_id}"


@lru_cache(maxsize=8)
def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def publish(settings: Settings, generation_id: str, event: str, data: dict[str, Any]) -> None:
    if not settings.redis_url:
        return
    try:
        _redis(settings.redis_url).publish(
            channel(generation_id), json.dumps({"event": event, "data": data})
        )
    except Exception as exc:  # live status is best effort; Postgres stays the truth
        log.debug("event publish failed: %s", type(exc).__name__)


def stage_changed(
    settings: Settings, generation_id: str, stage: str, status: str, duration_ms: int | None
) -> None:
    publish(
        settings,
        generation_id,
        "stage",
        {"stage": stage, "status": status, "durationMs": duration_ms},
    )


def generation_final(settings: Settings, generation_id: str, status: str) -> None:
    """Called once a generation reaches completed, failed or canceled."""
    publish(settings, generation_id, "done", {"id": generation_id, "status": status})
