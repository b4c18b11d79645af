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

Hand-over. Jobs wait in a FIFO queue. A thread with nothing to do parks on a lock of its own, on a stack of idle
threads. A job wakes the thread on top of that stack (idle the shortest time: its stack is still in the CPU's caches,
and threads below it are left to time out when the pool is larger than the load), but only while no other woken thread
is on its way to the queue: that one, once it has taken its job, wakes the next if jobs remain, and so on. The loop
thus wakes at most one thread per burst of jobs, and each further thread is woken by a worker about to run Python
code of its own (the app), not by the loop in the middle of its iteration: a thread woken by the loop preempts it on
a busy CPU only to find the GIL taken, two context switches for nothing. A thread that finishes its job takes the
next queued one before it parks. (``queue.SimpleQueue``, which all idle threads would wait on together, relays the
same way but wakes one thread more each time the queue empties, which takes the GIL only to wait again.)

The depth of the queue is readable (``queued``); when the pool is at ``max_threads`` and jobs wait, a rate-limited
warning says so, so a starved pool is never silent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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


class _Parked:
    """An idle worker thread: it waits to acquire ``lock``, which it holds; whoever takes it off the idle stack
    releases the lock (after setting ``stop`` to make it stop rather than look at the queue)."""

    __slots__ = ("lock", "stop")

    def __init__(self) -> None:
        self.stop = False
        self.lock = threading.Lock()
        self.lock.acquire()


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
        self._queue: deque[Job] = deque()
        # Parked threads (a stack: the last parked is woken first), and threads started that have not yet looked at
        # the queue, as a list whose length counts them: a job that finds the queue no longer than the starting
        # threads will be taken without a new thread. list.append/pop/len and deque.append/popleft are single C
        # calls under the GIL, so the per-job path takes no lock: a lock shared by the loop and hundreds of workers
        # makes the loop block on it whenever a worker holding it loses the GIL, and then wait again for the GIL,
        # behind those workers. ``_lock`` guards only starting and stopping threads.
        self._idle: list[_Parked] = []
        self._starting: list[None] = []
        # A thread was woken to take a job and has not yet taken one: no other is woken meanwhile (see Hand-over).
        # Read and written by the loop and the workers without a lock: a race wakes one thread too many, never none
        # too few (a woken thread clears it before it looks at the queue, the loop sets jobs before it looks at it).
        self._waking = False
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
    def busy(self) -> int:
        """Threads alive and not parked: running a job, or on their way to one or to park."""
        return len(self._threads) - len(self._idle)

    @property
    def queued(self) -> int:
        """Jobs waiting for a thread."""
        return len(self._queue) + len(self._held)

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

    def flush(self) -> None:
        """Hand over now the jobs held for the end of this loop iteration: before ``shutdown``, when the submitters
        still wait for them (jobs queued when the pool shuts down still run; held ones would be dropped)."""
        if self._held:
            self._release()

    def _unserved(self) -> int:
        """Jobs queued beyond what idle, woken and starting threads will take (held jobs count: they will be queued)."""
        return len(self._queue) + len(self._held) - len(self._idle) - self._waking - len(self._starting)

    def _wake_one(self) -> None:
        """Wake the most recently parked thread to take a job from the queue (any thread, under the GIL)."""
        try:
            parked = self._idle.pop()
        except IndexError:  # none parked, or the last one timed out and took itself off since we looked
            return
        self._waking = True
        parked.lock.release()

    def _hand_over(self, jobs: list[Job] | tuple[Job, ...]) -> None:
        queue_ = self._queue
        queue_.extend(jobs)
        if not self._waking and self._idle:
            self._wake_one()
        waiting = len(queue_) - len(self._idle) - self._waking - len(self._starting)
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
                    len(self._queue) + len(self._held),
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
        idle = self._idle
        while idle:
            try:
                parked = idle.pop()
            except IndexError:
                break
            parked.stop = True
            parked.lock.release()
        # Busy threads run what is queued, then see _shutdown and stop instead of parking.

    # -- worker threads ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        queue_ = self._queue
        take = queue_.popleft
        idle = self._idle
        me = _Parked()
        acquire = me.lock.acquire
        timeout = -1 if self._idle_timeout is None else self._idle_timeout
        current = threading.current_thread()
        self._starting.pop()
        try:
            while True:
                try:
                    job = take()
                except IndexError:
                    if self._shutdown:
                        if queue_:
                            continue  # queued (flushed) just now, as the pool shut down: still ours to run
                        return
                    idle.append(me)
                    # A job queued after we looked but before we were on the stack woke no thread if one was on its
                    # way (it took another job, then found no one to wake): look again, and take ourselves off the
                    # stack to run it. If someone took us off first, our lock is released for us: wait for it.
                    if (queue_ or self._shutdown) and self._unpark(me):
                        continue
                    if not acquire(True, timeout):
                        with self._lock:
                            if self._unpark(me):
                                # Out of the count first, then look: a job queued before we looked is ours; one
                                # queued after finds us gone from the count and starts a thread (submit reads the
                                # count without the lock, so counting ourselves out last left a job stranded).
                                self._threads.discard(current)
                                if not queue_:
                                    return
                                self._threads.add(current)
                                continue
                        acquire()  # taken off the stack just now: the release is on its way
                    self._waking = False
                    if me.stop and not queue_:
                        return
                    continue  # to the queue (a finishing thread may have taken the job: then we park again)
                if queue_ and not self._waking:
                    self._wake_one()  # the next thread, for the next job
                fn, arg = job
                try:
                    fn(arg)
                except BaseException:  # the job reports its own errors; this is the last line of defence
                    logger.exception("unhandled error in worker thread")
                del job, fn, arg
        finally:
            with self._lock:
                self._threads.discard(current)

    def _unpark(self, me: _Parked) -> bool:
        """Take ``me`` off the idle stack; False if someone else already did (and so gives it a job)."""
        try:
            self._idle.remove(me)
        except ValueError:
            return False
        return True
