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
        self.busy = False  # a batch is in flight (its leader running it, or about to)


_STATE_LOCK = threading.Lock()


class Combiner(Generic[T, R]):
    """``submit(item)`` returns ``run(batch)[i]`` for its item, where ``run``
    served it in a batch with the calls that arrived meanwhile (see the
    module's docstring). If ``run`` raises, every call of that batch raises
    it; nobody is left waiting."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
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
            # Invariant: calls queue only while a batch is in flight.
            lead = not state.busy
            if lead:
                state.busy = True
            else:
                state.queue.append(slot)
        if not lead:
            slot.wait()  # until served, or handed the turn of a batch that ended
        if lead or slot.leads:
            self._lead(state, slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, state: _State, first: _Slot[T, R]) -> None:
        with state.lock:
            batch = [first, *state.queue[: self._max - 1]]
            del state.queue[: self._max - 1]
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
            # Whatever happened, nobody is left waiting: the turn goes to the
            # first who queued meanwhile (taken off the queue now, under the
            # lock, so it is handed one turn only), else the process has no
            # batch in flight; then everyone this batch served is woken.
            with state.lock:
                if state.queue:
                    nxt: _Slot | None = state.queue.pop(0)
                    nxt.leads = True
                else:
                    nxt = None
                    state.busy = False
            if nxt is not None:
                nxt.wake()
            for s in batch[1:]:
                s.wake()
