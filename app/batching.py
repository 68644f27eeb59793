"""Combining: concurrent calls in one process are served in batches, by
whichever of the calling threads is the leader at the time.

A call arriving while no batch is in flight leads at once: its batch is
whatever is queued (usually just itself), so a lone call waits for nothing
(no timer, no delay). Calls arriving while a batch is in flight queue up;
when it ends, its leader wakes the first of them as the next leader, which
takes all that queued (up to ``max_batch``). Everyone else sleeps until the
leader hands them their result. So the batch size follows the load: one
under light load, about the number of calls that arrive during one batch
under heavy load.

State is per process and made lazily (a lock, a queue): a forked child
(gunicorn with ``preload_app``, Celery prefork) starts with its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("item", "result", "error", "leads", "_wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.leads = False
        self._wake = threading.Lock()  # held until this slot is done or leads
        self._wake.acquire()

    def wait(self) -> None:
        self._wake.acquire()

    def wake(self) -> None:
        self._wake.release()


class _State:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.queue: list[_Slot] = []
        self.busy = False  # a leader is running a batch (or about to)


_STATE_LOCK = threading.Lock()


class Combiner(Generic[T, R]):
    """``submit(item)`` returns ``run(batch)[i]`` for its item, where ``run``
    served it in a batch with the calls that arrived meanwhile (see the
    module's docstring). If ``run`` raises, every call of that batch raises
    it; nobody is left waiting."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 64) -> None:
        self._run = run
        self._max = max_batch
        self._state: _State | None = None

    def _here(self) -> _State:
        state = self._state
        if state is None or state.pid != os.getpid():
            with _STATE_LOCK:
                state = self._state
                if state is None or state.pid != os.getpid():
                    state = self._state = _State()
        return state

    def submit(self, item: T) -> R:
        state = self._here()
        slot: _Slot[T, R] = _Slot(item)
        with state.lock:
            state.queue.append(slot)
            follow, state.busy = state.busy, True
        if follow:
            slot.wait()  # until served, or made the next leader
        if slot.leads or not follow:
            self._lead(state)  # our slot is the queue's first: it is in the batch
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, state: _State) -> None:
        with state.lock:
            batch = state.queue[: self._max]
            del state.queue[: self._max]
        finished = False
        try:
            results = self._run([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            for s, r in zip(batch, results, strict=True):
                s.result = r
            finished = True
        except Exception as exc:
            for s in batch:
                s.error = exc
            finished = True
        finally:
            if not finished:  # e.g. the worker exiting: it goes on up the leader's stack
                for s in batch:
                    s.error = RuntimeError("the batch was interrupted")
            # Whatever happened, nobody is left waiting: the next leader (the
            # first who queued meanwhile) and everyone this batch served.
            with state.lock:
                nxt = state.queue[0] if state.queue else None
                if nxt is None:
                    state.busy = False
                else:
                    nxt.leads = True
            if nxt is not None:
                nxt.wake()
            for s in batch[1:]:
                s.wake()
