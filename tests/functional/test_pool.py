"""The worker thread pool: ``asyncwsgi.wsgi.pool.ThreadPool`` on its own (bounded concurrency, threads started on
demand and stopped when idle, the queue depth, the rate-limited starvation warning, FIFO order, no job left behind by
a thread that is stopping), then through the server with ``threads=2`` (a queued request shows in
``queue_depth``; a hung app holds one thread while the others keep serving)."""

from __future__ import annotations

import inspect
import logging
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any

import pytest

from asyncwsgi.wsgi import pool as pool_module
from asyncwsgi.wsgi.bridge import DRAIN_BATCH
from asyncwsgi.wsgi.pool import ThreadPool

from ..apps.streaming import Gate
from ..helpers import wait_until

_names = count()


class Jobs:
    """Jobs that record how many run at once and block until ``release`` is set (bounded)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running = 0
        self.max_running = 0
        self.done = 0
        self.order: list[int] = []
        self.thread_names: set[str] = set()
        self.release = threading.Event()

    def blocking(self, tag: int) -> None:
        with self.cond:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.order.append(tag)
            self.thread_names.add(threading.current_thread().name)
            self.cond.notify_all()
        self.release.wait(10)
        with self.cond:
            self.running -= 1
            self.done += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., ThreadPool]]:
    pools: list[ThreadPool] = []

    def make(max_threads: int, idle_timeout: float = 60.0) -> ThreadPool:
        p = ThreadPool(max_threads, idle_timeout, name=f"test-pool-{next(_names)}")
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.shutdown()
    for p in pools:
        assert wait_until(lambda p=p: p.threads == 0, timeout=5.0), f"{p.threads} threads left after shutdown"


def _alive_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix + "-")]


# -- unit: ThreadPool -------------------------------------------------------------------------------------------------


def test_no_threads_before_the_first_job(make_pool):
    pool = make_pool(4)
    assert pool.threads == 0
    assert pool.queued == 0
    assert _alive_named(pool._name) == []
    ran = threading.Event()
    pool.submit(lambda ev: ev.set(), ran)
    assert ran.wait(5.0)
    assert pool.threads == 1
    assert len(_alive_named(pool._name)) == 1


def test_never_more_than_max_threads_and_the_rest_queue(make_pool):
    pool = make_pool(3)
    jobs = Jobs()
    for i in range(20):
        pool.submit(jobs.blocking, i)
    assert jobs.wait(lambda: jobs.running == 3), f"{jobs.running} jobs running, expected 3"
    assert pool.threads == 3
    assert pool.queued == 17
    assert len(_alive_named(pool._name)) == 3
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 20), f"only {jobs.done} of 20 jobs finished"
    assert jobs.max_running == 3
    assert pool.queued == 0
    assert len(jobs.thread_names) == 3


def test_queued_counts_jobs_waiting_for_a_busy_pool(make_pool):
    pool = make_pool(2)
    jobs = Jobs()
    pool.submit(jobs.blocking, 0)
    pool.submit(jobs.blocking, 1)
    assert jobs.wait(lambda: jobs.running == 2)
    assert pool.queued == 0
    for i in range(2, 5):
        pool.submit(jobs.blocking, i)
        assert pool.queued == i - 1
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 5)
    assert pool.queued == 0


def test_waiting_jobs_run_in_fifo_order(make_pool):
    pool = make_pool(1)
    jobs = Jobs()
    for i in range(8):
        pool.submit(jobs.blocking, i)
    assert jobs.wait(lambda: jobs.running == 1)
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 8)
    assert jobs.order == list(range(8))


def test_idle_threads_stop_after_idle_timeout(make_pool):
    pool = make_pool(3, idle_timeout=0.2)
    jobs = Jobs()
    for i in range(3):
        pool.submit(jobs.blocking, i)
    assert jobs.wait(lambda: jobs.running == 3)
    assert pool.threads == 3
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 3)
    assert wait_until(lambda: pool.threads == 0, timeout=3.0), f"{pool.threads} threads still alive"
    assert wait_until(lambda: not _alive_named(pool._name), timeout=1.0)
    # ... and a new job starts a thread again.
    ran = threading.Event()
    pool.submit(lambda ev: ev.set(), ran)
    assert ran.wait(5.0)
    assert pool.threads == 1


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return 0.0


def test_starvation_warning_is_logged_and_rate_limited(make_pool, caplog, monkeypatch):
    error_logger = logging.getLogger("asyncwsgi.error")
    monkeypatch.setattr(error_logger, "propagate", True)
    caplog.set_level(logging.WARNING, logger="asyncwsgi.error")
    clock = _FakeClock()
    monkeypatch.setattr(pool_module, "time", clock)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "asyncwsgi.error" and r.levelno == logging.WARNING]

    pool = make_pool(1)
    jobs = Jobs()
    pool.submit(jobs.blocking, 0)
    assert jobs.wait(lambda: jobs.running == 1)
    assert warnings() == []  # a thread was free (started) for the first job

    pool.submit(jobs.blocking, 1)
    assert warnings() == ["all 1 worker threads are busy; 1 request(s) waiting for a thread (raise --threads?)"]
    clock.now += 1.0
    pool.submit(jobs.blocking, 2)
    pool.submit(jobs.blocking, 3)
    assert len(warnings()) == 1, "the starvation warning is not rate limited"
    clock.now += 5.0
    pool.submit(jobs.blocking, 4)
    assert warnings()[1:] == ["all 1 worker threads are busy; 4 request(s) waiting for a thread (raise --threads?)"]
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 5)


class _HeldLock:
    """Wraps the pool's lock. When a worker thread takes it once armed (the only worker is idle, so this is its
    idle-timeout path, deciding to stop), it signals ``stopping`` and waits for ``go`` first: this holds the thread at
    the point where it is about to stop, a point that thread scheduling can stretch on its own at any time."""

    def __init__(self, inner: Any, worker_prefix: str) -> None:
        self._inner = inner
        self._prefix = worker_prefix
        self.armed = False
        self.stopping = threading.Event()
        self.go = threading.Event()

    def __enter__(self) -> Any:
        if self.armed and threading.current_thread().name.startswith(self._prefix) and not self.stopping.is_set():
            self.stopping.set()
            self.go.wait(5.0)
        return self._inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._inner.__exit__(*exc)


def test_a_job_submitted_while_the_last_thread_stops_still_runs(make_pool):
    pool = make_pool(1, idle_timeout=0.2)
    held = _HeldLock(pool._lock, pool._name + "-")
    pool._lock = held  # before the worker starts: it keeps a reference
    first = threading.Event()
    pool.submit(lambda ev: ev.set(), first)
    assert first.wait(5.0)
    assert wait_until(lambda: len(pool._idle) == 1), "the worker did not become idle"
    held.armed = True
    second = threading.Event()
    submitter = threading.Thread(target=pool.submit, args=(lambda ev: ev.set(), second), name="test-submitter")
    try:
        assert held.stopping.wait(5.0), "the idle thread did not time out"
        assert pool.threads == 1 and len(pool._idle) == 1  # held just before it counts itself out to stop
        # Submit while the only thread is stopping. A pool may make submit wait for the stopping thread (a lock
        # around the decision) or not; either way the job must run.
        submitter.start()
        submitter.join(0.2)
    finally:
        held.go.set()
    submitter.join(5.0)
    assert not submitter.is_alive()
    assert second.wait(2.0), f"the job was never run: {pool.threads} thread(s), {pool.queued} job(s) queued"


def test_a_thread_the_system_refuses_leaves_the_jobs_to_the_threads_there_are(make_pool, monkeypatch, caplog):
    """When the system will not start another thread (memory, a thread or process limit), submit does not raise
    into the loop: the pool logs it once and the jobs run on the threads it has."""
    pool = make_pool(4)
    real_start = threading.Thread.start
    started: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name.startswith(pool._name) and started:
            raise RuntimeError("can't start new thread")
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    done = threading.Semaphore(0)
    caplog.set_level(logging.ERROR, logger="asyncwsgi.error")
    for _ in range(3):
        pool.submit(lambda sem: sem.release(), done)
    for _ in range(3):
        assert done.acquire(timeout=5.0), "a job never ran"
    assert pool.threads == 1
    refusals = [r for r in caplog.records if "could not start a worker thread" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
    assert pool._starting == []


def _park_in_order(pool: ThreadPool, n: int) -> list[str]:
    """Run ``n`` jobs at once on ``n`` new threads, then let them end one by one, each thread parked before the next
    job ends. Returns the threads' names in the order they parked."""
    gates = [threading.Event() for _ in range(n)]
    started = threading.Semaphore(0)
    names: list[str] = [""] * n

    def job(i: int) -> None:
        names[i] = threading.current_thread().name
        started.release()
        gates[i].wait(10)

    for i in range(n):
        pool.submit(job, i)
    for _ in range(n):
        assert started.acquire(timeout=5.0), "a job did not start"
    for i in range(n):
        gates[i].set()
        assert wait_until(lambda i=i: len(pool._idle) == i + 1), f"thread {i} did not park"
    return names


