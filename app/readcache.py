"""A per-process cache of status reads (``GET /api/generate/<id>``) of
generations that can no longer change: a hit does no I/O at all.

What is cached: the response bytes (exactly what Flask serialised for the
miss) of a generation whose status has no way out (``states.TERMINAL``:
completed, canceled) and none of whose stages is still running (a stage
copy in flight when the job was canceled records its end later). Such a
generation only ever changes by being deleted. Everything else reads the
database every time.

Invalidation: ``DELETE`` drops the entry in its own process at once and
publishes the id on a Redis channel; every process runs one daemon
subscriber thread (started lazily on first use, so after a fork) that drops
the entry when the message arrives, typically well under a millisecond
later. A missed message must never serve a deleted generation, so the cache
serves and fills only while that subscriber is connected and subscribed: on
any disconnect or silence (no answer to a PING within ``PONG_TIMEOUT``) it
empties the cache and caches nothing until it has subscribed again. Without
``REDIS_URL`` (the embedded default) no other process could be told, so the
cache is off. ``ttl`` bounds whatever else might be missed (a publisher that
crashed between its commit and its publish).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import NamedTuple

from . import resp

log = logging.getLogger(__name__)

CHANNEL = "bff:cache:invalidate"
CLEAR_ALL = "*"  # a message that empties every process's cache


def channel_for(redis_url: str) -> str:
    """Pub/sub channels are global to a Redis server, not per db number: the
    db number in the name keeps deployments (and test sessions) that share a
    server by db number apart."""
    from redis.connection import parse_url

    return f"{CHANNEL}:{parse_url(redis_url).get('db', 0) or 0}"


@lru_cache(maxsize=8)
def _publisher_for(redis_url: str):
    import redis

    return redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)


def announce(redis_url: str | None, generation_id: str, channel: str | None = None) -> None:
    """Tell every process's cache that ``generation_id`` changed (also from code
    that holds no ``ReadCache``, e.g. a worker writing to a finished
    generation). Best effort: a process that misses it drops the entry
    within its ttl."""
    if not redis_url:
        return
    try:
        _publisher_for(redis_url).publish(channel or channel_for(redis_url), generation_id)
    except Exception as exc:
        log.warning(
            "read cache: could not publish the invalidation of %s (%s); other processes "
            "may serve it until their entry expires",
            generation_id,
            type(exc).__name__,
        )


class Entry(NamedTuple):
    user_id: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expires: float


class ReadCache:
    """Generation id -> ``Entry``; shared by a process's threads. Hits take no
    lock (one dict lookup); writes and drops do."""

    # Subscriber liveness: PING after this much silence; no answer within
    # PONG_TIMEOUT counts as a disconnect. Reconnect backoff between the two
    # RETRY values. Class attributes so tests can shorten them.
    POLL = 0.5
    PING_INTERVAL = 1.0
    PONG_TIMEOUT = 2.0
    RETRY_MIN, RETRY_MAX = 0.1, 5.0

    def __init__(
        self,
        redis_url: str | None,
        max_entries: int = 10_000,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis_url, self.max_entries, self.ttl, self.clock = redis_url, max_entries, ttl, clock
        self.enabled = bool(redis_url) and max_entries > 0 and ttl > 0
        self.channel = channel_for(redis_url) if redis_url else CHANNEL
        self.subscriber_client_id: int | None = None  # Redis CLIENT ID, for tests
        self._reset()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (c := ref()) is not None and c._reset())

    def _reset(self) -> None:
        """Fresh state: at construction and in a forked child (the parent's
        thread does not exist there, its lock may be held, its entries were
        never subscribed for in this process)."""
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._ready = False
        self._epoch = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready_event = threading.Event()

    # ------------------------------------------------------------ the cache

    @property
    def ready(self) -> bool:
        """Serving and filling: the subscriber is connected and subscribed."""
        return self._ready

    def get(self, generation_id: str) -> Entry | None:
        if not self.enabled:
            return None
        if self._thread is None:
            self._start()
        if not self._ready:
            return None
        hit = self._entries.get(generation_id)
        if hit is None or hit.expires <= self.clock():
            return None
        return hit

    def token(self) -> int:
        """Take before reading the database; ``put`` refuses the result if any
        invalidation, disconnect or (re)subscription happened since: the read
        may predate a deletion whose message was handled, or never heard."""
        return self._epoch

    def put(
        self,
        generation_id: str,
        user_id: int,
        body: bytes,
        headers: Mapping[str, str],
        token: int,
    ) -> bool:
        if not self.enabled:
            return False
        entry = Entry(user_id, body, tuple(headers.items()), self.clock() + self.ttl)
        with self._lock:
            if not self._ready or token != self._epoch:
                return False
            if generation_id not in self._entries and len(self._entries) >= self.max_entries:
                # Evict the oldest insertion (dicts keep order): with a short
                # TTL every entry is re-read soon anyway, and hits stay lock-free.
                del self._entries[next(iter(self._entries))]
            self._entries[generation_id] = entry
        return True

    def drop(self, generation_id: str) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.pop(generation_id, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def invalidate(self, generation_id: str) -> None:
        """After committing a change to (or the deletion of) a generation: drop
        it here at once and tell every other process. Publishing is best
        effort; a process that misses it drops the entry within ``ttl``."""
        self.drop(generation_id)
        announce(self.redis_url, generation_id, self.channel)

    # ------------------------------------------------------------ the subscriber

    def wait_ready(self, timeout: float) -> bool:
        if not self.enabled:
            return False
        if self._thread is None:
            self._start()
        return self._ready_event.wait(timeout)

    def close(self) -> None:
        """Stop the subscriber (tests; a process exiting just lets the daemon die)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._set_ready(False)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="bff-read-cache", daemon=True
            )
            self._thread.start()

    def _set_ready(self, ready: bool) -> None:
        with self._lock:
            if not ready:
                self._entries.clear()  # anything published from now on may be missed
            # Either way a read already in flight must not fill the cache: it may
            # predate a deletion published while nobody was listening.
            self._epoch += 1
            self._ready = ready
        (self._ready_event.set if ready else self._ready_event.clear)()

    def _run(self, stop: threading.Event) -> None:
        delay, quiet = self.RETRY_MIN, False
        while not stop.is_set():
            conn = None
            try:
                conn = self._subscribe()
                self._set_ready(True)
                delay, quiet = self.RETRY_MIN, False
                self._listen(conn, stop)
            except Exception as exc:
                # Once per outage, not once per reconnect attempt.
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "read cache off until Redis is back: %s: %s",
                    type(exc).__name__,
                    exc,
                )
                quiet = True
            finally:
                self._set_ready(False)
                if conn is not None:
                    try:
                        conn.disconnect()
                    except Exception:
                        pass
            stop.wait(delay)
            delay = min(delay * 2, self.RETRY_MAX)

    def _subscribe(self):
        # A bare connection, not redis-py's PubSub: that one reconnects and
        # re-subscribes by itself, hiding exactly the gap we must see.
        assert self.redis_url
        conn = resp.connect(
            self.redis_url,
            protocol=2,  # plain arrays for subscribe replies and messages
            socket_connect_timeout=2,
            socket_timeout=self.PONG_TIMEOUT + 3,
            client_name=f"bff-read-cache-{os.getpid()}",
        )
        conn.send_command("CLIENT", "ID")
        self.subscriber_client_id = int(conn.read_response())
        conn.send_command("SUBSCRIBE", self.channel)
        reply = conn.read_response()
        if not (isinstance(reply, list) and reply[0] == b"subscribe"):
            raise RuntimeError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        return conn

    def _listen(self, conn, stop: threading.Event) -> None:
        last_heard, pinged = time.monotonic(), None
        while not stop.is_set():
            if conn.can_read(timeout=self.POLL):
                msg = conn.read_response()  # [b"message", channel, id] or [b"pong", b""]
                last_heard, pinged = time.monotonic(), None
                kind = msg[0]
                if kind == b"message":
                    gid = msg[2].decode()
                    self.clear() if gid == CLEAR_ALL else self.drop(gid)
                elif kind != b"pong":
                    raise RuntimeError(f"unexpected pub/sub message {kind!r}")
                continue
            now = time.monotonic()
            if pinged is not None:
                if now - pinged > self.PONG_TIMEOUT:
                    raise TimeoutError(f"no answer to PING in {self.PONG_TIMEOUT} s")
            elif now - last_heard > self.PING_INTERVAL:
                conn.send_command("PING")
                pinged = now
