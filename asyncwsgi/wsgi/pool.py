"""A bounded, elastic thread pool for WSGI calls.

Threads: ``submit`` is called on the event-loop thread and never blocks; jobs run on worker threads. A thread is
started only when a job arrives and no thread is idle, up to ``max_threads``; a thread idle for ``idle_timeout``
seconds stops. When every thread is busy, jobs wait in a FIFO queue whose depth is readable (``queued``) and is
reported with a rate-limited warning, so a starved pool is never silent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadPool"]

logger = logging.getLogger("asyncwsgi.error")

Job = tuple[Callable[[Any], object], Any]


class ThreadPool:
    def __init__(self, max_threads: int, idle_timeout: float = 60.0, name: str = "asyncwsgi-worker") -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._idle_timeout = idle_timeout or None
        self._name = name
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # One token per idle thread: submit takes a token to hand the job to an idle thread instead of starting one.
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._counter = 0
        self._shutdown = False
        self._last_warning = 0.0

    # -- any thread --------------------------------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return len(self._threads)

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return self._queue.qsize()

    # -- event-loop thread -------------------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any], object], arg: Any) -> None:
        """Run ``fn(arg)`` on a worker thread; never blocks."""
        if self._shutdown:
            raise RuntimeError("the thread pool is shut down")
        self._queue.put((fn, arg))
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if len(self._threads) < self.max_threads:
                self._counter += 1
                t = threading.Thread(target=self._work, name=f"{self._name}-{self._counter}", daemon=True)
                self._threads.add(t)
                t.start()
                return
        self._warn_starved()

    def _warn_starved(self) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            logger.warning(
                "all %d worker threads are busy; %d request(s) waiting for a thread (raise --threads?)",
                self.max_threads,
                self.queued,
            )

    def shutdown(self) -> None:
        """Stop idle threads now and busy ones once their job returns. Does not wait: a hung app keeps its thread."""
        self._shutdown = True
        with self._lock:
            n = len(self._threads)
        for _ in range(n):
            self._queue.put(None)

    # -- worker threads ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        get = self._queue.get
        me = threading.current_thread()
        try:
            while True:
                try:
                    job = get(timeout=self._idle_timeout)
                except queue.Empty:
                    # Stop only if our idle token is still ours (if submit took it, a job is on its way to us), and
                    # leave the thread count in the same locked step, so a submit racing with us sees either our
                    # token or our absence, and starts a thread in the latter case.
                    with self._lock:
                        if self._idle.acquire(blocking=False):
                            self._threads.discard(me)
                            return
                    continue
                if job is None:
                    return
                fn, arg = job
                try:
                    fn(arg)
                except BaseException:  # the job reports its own errors; this is the last line of defence
                    logger.exception("unhandled error in worker thread")
                del job, fn, arg
                self._idle.release()
        finally:
            with self._lock:
                self._threads.discard(me)