def _run_one(pool: ThreadPool) -> str:
    """Submit a job and return the name of the thread that ran it."""
    ran_on: list[str] = []
    done = threading.Event()

    def job(_: object) -> None:
        ran_on.append(threading.current_thread().name)
        done.set()

    pool.submit(job, None)
    assert done.wait(5.0), "the job did not run"
    return ran_on[0]


def test_a_job_goes_to_the_thread_idle_the_shortest_time(make_pool):
    pool = make_pool(3)
    parked = _park_in_order(pool, 3)
    assert _run_one(pool) == parked[-1]
    assert wait_until(lambda: len(pool._idle) == 3)
    assert _run_one(pool) == parked[-1]  # it parked again, on top


def test_threads_beyond_a_steady_load_stop_while_jobs_keep_coming(make_pool):
    """A load that needs one thread at a time keeps only one alive: the same thread takes every job, and the others
    reach their idle timeout. (Handed to the thread idle the longest, jobs went round all four, none ever idle for
    long enough, and the pool kept paying for threads it did not need.)"""
    pool = make_pool(4, idle_timeout=0.3)
    _park_in_order(pool, 4)
    deadline = time.monotonic() + 5.0
    for _ in range(200):  # bounded: 200 jobs, 25 ms apart, or 5 s
        if pool.threads == 1 or time.monotonic() > deadline:
            break
        _run_one(pool)
        assert wait_until(lambda: len(pool._idle) == pool.threads), "the thread did not park again"
        threading.Event().wait(0.025)  # the pace of the load, not a synchronisation
    assert pool.threads == 1, f"{pool.threads} threads still alive under a one-thread load"


