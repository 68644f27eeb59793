"""A generation's chain sent as ONE prebuilt Celery message.

``chain(...).apply_async()`` builds a signature per stage, freezes them,
serialises the message, and publishes it and a ``task-sent`` event through
kombu: about 1.5 ms of CPU per submit, more than the rest of the submit. The
message is the same every time but for its ids, so it is rendered once per
process and first stage, by Celery and kombu themselves (a private Celery
app configured like ours, whose Redis channel records the commands it would
send instead of sending them). Each send fills in the generation id, fresh
task ids (uuid4, as Celery's), delivery tags, the event's clock and time,
then pushes the message (``LPUSH``) and publishes the event (``PUBLISH``, for
Flower) in one round trip. A worker receives what the canvas would have
sent: protocol 2, the later stages in the message's embedded chain, the same
queue and routing, headers and properties.

Only for a plain Redis broker (no key prefix, sentinel, failover list or
``broker_use_ssl``); for any other broker, or a rendering that fails its
self-check (logged), ``ChainSender.send`` returns False and the caller uses
the canvas.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery, chain
from celery.utils.time import utcoffset
from kombu.transport import redis as kombu_redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.retry import Retry

from . import resp
from .randomness import random_bytes

log = logging.getLogger(__name__)

GEN, OID = "@@GEN@@", "@@OID@@"
BODY, TAG = "@@BODY@@", "@@TAG@@"
CLOCK, TIMESTAMP, UTCOFFSET = "@@CLOCK@@", "@@TIMESTAMP@@", "@@UTCOFFSET@@"
# Ids that need no escaping in JSON nor in a Python repr (ours: gen_<hex>).
PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _task_token(i: int) -> str:
    return f"@@T{i}@@"


def _uuid_bits(n: int) -> tuple[int, int]:
    """For ``n`` UUIDs as one integer: the mask that clears, and the bits
    that set, each one's version (4) and variant (RFC 4122) bits."""
    keep = int.from_bytes(b"\xff" * 6 + b"\x0f\xff\x3f" + b"\xff" * 7, "big")
    mark = int.from_bytes(b"\x00" * 6 + b"\x40\x00\x80" + b"\x00" * 7, "big")
    repeat = sum(1 << (128 * i) for i in range(n))
    return keep * repeat, mark * repeat


_UUID_BITS: dict[int, tuple[int, int]] = {}


