"""The two channels across the thread boundary, besides ``wsgi.input``.

``LoopChannel``: worker threads -> event-loop thread. Workers ``post(fn, arg)``; the loop runs ``fn(arg)`` in post
order. Posts made while a drain is already scheduled ride along with it, so a burst of finished responses costs one
loop wake-up, not one each. A drain handles at most ``DRAIN_BATCH`` messages, then yields to the loop's next
iteration for the rest, which first reads what the sockets have: the requests that clients sent in answer to the
responses just written start before the rest of the burst is written. Draining a whole burst first makes every
request in it wait for all of it, and start its next call together with the others: under a closed-loop load of
calls that wait (the 20 ms sleep case) bursts then never spread out, and a fifth of the CPU went idle between them
(256 connections: 8.2-9k requests/s whole, 9.9-10.6k in batches of 4 to 32, the same run).

``WriteFlow``: response backpressure, event-loop thread -> worker threads. The loop records what it handed to the
transport and whether the transport asked to pause; the worker blocks in ``wait()`` while more than ``HIGH_WATER``
bytes it posted are unwritten or the transport is paused, and raises ``ClientDisconnected`` once the connection is
gone. A client that stops reading therefore holds at most about ``HIGH_WATER`` plus the transport's own high-water
mark of response data in memory, however much the app produces.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ClientDisconnected

__all__ = ["DRAIN_BATCH", "HIGH_WATER", "LoopChannel", "Soon", "WriteFlow"]

logger = logging.getLogger("asyncwsgi.error")

#: Response bytes posted by a worker but not yet handed to the transport, above which the worker waits.
HIGH_WATER = 512 * 1024
#: Messages handled per drain before the loop is given its next iteration (see the module docstring).
DRAIN_BATCH = 16

#: ``loop.call_soon`` and its kin: run a callable (no arguments) on the event loop.
Soon = Callable[[Callable[[], object]], object]


class LoopChannel:
    """``LoopChannel(call_soon_threadsafe, call_soon)``: ``call_soon_threadsafe`` runs a callable on the loop thread
    from another thread (asyncio's ``loop.call_soon_threadsafe``); ``call_soon`` does it from the loop thread, in the
    loop's next iteration, without a wake-up (``loop.call_soon``). trio has one call for both: its token's
    ``run_sync_soon``."""

    def __init__(self, call_soon_threadsafe: Soon, call_soon: Soon) -> None:
        self._call_soon_threadsafe = call_soon_threadsafe
        self._call_soon = call_soon
        self._items: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._scheduled = False  # a drain is scheduled through call_soon_threadsafe (workers and loop)
        self._continuing = False  # the rest of a burst is scheduled through call_soon (loop thread only)
        self._after: list[Callable[[], object]] = []

    # -- worker threads ----------------------------------------------------------------------------------------------

    def post(self, fn: Callable[[Any], object], arg: Any) -> None:
        """Run ``fn(arg)`` on the loop thread soon. Never blocks. Order of posts is kept."""
        self._items.append((fn, arg))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._call_soon_threadsafe(self._drain)
            except Exception:  # the loop is closed (RuntimeError, trio.RunFinishedError): nobody will read this
                self._items.clear()

    # -- event-loop thread -------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        # Clear the flag before popping: a post racing with us either lands in this drain or schedules the next.
        self._scheduled = False
        self._run_batch()

    def _continue(self) -> None:
        self._continuing = False
        self._run_batch()

    def _run_batch(self) -> None:
        items = self._items
        n = len(items)
        for _ in range(n if n <= DRAIN_BATCH else DRAIN_BATCH):
            fn, arg = items.popleft()
            try:
                fn(arg)
            except Exception:
                logger.exception("error in the event loop while handling a worker's message")
        after = self._after
        if after:
            self._after = []
            for callback in after:
                try:
                    callback()
                except Exception:
                    logger.exception("error in the event loop after handling workers' messages")
        # The rest in the loop's next iteration, unless a drain is already on its way. One continuation at most:
        # a post racing with this check may add a drain of its own, never a second chain of them. The continuation
        # leaves _scheduled alone, so a post while it is pending still tries the loop (and learns it if it closed).
        if items and not self._scheduled and not self._continuing:
            self._continuing = True
            self._call_soon(self._continue)

    def after_drain(self, callback: Callable[[], object]) -> None:
        """Loop thread, during a drain: run ``callback`` once this drain's messages are handled (to coalesce
        several messages' writes into one)."""
        self._after.append(callback)


class WriteFlow:
    """Per-connection response flow control; see the module docstring for who writes which field."""

    __slots__ = ("_lock", "_waiting", "closed", "high_water", "paused", "queued", "written")

    def __init__(self, high_water: int = HIGH_WATER) -> None:
        self.high_water = high_water
        self.queued = 0  # worker thread: bytes posted
        self.written = 0  # loop thread: bytes handed to the transport
        self.paused = False  # loop thread: the transport called pause_writing()
        self.closed = False  # loop thread: the connection is gone
        self._waiting = False
        # Made by the first worker that has to wait; held while it waits, released by the loop (_wake). A bare lock,
        # not a threading.Event: made this deep in the worker's stack, an Event (Python __init__s nested through C
        # calls) took every stalled worker's thread stack onto one more 4 KiB page.
        self._lock: threading.Lock | None = None

    # -- worker thread -----------------------------------------------------------------------------------------------

    def _ready(self) -> bool:
        return not self.paused and self.queued - self.written <= self.high_water

    def wait(self) -> None:
        """Block while the client is behind; raise ``ClientDisconnected`` if it left."""
        while True:
            if self.closed:
                raise ClientDisconnected("client disconnected")
            if self._ready():
                return
            lock = self._lock
            if lock is None:
                lock = self._lock = threading.Lock()
            lock.acquire(False)  # held: a wake-up that came while we were not waiting is dropped
            self._waiting = True
            if self.closed or self._ready():
                self._waiting = False
                continue
            lock.acquire()  # until the loop thread releases it (_wake)
            self._waiting = False

    # -- event-loop thread -------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        # Only the worker acquires the lock and only this thread releases it: if it is held now, it is still held
        # when released. _waiting is only set after the lock is held (same worker thread, GIL order).
        lock = self._lock
        if lock is not None and lock.locked():
            lock.release()

    def wrote(self, n: int) -> None:
        self.written += n
        if self._waiting and self._ready():
            self._wake()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self._waiting and self._ready():
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()