def test_a_burst_of_jobs_wakes_one_thread_from_the_submitter_and_each_woken_thread_wakes_the_next(
    make_pool, monkeypatch
):
    """The loop wakes at most one parked thread per burst; each woken thread, once it has its job, wakes the next
    while jobs remain. Exactly one wake per job that needed a parked thread: none wasted on an empty queue."""
    pool = make_pool(8)
    _park_in_order(pool, 8)
    wakes: list[str] = []
    real_wake = pool._wake_one

    def wake() -> None:
        wakes.append(threading.current_thread().name)
        real_wake()

    monkeypatch.setattr(pool, "_wake_one", wake)
    jobs = Jobs()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100)  # the 8 submits are one burst: no woken thread takes the GIL in between
    try:
        for i in range(8):
            pool.submit(jobs.blocking, i)
    finally:
        sys.setswitchinterval(interval)
    submitter = threading.current_thread().name
    assert wakes == [submitter], "the submitter woke more than one thread for one burst"
    assert jobs.wait(lambda: jobs.running == 8), f"only {jobs.running} of 8 jobs started"
    assert wakes.count(submitter) == 1
    assert len(wakes) == 8, wakes  # 1 by the submitter, 7 by woken threads, none for an empty queue
    assert pool.threads == 8
    jobs.release.set()
    assert jobs.wait(lambda: jobs.done == 8)


