"""The embedded broker: kombu's filesystem transport, delivering whole messages.

kombu's filesystem Channel creates a message file under its final name and
then writes it, and a consumer moves away whatever file it lists, without the
producer's lock: it can take a file not yet written, and ``loads("")`` kills
the Celery worker (https://github.com/celery/kombu/issues/1551, open). It also
moves the file it takes to ``tempfile.gettempdir()``, often another
filesystem, where a move is a copy and a delete rather than one rename.

This subclass overrides the two methods kombu's virtual transport asks a
transport to implement, ``_put`` and ``_get``, so that a file under a
message's name is always complete and only one consumer can take it:

- ``_put`` writes ``<name>.part`` (kombu's queue filter, which matches names
  ending in ``.<queue>.msg``, skips it) and renames it to ``<name>`` when the
  write is done; a rename within a folder is atomic.
- ``_get`` renames the file into the processed folder, beside the queue
  folder (one filesystem), so one consumer's rename succeeds and the others'
  find no file; it then reads the file and deletes it unless
  ``store_processed``.

``_put`` also starts the name with the message's priority, so ``_get``'s
sorted listing takes priority 0 first, as kombu's Redis transport does (and
first in, first out within a priority): depth first, and a single job's
stages before a batch's (``app.platform.queue.priority``). kombu's own
transport ignores priorities: a single job sent behind a 100-item batch
waited for the whole batch.

``Transport.drain_events`` waits briefly, so the worker acks finished tasks
at once (see there).

No fsync: this is the development broker, and the dispatcher re-sends a
generation whose message was lost.
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import time_ns

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


def _priority(payload: dict) -> int:
    """The message's priority, 0 (taken first) to 9, as kombu's Redis transport
    reads it; 0 when it has none."""
    try:
        return max(0, min(9, int(payload["properties"]["priority"])))
    except (TypeError, ValueError, KeyError):
        return 0


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        # The priority, then the creation time (fixed width: compared as text;
        # in ns, not kombu's ms: a batch's messages are sent within one ms),
        # so a sorted listing is by priority, first in first out within one.
        # Wall-clock time, not kombu's monotonic: the folder outlives a reboot,
        # which restarts the monotonic clock, so messages left from before it
        # would sort behind newer ones by the previous boot's uptime.
        stamp = f"{_priority(payload)}_{time_ns():020d}"
        name = f"{stamp}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        try:
            with open(path + ".part", "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(path + ".part", path)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc

    def _get(self, queue):
        wanted = f"{queue}.msg"  # kombu's filter: "<priority>_<time>_<uuid>.<queue>.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            taken = os.path.join(self.processed_folder, name)
            try:
                os.replace(os.path.join(self.data_folder_in, name), taken)
            except FileNotFoundError:
                if os.path.isdir(self.processed_folder):
                    continue  # another consumer took it first
                raise ChannelError(f"No folder {self.processed_folder!r}") from None
            except OSError as exc:  # e.g. the processed folder on another filesystem
                raise ChannelError(f"Cannot take {name!r} from queue.") from exc
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                if not self.store_processed:
                    os.remove(taken)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {taken!r} from queue.") from exc
            return loads(bytes_to_str(payload))
        raise Empty()


# How long one ``drain_events`` waits for a message before it gives the
# worker's loop back (see ``Transport.drain_events``).
DRAIN_WAIT = 0.1


class Transport(filesystem.Transport):
    Channel = Channel

    def drain_events(self, connection, timeout=None):
        """Wait at most ``DRAIN_WAIT`` seconds, whatever the caller asked.

        A transport without an event loop runs under Celery's ``synloop``,
        which calls ``drain_events(timeout=2.0)`` and performs the acks of
        finished tasks (queued by the thread pool with ``call_soon``) only
        between two calls. With late acks and a prefetch of one per thread,
        the window fills with finished-but-unacked tasks and the worker takes
        nothing new until the 2 s wait ends: two jobs at once took 14 s
        instead of 0.5 s. Giving the loop back every 0.1 s acks them at once.
        A remote-control call (``inspect``) collects replies until 0.1 s pass
        without one; on ``bff dev`` (one worker) its reply comes in ~0.15 s."""
        if timeout is not None:
            timeout = min(timeout, DRAIN_WAIT)
        return super().drain_events(connection, timeout=timeout)