def uuid4s(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as text, like ``str(uuid.uuid4())``
    (Celery's task ids, kombu's delivery tags) from ``os.urandom`` (drawn in
    chunks, ``app.randomness``), their fixed bits set by one integer
    operation for all."""
    bits = _UUID_BITS.get(n)
    if bits is None:
        if len(_UUID_BITS) >= 256:  # few sizes occur (ids per chain x batch size); bound it
            _UUID_BITS.clear()
        bits = _UUID_BITS[n] = _uuid_bits(n)
    keep, mark = bits
    raw = random_bytes(16 * n)
    h = ((int.from_bytes(raw, "big") & keep) | mark).to_bytes(16 * n, "big").hex()
    return [
        f"{h[j : j + 8]}-{h[j + 8 : j + 12]}-{h[j + 12 : j + 16]}-"
        f"{h[j + 16 : j + 20]}-{h[j + 20 : j + 32]}"
        for j in range(0, 32 * n, 32)
    ]


class _Recorder:
    """Stands in for the Redis client of a rendering channel: records every
    command and answers it with success; nothing is sent."""

    def __init__(self, commands: list[tuple[str, tuple[object, ...]]] | None = None) -> None:
        self.commands = [] if commands is None else commands

    def pipeline(self, *_: object, **__: object) -> _PipelineRecorder:
        return _PipelineRecorder(self.commands)

    def __getattr__(self, name: str):
        def command(*args: object, **_: object) -> object:
            self.commands.append((name, args))
            return self._answer()

        return command

    def _answer(self) -> object:
        return True


class _PipelineRecorder(_Recorder):
    def _answer(self) -> object:
        return self  # a redis-py pipeline's commands return the pipeline

    def execute(self, *_: object, **__: object) -> list[object]:
        return []

    def __enter__(self) -> _PipelineRecorder:
        return self

    def __exit__(self, *_: object) -> None:
        return None


# The commands of the render in progress in this thread. (kombu keeps pools
# per connection URL and transport class for the whole process, so renders
# share the recording connection; each one records into its own list.)
_recording = threading.local()


class _RecordingChannel(kombu_redis.Channel):
    def _create_client(self, asynchronous: bool = False) -> _Recorder:  # type: ignore[override]
        self.pool  # noqa: B018 - formats the fanout prefix with the db number, as a real channel
        return _Recorder(getattr(_recording, "commands", None))


class _RecordingTransport(kombu_redis.Transport):
    Channel = _RecordingChannel


@dataclass(frozen=True)
class Message:
    """The Redis commands of one send: ``LPUSH queue payload`` and, when
    task-sent events are on, ``PUBLISH topic event`` for each topic."""

    queue: str
    payload: str
    topics: tuple[str, ...]
    event: str | None


_TOKEN = re.compile(r"(@@[A-Z0-9]+@@)")


def _format(text: str) -> str:
    """``text`` as a ``%`` template (``template % values``; it parses much
    faster than ``str.format_map`` on JSON, whose braces it would need
    escaped): its tokens become ``%(token)s`` fields, its ``%`` are escaped."""
    parts = _TOKEN.split(text)  # the tokens are the odd items
    return "".join("%(" + p + ")s" if i & 1 else p.replace("%", "%%") for i, p in enumerate(parts))


@dataclass(frozen=True)
class Template:
    """What kombu sent, with tokens where a send differs from another."""

    queue: str
    body: str  # the message body (JSON): GEN, OID, task tokens
    envelope: str  # kombu's envelope (JSON): BODY, TAG, OID, GEN, task tokens
    topics: tuple[str, ...]
    event_body: str | None  # GEN, task tokens, CLOCK, TIMESTAMP, UTCOFFSET
    event_envelope: str | None  # BODY, TAG
    tasks: int
    _parts: tuple[str, ...] = field(init=False, compare=False, repr=False)
    _task_tokens: tuple[str, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        texts = (self.body, self.envelope, self.event_body or "", self.event_envelope or "")
        object.__setattr__(self, "_parts", tuple(_format(t) for t in texts))
        object.__setattr__(self, "_task_tokens", tuple(_task_token(i) for i in range(self.tasks)))

    def fill(
        self,
        generation_id: str,
        task_ids: Sequence[str],
        oid: str,
        tags: tuple[str, str],
        event: tuple[str, str, str],
    ) -> Message:
        body, envelope, event_body, event_envelope = self._parts
        values = dict(zip(self._task_tokens, task_ids, strict=True))
        values[GEN], values[OID], values[TAG] = generation_id, oid, tags[0]
        values[BODY] = _b64(body % values)
        payload = envelope % values
        if self.event_body is None:
            return Message(self.queue, payload, (), None)
        values[CLOCK], values[TIMESTAMP], values[UTCOFFSET] = event
        values[BODY], values[TAG] = _b64(event_body % values), tags[1]
        return Message(self.queue, payload, self.topics, event_envelope % values)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _number_token(text: str, name: str, token: str) -> tuple[str, str]:
    """``text`` with the number after ``"name": `` replaced by ``token``, and
    that number as it was written."""
    pattern = re.compile(rf'"{name}": (-?[0-9][0-9.eE+-]*)')
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(f"event field {name!r} found {len(found)} times")
    return pattern.sub(f'"{name}": {token}', text), found[0]


def render(main: str, config: dict[str, Any], task_names: Sequence[str]) -> Template:
    """Let Celery and kombu build the chain's message (and its task-sent
    event) with ``config`` (our Celery app's), recorded instead of sent, and
    put tokens where sends differ."""
    app = Celery(main, set_as_current=False)
    app.config_from_object({**copy.deepcopy(config), "broker_transport": _RecordingTransport})
    app.finalize()  # binds the same shared tasks (and their options) as ours has
    recorded: list[tuple[str, tuple[object, ...]]] = []
    _recording.commands = recorded
    try:
        sigs = [
            app.signature(name, args=(GEN,), immutable=True).set(task_id=_task_token(i))
            for i, name in enumerate(task_names)
        ]
        chain(*sigs).apply_async()
        oid = app.thread_oid
    finally:
        del _recording.commands
        app.close()
    sends = [(name, args) for name, args in recorded if name in ("lpush", "publish")]
    if not sends or sends[0][0] != "lpush" or any(n != "publish" for n, _ in sends[1:]):
        raise ValueError(f"unexpected Redis commands {[n for n, _ in sends]}")
    queue, payload = (str(a) for a in sends[0][1])
    topics = tuple(str(args[0]) for _, args in sends[1:])
    events = {str(args[1]) for _, args in sends[1:]}
    if len(events) > 1:
        raise ValueError("the task-sent event differs between its topics")
    event = events.pop() if events else None

    env = json.loads(payload)
    body = base64.b64decode(env["body"]).decode()
    tag = env["properties"]["delivery_tag"]
    envelope = payload.replace(env["body"], BODY).replace(tag, TAG).replace(oid, OID)
    ev_body = ev_envelope = None
    ev_tag, clock, stamp, offset = "", "", "", ""
    if event is not None:
        ev_env = json.loads(event)
        ev_body = base64.b64decode(ev_env["body"]).decode()
        ev_tag = ev_env["properties"]["delivery_tag"]
        ev_envelope = event.replace(ev_env["body"], BODY).replace(ev_tag, TAG)
        ev_body, clock = _number_token(ev_body, "clock", CLOCK)
        ev_body, stamp = _number_token(ev_body, "timestamp", TIMESTAMP)
        ev_body, offset = _number_token(ev_body, "utcoffset", UTCOFFSET)
    template = Template(
        queue, body.replace(oid, OID), envelope, topics, ev_body, ev_envelope, len(task_names)
    )
    # Filled with the values this render used, it must give back exactly what
    # kombu would have sent (no token missing, nothing else replaced).
    again = template.fill(
        GEN,
        [_task_token(i) for i in range(len(task_names))],
        oid,
        (tag, ev_tag),
        (clock, stamp, offset),
    )
    if again != Message(queue, payload, topics, event):
        raise ValueError("the template does not give back the rendered message")
    return template


class ChainSender:
    """Sends chains from templates over Redis connections of its own;
    templates and connections are per process (the origin and the event carry
    the pid) and templates per list of tasks."""

    def __init__(self, celery_app: Celery, config: dict[str, Any]) -> None:
        conf = celery_app.conf
        self.celery_app, self.config = celery_app, config
        self.usable = _plain_redis(conf)
        self._templates: dict[tuple[str, ...], Template | None] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2}
        policy.update(conf.task_publish_retry_policy or {})
        self._retries = int(policy["max_retries"] or 0) if conf.task_publish_retry else 0
        self._policy = policy
        self._url: str | None = conf.broker_url if self.usable else None
        self._timeout = conf.broker_connection_timeout or 4
        # Connections of our own (see ``_write``), idle between sends.
        self._idle: list[Connection] = []

    def _here(self) -> None:
        """Forked: the templates name the parent (origin, hostname, pid) and
        the connections are the parent's sockets; start afresh."""
        if os.getpid() != self._pid:
            with self._lock:
                if os.getpid() != self._pid:
                    self._templates, self._idle, self._pid = {}, [], os.getpid()

    def template(self, task_names: tuple[str, ...]) -> Template | None:
        self._here()
        try:
            return self._templates[task_names]
        except KeyError:
            pass
        with self._lock:
            if task_names not in self._templates:
                try:
                    self._templates[task_names] = self._render(task_names)
                except Exception:  # noqa: BLE001 - the canvas still works
                    log.warning("chain template for %s failed; using the canvas", task_names[0])
                    log.debug("chain template failure", exc_info=True)
                    self._templates[task_names] = None
            return self._templates[task_names]

    def _render(self, task_names: tuple[str, ...]) -> Template:
        """``render`` in a thread of its own: called inside a running task (a
        worker sending the rest of a chain), Celery would make that task the
        template's parent and root, and every later send would name it."""
        done: list[Template | BaseException] = []

        def work() -> None:
            try:
                done.append(render(self.celery_app.main, self.config, task_names))
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                done.append(exc)

        thread = threading.Thread(target=work, name="chain-template", daemon=True)
        thread.start()
        thread.join()
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    def send(self, generation_id: str, task_names: Sequence[str], front: bool = False) -> bool:
        """Send the chain; False when it cannot be templated (use the canvas).
        Raises what Redis raises once the publish retry policy is spent.
        ``front``: at the end of the queue workers take from next (``RPUSH``;
        kombu's consumer pops with ``BRPOP``), ahead of what waits there."""
        return self.send_many([generation_id], task_names, front)

    def send_many(
        self, generation_ids: Sequence[str], task_names: Sequence[str], front: bool = False
    ) -> bool:
        """Send one chain per generation, all in one round trip (a batch of
        submits, ``app.api.submit_batch``): each message with its own task
        ids, delivery tags and event clock, as if sent one by one. False when
        they cannot be templated (use the canvas). Raises what Redis raises
        once the publish retry policy is spent; then none was sent."""
        if self._url is None or not all(PLAIN_ID.fullmatch(g) for g in generation_ids):
            return False
        template = self.template(tuple(task_names))
        if template is None:
            return False
        app = self.celery_app
        per = template.tasks + 2
        ids = uuid4s(per * len(generation_ids))
        oid, offset = app.thread_oid, repr(utcoffset())
        messages = []
        for i, generation_id in enumerate(generation_ids):
            mine = ids[i * per : (i + 1) * per]
            event = (str(app.clock.forward()), repr(time.time()), offset)
            messages.append(template.fill(generation_id, mine[2:], oid, (mine[0], mine[1]), event))
        self._push(messages, front)
        return True

    def _push(self, messages: Sequence[Message], front: bool = False) -> None:
        """ONE ``LPUSH`` of every payload (they share the template's queue;
        a worker takes them in this order, as after one LPUSH each; with
        ``front`` one ``RPUSH``, in reverse so the first is taken first) and the
        ``PUBLISH``es of their events, written at once on one connection,
        their replies read after (one round trip, ``_write``), with the
        publish retry policy (as Celery's) on connection errors. The LPUSH
        is all or nothing; a PUBLISH only tells Flower."""
        queue = messages[0].queue.encode()
        payloads = [m.payload.encode() for m in messages]
        if front:
            parts = [resp.command(b"RPUSH", queue, *reversed(payloads))]
        else:
            parts = [resp.command(b"LPUSH", queue, *payloads)]
        heads = {t: resp.publish_head(t.encode()) for t in messages[0].topics}
        for m in messages:
            if m.event is not None:
                bulk = resp.bulk(m.event.encode())
                for t in m.topics:
                    parts += (heads[t], bulk)
        replies = 1 + sum(len(m.topics) for m in messages if m.event is not None)
        data = b"".join(parts)
        delay = float(self._policy["interval_start"] or 0)
        for attempt in range(self._retries + 1):
            try:
                self._write(data, replies)
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self._retries:
                    raise
            time.sleep(delay)
            delay = min(
                delay + float(self._policy["interval_step"] or 0),
                float(self._policy.get("interval_max") or delay),
            )

    def _connection(self, idle: bool = True) -> tuple[Connection, bool]:
        """An idle connection of this process's (``idle``), or a new one: made
        by redis-py from the broker URL (TLS, AUTH and SELECT as the URL
        says); and whether it is new. Raises redis-py's errors when it
        cannot connect."""
        self._here()
        if idle:
            try:
                return self._idle.pop(), False
            except IndexError:
                pass
        conn = resp.connect(
            self._url,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            # No retries of its own: the publish retry policy is ours.
            retry=Retry(NoBackoff(), 0),
        )
        return conn, True

    def _write(self, data: bytes, replies: int) -> None:
        """Write ``data`` and read its ``replies``, each one line (the
        ``LPUSH``'s and every ``PUBLISH``'s: an integer, or an error), on the
        connection's socket directly: a connection pool's checkout and
        return and a reply parser's call per reply were most of a send's
        CPU (47 against 11 us for a batch of five chains)."""
        conn, new = self._connection()
        try:
            self._exchange(conn, data, replies)
        except _Unanswered:
            if new:
                raise
            # An idle connection the server had closed (a restart, its
            # client idle timeout): write on a new one at once rather than
            # after the publish policy's first pause.
            self._exchange(self._connection(idle=False)[0], data, replies)

    def _exchange(self, conn: Connection, data: bytes, replies: int) -> None:
        sock = conn._sock  # connected: redis-py has done the handshake
        pushed, buf = False, b""
        try:
            sock.sendall(data)
            while buf.count(b"\r\n") < replies:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("Redis closed the connection")
                buf += chunk
                if not pushed and b"\r\n" in buf:
                    head = buf[: buf.index(b"\r\n")]
                    if head[:1] == b"-":  # nothing was pushed
                        raise redis.ResponseError(head[1:].decode(errors="replace"))
                    if head[:1] != b":":
                        raise redis.ConnectionError(f"unexpected reply {head[:40]!r}")
                    pushed = True
        except Exception as exc:
            conn.disconnect()  # a reply may be left unread
            if pushed:
                # The chains are queued: the events' replies lost with the
                # connection must not make the caller send them again.
                log.warning("task-sent events may be lost (the chains were queued)")
                return
            err = _redis_error(exc, answered=bool(buf))
            if err is exc:
                raise
            raise err from exc
        except BaseException:
            conn.disconnect()
            raise
        self._idle.append(conn)


def _redis_error(exc: Exception, answered: bool) -> Exception:
    """``exc`` of a send as redis-py would raise it (the publish policy
    retries its connection errors and timeouts)."""
    if isinstance(exc, redis.RedisError):
        return exc
    if isinstance(exc, TimeoutError):  # socket.timeout
        return redis.TimeoutError(str(exc))
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)) and not answered:
        return _Unanswered(str(exc))
    if isinstance(exc, OSError):
        return redis.ConnectionError(str(exc))
    return exc


class _Unanswered(redis.ConnectionError):
    """The connection ended before any reply to a send came back."""


def _plain_redis(conf) -> bool:
    url = conf.broker_url
    options = conf.broker_transport_options or {}
    return (
        isinstance(url, str)
        and url.startswith(("redis://", "rediss://"))
        and ";" not in url
        and conf.broker_transport is None
        and not conf.broker_use_ssl
        and not options.get("global_keyprefix")
        and not options.get("master_name")
        and conf.task_protocol == 2
    )


def attach(celery_app: Celery, config: dict[str, Any]) -> None:
    """Give ``celery_app`` (configured from ``config``) a chain sender."""
    celery_app.bff_chain_sender = ChainSender(celery_app, config)


def sender(celery_app: Celery) -> ChainSender | None:
    return getattr(celery_app, "bff_chain_sender", None)