class _HoldWorker:
    """Holds the pool's next new worker thread just before it runs a given line of ``ThreadPool._work`` (the first
    time it gets there) until ``go`` is set: a window a few bytecodes wide, opened on purpose."""

    def __init__(self, text: str) -> None:
        lines, start = inspect.getsourcelines(ThreadPool._work)
        hits = [start + i for i, line in enumerate(lines) if text in line]
        assert hits, f"no line of ThreadPool._work contains {text!r}"
        self.lineno = hits[0]
        self.reached = threading.Event()
        self.go = threading.Event()

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        return self._local if frame.f_code is ThreadPool._work.__code__ else None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == self.lineno and not self.reached.is_set():
            self.reached.set()
            self.go.wait(10)
        return self._local

    def start_thread(self, pool: ThreadPool, job: Callable[[Any], object], arg: Any) -> None:
        """Submit ``job``: the thread it starts is the one traced."""
        threading.settrace(self._global)
        try:
            pool.submit(job, arg)
        finally:
            threading.settrace(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "idle_timeout"),
    [
        # The thread found the queue empty and is about to put itself on the idle stack: a job queued now finds no
        # idle thread to wake and, the pool being full, starts none. The thread must see it before it waits.
        pytest.param("idle.append(me)", 60.0, id="about-to-park"),
        # The thread timed out and is leaving: the job must be run by it or by a new thread. (It was stranded when
        # the thread looked at the queue before it counted itself out: submit still counted it, and started none.)
        pytest.param("self._threads.discard(current)", 0.05, id="leaving-after-idle-timeout"),
    ],
)
def test_a_job_queued_while_the_only_thread_is_between_two_steps_runs(line: str, idle_timeout: float) -> None:
    pool = ThreadPool(1, idle_timeout, name=f"test-pool-{next(_names)}")
    hold = _HoldWorker(line)
    first, second = threading.Event(), threading.Event()
    try:
        hold.start_thread(pool, lambda ev: ev.set(), first)
        assert first.wait(5.0)
        assert hold.reached.wait(5.0), f"the worker never reached {line!r}"
        pool.submit(lambda ev: ev.set(), second)
        hold.go.set()
        assert second.wait(5.0), f"the job was stranded: {pool.threads} thread(s), {pool.queued} queued"
    finally:
        hold.go.set()
        pool.shutdown()
    assert wait_until(lambda: pool.threads == 0)


def test_a_job_queued_as_the_pool_shuts_down_runs_on_the_thread_that_was_leaving() -> None:
    """to_asgi's close() hands held requests over and shuts the pool down at once: a thread that had just found the
    queue empty must look again before it leaves (it left, and the request waited for good)."""
    pool = ThreadPool(1, 60.0, name=f"test-pool-{next(_names)}")
    hold = _HoldWorker("if self._shutdown:")
    first, second = threading.Event(), threading.Event()
    try:
        hold.start_thread(pool, lambda ev: ev.set(), first)
        assert first.wait(5.0)
        assert hold.reached.wait(5.0), "the worker never found the queue empty"
        pool.submit(lambda ev: ev.set(), second)  # the pool is full: no new thread, none parked to wake
        pool.shutdown()
        hold.go.set()
        assert second.wait(5.0), f"the job was stranded: {pool.threads} thread(s), {pool.queued} queued"
    finally:
        hold.go.set()
        pool.shutdown()
    assert wait_until(lambda: pool.threads == 0)


