"""A bounded, elastic thread pool for WSGI calls.

Threads: ``submit`` (and the growth check it schedules) run on the event-loop thread and never block; jobs run on
worker threads. A thread idle for ``idle_timeout`` seconds stops.

Growth. Up to ``eager_threads`` threads start as soon as a job finds no idle thread. Past that, more threads are
started only while jobs wait *and* the process is not using a full CPU: with the GIL, more threads help an app that
waits (on a database, a remote API, ``sleep``) but only add switching to one that computes. A check scheduled every
``GROW_INTERVAL`` while jobs wait measures the process's CPU time against wall time and, below ``CPU_SATURATED``,
doubles the thread count (bounded by the queue and ``max_threads``). A CPU-bound app is thus served by a few hot
threads that hand the loop several responses per wake-up, and an I/O-bound one grows to what it needs in tens of
milliseconds.

Batching. While the process is using a full CPU (sampled every ``SAMPLE_INTERVAL``), jobs submitted during one
event-loop iteration are held and handed over together at its end (``defer``: ``loop.call_soon``). Handing a job to
an idle thread wakes it, and on a busy CPU the woken thread preempts the loop only to find the GIL taken: about two
context switches per request. Held until the loop is done with the iteration's reads, the jobs reach a thread that
can take the GIL at once and run them back to back. Below that load a job is handed over at once, which is what an
app that mostly waits (on I/O, ``sleep``) wants: its latency, not the CPU, is then what counts.

Jobs wait in a FIFO queue whose depth is readable (``queued``); when the pool is at ``max_threads`` and jobs wait, a
rate-limited warning says so, so a starved pool is never silent.
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
Scheduler = Callable[[float, Callable[[], None]], object]

#: Seconds between growth checks while jobs wait.
GROW_INTERVAL = 0.01
#: Process CPU use (fraction of one core) at or above which waiting jobs do not start more threads, and submissions
#: are batched.
CPU_SATURATED = 0.85
#: Seconds between samples of the CPU use that turns batching on or off.
SAMPLE_INTERVAL = 0.1


def _saturated(cpu0: float, wall0: float, cpu: float, wall: float) -> bool:
    """The process used at least ``CPU_SATURATED`` of a CPU between two readings (process time, monotonic time)."""
    return cpu - cpu0 >= CPU_SATURATED * (wall - wall0)


class ThreadPool:
    def __init__(
        self,
        max_threads: int,
        idle_timeout: float = 60.0,
        name: str = "asyncwsgi-worker",
        *,
        eager_threads: int | None = None,
        schedule: Scheduler | None = None,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """``schedule(delay, fn)`` runs ``fn`` later on the submitting thread (``loop.call_later``); without it, or
        with ``eager_threads`` unset, every job that finds no idle thread starts one (up to ``max_threads``).
        ``defer(fn)`` runs ``fn`` on the submitting thread once it is done with what it is doing now
        (``loop.call_soon``); without it jobs are never batched."""
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self._eager = max_threads if eager_threads is None or schedule is None else min(eager_threads, max_threads)
        self._schedule = schedule
        self._checking = False
        self._cpu_mark = 0.0
        self._wall_mark = 0.0
        self._idle_timeout = idle_timeout or None
        self._name = name
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        # Threads waiting for a job (or about to), and threads started that have not begun waiting yet, as the
        # lengths of two lists: a job that finds the queue no longer than both together will be taken without a new
        # thread. A thread counts itself out when it takes a job, whoever it was meant for. list.append/pop/len are
        # single C calls under the GIL, so the per-job path takes no lock: a lock shared by the loop and hundreds
        # of workers makes the loop block on it whenever a worker holding it loses the GIL, and then wait again for
        # the GIL, behind those workers. ``_lock`` guards only starting and stopping threads.
        self._idle: list[None] = []
        self._starting: list[None] = []
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._counter = 0
        self._shutdown = False
        self._last_warning = 0.0
        self._last_thread_error = 0.0
        self._defer = defer
        self._batching = False
        self._held: list[Job] = []
        self._sample_cpu = time.process_time()
        self._sample_wall = time.monotonic()

    # -- any thread --------------------------------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return len(self._threads)

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return self._queue.qsize() + len(self._held)

    # -- event-loop thread -------------------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any], object], arg: Any) -> None:
        """Run ``fn(arg)`` on a worker thread; never blocks."""
        if self._shutdown:
            raise RuntimeError("the thread pool is shut down")
        if self._defer is not None:
            now = time.monotonic()
            if now - self._sample_wall >= SAMPLE_INTERVAL:
                self._sample(now)
            if self._batching:
                held = self._held
                held.append((fn, arg))
                if len(held) == 1:
                    self._defer(self._release)
                return
        self._hand_over(((fn, arg),))

    def _sample(self, now: float) -> None:
        cpu = time.process_time()
        self._batching = _saturated(self._sample_cpu, self._sample_wall, cpu, now)
        self._sample_cpu, self._sample_wall = cpu, now

    def _release(self) -> None:
        """Hand over the jobs held during the loop iteration that just ended."""
        held = self._held
        self._held = []
        if not self._shutdown:  # else the server stopped before they could start; their connections are gone
            self._hand_over(held)

    def _unserved(self) -> int:
        """Jobs queued beyond what idle and starting threads will take (held jobs count: they will be queued)."""
        return self._queue.qsize() + len(self._held) - len(self._idle) - len(self._starting)

    def _hand_over(self, jobs: list[Job] | tuple[Job, ...]) -> None:
        queue_ = self._queue
        put = queue_.put
        for job in jobs:
            put(job)
        waiting = queue_.qsize() - len(self._idle) - len(self._starting)
        if waiting <= 0:
            return
        if len(self._threads) < self._eager:
            waiting -= self._start_threads(waiting, self._eager)
            if waiting <= 0:
                return
        if len(self._threads) >= self.max_threads:
            self._warn_starved()
        if not self._checking and self._schedule is not None:
            self._checking = True
            self._cpu_mark = time.process_time()
            self._wall_mark = time.monotonic()
            self._schedule(GROW_INTERVAL, self._check_growth)

    def _start_threads(self, n: int, limit: int) -> int:
        """Start up to ``n`` threads without exceeding ``limit`` in all; returns how many started."""
        started = 0
        with self._lock:
            while started < n and len(self._threads) < limit and self._start_thread_locked():
                started += 1
        return started

    def _start_thread_locked(self) -> bool:
        """Start a worker thread; False if the system refused one (the jobs then wait for the threads there are)."""
        self._counter += 1
        t = threading.Thread(target=self._work, name=f"{self._name}-{self._counter}", daemon=True)
        self._starting.append(None)
        self._threads.add(t)
        try:
            t.start()
        except RuntimeError as exc:  # "can't start new thread": out of memory, or a limit on threads or processes
            self._threads.discard(t)
            self._starting.pop()
            now = time.monotonic()
            if now - self._last_thread_error >= 5.0:
                self._last_thread_error = now
                logger.error(
                    "could not start a worker thread (%s); %d thread(s) serve the %d request(s) waiting",
                    exc,
                    len(self._threads),
                    self._queue.qsize() + len(self._held),
                )
            return False
        return True

    def _check_growth(self) -> None:
        """Loop thread, every ``GROW_INTERVAL`` while jobs wait: add threads if the CPU has room for them."""
        queued = self._unserved()
        if queued <= 0 or self._shutdown:
            self._checking = False
            return
        cpu, wall = time.process_time(), time.monotonic()
        saturated = _saturated(self._cpu_mark, self._wall_mark, cpu, wall)
        self._cpu_mark, self._wall_mark = cpu, wall
        if not saturated:
            self._start_threads(min(queued, max(1, len(self._threads))), self.max_threads)
        elif len(self._threads) >= self.max_threads:
            self._warn_starved()
        assert self._schedule is not None
        self._schedule(GROW_INTERVAL, self._check_growth)

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
        queue_ = self._queue
        get = queue_.get
        idle = self._idle
        idle_in, idle_out = idle.append, idle.pop
        me = threading.current_thread()
        self._starting.pop()
        idle_in(None)
        try:
            while True:
                try:
                    job = get(timeout=self._idle_timeout)
                except queue.Empty:
                    # Count ourselves out, then look: a submit that counted on us had queued its job before it
                    # looked, so we see that job and stay; one that looks later sees us gone and starts a thread.
                    with self._lock:
                        idle_out()
                        if queue_.qsize():
                            idle_in(None)
                            continue
                        self._threads.discard(me)
                        return
                idle_out()
                if job is None:
                    return
                fn, arg = job
                try:
                    fn(arg)
                except BaseException:  # the job reports its own errors; this is the last line of defence
                    logger.exception("unhandled error in worker thread")
                del job, fn, arg
                idle_in(None)
        finally:
            with self._lock:
                self._threads.discard(me)