def test_jobs_submitted_in_bursts_while_threads_park_all_run(make_pool):
    """Bursts of short jobs, so that jobs keep arriving while threads are on their way to park (the window where a
    job finds no parked thread but a thread is about to park): every job runs."""
    pool = make_pool(4)
    done = threading.Semaphore(0)
    total = 0
    for burst in range(300):  # bounded
        n = 1 + burst % 7
        for _ in range(n):
            pool.submit(lambda sem: sem.release(), done)
        total += n
        if burst % 3 == 0:
            for _ in range(n):
                assert done.acquire(timeout=5.0), f"a job never ran ({pool.threads} threads, {pool.queued} queued)"
            total -= n
    for _ in range(total):
        assert done.acquire(timeout=5.0), f"a job never ran ({pool.threads} threads, {pool.queued} queued)"
    assert pool.threads <= 4


# -- functional: through the server ---------------------------------------------------------------------------------


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def _no_data_yet(sock, wait: float) -> bool:
    readable, _, _ = select.select([sock], [], [], wait)
    return not readable


def test_third_request_waits_in_the_queue_when_both_threads_are_busy(server, raw):
    gate = Gate()
    h = server(gate.app, threads=2)
    a, b, c = raw(h), raw(h), raw(h)
    a.send(_get("/block"))
    b.send(_get("/block"))
    assert gate.wait_entered(2), "two requests should be running"
    c.send(_get("/queued"))
    assert wait_until(lambda: h.server.queue_depth == 1), f"queue_depth is {h.server.queue_depth}, expected 1"
    assert h.server.threads == 2
    assert h.call(lambda: h.server.in_flight) == 3
    assert _no_data_yet(c.sock, 0.1), "the queued request was answered while both threads were busy"

    gate.release.set()
    for client, body in ((a, b"/block done"), (b, b"/block done"), (c, b"/queued done")):
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, body)
    assert h.server.queue_depth == 0
    assert gate.max_running == 2
    assert wait_until(lambda: h.call(lambda: h.server.in_flight) == 0)


def test_a_hung_app_holds_one_thread_while_requests_flow_through_the_other(server, raw):
    gate = Gate()
    h = server(gate.app, threads=2)
    hung = raw(h)
    hung.send(_get("/hang"))
    try:
        assert gate.hung.wait(5.0)
        client = raw(h)
        for i in range(10):
            client.send(_get(f"/fast/{i}"))
            resp = client.read_response()
            assert (resp.status, resp.body) == (200, f"/fast/{i} done".encode())
        others = [raw(h) for _ in range(3)]
        for i, other in enumerate(others):
            other.send(_get(f"/other/{i}"))
        for i, other in enumerate(others):
            resp = other.read_response()
            assert (resp.status, resp.body) == (200, f"/other/{i} done".encode())
        assert h.server.threads <= 2
        assert gate.max_running == 2
        assert _no_data_yet(hung.sock, 0.0)
    finally:
        gate.unhang.set()
    resp = hung.read_response()
    assert (resp.status, resp.body) == (200, b"/hang done")


def test_a_burst_of_responses_longer_than_a_drain_is_answered_on_every_connection(server, raw):
    """Forty calls end at once: their responses reach the loop in one burst, which it drains in batches across loop
    iterations (``bridge.DRAIN_BATCH``). Every connection gets its own response, and stays usable."""
    n = 40
    assert n > 2 * DRAIN_BATCH
    gate = Gate()
    h = server(gate.app, threads=n)
    clients = [raw(h) for _ in range(n)]
    for i, c in enumerate(clients):
        c.send(_get(f"/block?{i}"))
    assert gate.wait_entered(n), f"only {gate.entered} of {n} calls started"
    gate.release.set()
    for c in clients:
        r = c.read_response()
        assert (r.status, r.body) == (200, b"/block done")
    for i, c in enumerate(clients):  # the connections' state is sound: a second request on each
        c.send(_get(f"/after/{i}"))
    for i, c in enumerate(clients):
        r = c.read_response()
        assert (r.status, r.body) == (200, f"/after/{i} done".encode())
