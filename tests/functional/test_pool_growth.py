"""How the thread pool grows past its eager threads: only while jobs wait and the process has CPU to spare.

The growth check is driven by hand through a recording scheduler, and the process's CPU clock is replaced where the
test needs the CPU to look saturated, so each step is deterministic."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from wsgiref.validate import validator

import pytest

from asyncwsgi.wsgi import pool as pool_module
from asyncwsgi.wsgi.pool import ThreadPool

from ..helpers import wait_until


class ManualScheduler:
    """Stands in for ``loop.call_later``: records what the pool asks to run, runs it when the test says."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> None:
        assert delay == pool_module.GROW_INTERVAL
        self.pending.append(fn)

    def run_pending(self) -> int:
        todo, self.pending = self.pending, []
        for fn in todo:
            fn()
        return len(todo)


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _blocking_job(gate: threading.Event, started: threading.Semaphore) -> Callable[[object], None]:
    def job(_: object) -> None:
        started.release()
        gate.wait(10)

    return job


def _wait_started(started: threading.Semaphore, n: int) -> None:
    for _ in range(n):
        assert started.acquire(timeout=5), "a job did not start"


def test_eager_threads_start_at_once_and_the_rest_wait_for_the_check(gate: threading.Event) -> None:
    sched = ManualScheduler()
    pool = ThreadPool(64, eager_threads=2, schedule=sched)
    started = threading.Semaphore(0)
    job = _blocking_job(gate, started)
    for _ in range(10):
        pool.submit(job, None)
    _wait_started(started, 2)
    assert pool.threads == 2
    assert pool.queued == 8
    assert len(sched.pending) == 1  # one growth check scheduled, not one per waiting job


def test_jobs_that_wait_on_io_make_the_pool_double_per_check(gate: threading.Event) -> None:
    sched = ManualScheduler()
    pool = ThreadPool(64, eager_threads=2, schedule=sched)
    started = threading.Semaphore(0)
    job = _blocking_job(gate, started)
    for _ in range(10):
        pool.submit(job, None)
    _wait_started(started, 2)
    time.sleep(0.02)  # let wall time pass while the blocked jobs use no CPU: the check must see room
    sched.run_pending()
    _wait_started(started, 2)
    assert pool.threads == 4
    time.sleep(0.02)
    sched.run_pending()
    _wait_started(started, 4)
    assert pool.threads == 8
    time.sleep(0.02)
    sched.run_pending()  # 2 jobs left queued: grows by 2, not by 8
    _wait_started(started, 2)
    assert pool.threads == 10
    assert pool.queued == 0
    sched.run_pending()
    assert sched.pending == []  # nothing waits: checks stop


def test_a_saturated_cpu_stops_growth(gate: threading.Event, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = ManualScheduler()
    pool = ThreadPool(64, eager_threads=2, schedule=sched)
    started = threading.Semaphore(0)
    job = _blocking_job(gate, started)
    for _ in range(10):
        pool.submit(job, None)
    _wait_started(started, 2)
    # The process clock advancing as fast as the wall clock: one full CPU in use.
    monkeypatch.setattr(pool_module.time, "process_time", time.monotonic)
    time.sleep(0.02)
    sched.run_pending()
    assert pool.threads == 2
    assert pool.queued == 8
    assert len(sched.pending) == 1  # still checking, in case the CPU frees up


def test_a_job_taken_from_the_queue_leaves_no_idle_thread_behind_it() -> None:
    """A thread that finishes its job and takes a queued one is busy, not idle: the next job must not count on it.
    (It did: the thread said it was idle, then took the queued job; the next job took that word, started no thread
    and scheduled no growth, and waited in the queue for a job to end.)"""
    sched = ManualScheduler()
    pool = ThreadPool(64, eager_threads=2, schedule=sched)
    gates = [threading.Event() for _ in range(4)]
    started = threading.Semaphore(0)
    try:
        for g in gates[:3]:  # a and b run on the two eager threads, c waits
            pool.submit(_blocking_job(g, started), None)
        _wait_started(started, 2)
        gates[0].set()  # a ends: its thread takes c
        _wait_started(started, 1)
        assert sched.run_pending() == 1  # the growth check scheduled for c: nothing waits now, checks stop
        assert sched.pending == []
        assert pool.threads == 2
        pool.submit(_blocking_job(gates[3], started), None)  # d: both threads are busy (b, c)
        assert len(sched.pending) == 1, "d counted on an idle thread that is running c"
        time.sleep(0.02)  # wall time passes with the jobs blocked: the check sees room for a thread
        sched.run_pending()
        _wait_started(started, 1)
        assert pool.threads == 3
    finally:
        for g in gates:
            g.set()


def test_growth_never_exceeds_max_threads(gate: threading.Event) -> None:
    sched = ManualScheduler()
    pool = ThreadPool(3, eager_threads=2, schedule=sched)
    started = threading.Semaphore(0)
    job = _blocking_job(gate, started)
    for _ in range(10):
        pool.submit(job, None)
    _wait_started(started, 2)
    for _ in range(3):
        time.sleep(0.02)
        sched.run_pending()
    _wait_started(started, 1)
    assert pool.threads == 3


def test_an_io_bound_app_gets_threads_through_the_server(server, raw) -> None:  # type: ignore[no-untyped-def]
    """Through a real server: requests that each wait 200 ms on a gate are all in the app at once, although only a
    few threads start eagerly."""
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        inside.release()
        gate.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    s = server(app)
    clients = [raw(s) for _ in range(20)]
    try:
        for c in clients:
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(20):
            assert inside.acquire(timeout=5), "requests stayed queued: the pool did not grow"
        assert s.server.threads >= 20
    finally:
        gate.set()
    for c in clients:
        assert c.read_response().body == b"ok"


class Deferred:
    """Stands in for ``loop.call_soon``: what the pool defers runs when the test says the iteration ended."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def end_iteration(self) -> None:
        todo, self.pending = self.pending, []
        for fn in todo:
            fn()


def _counting_job(done: threading.Semaphore) -> Callable[[object], None]:
    def job(_: object) -> None:
        done.release()

    return job


@pytest.fixture
def sample_every_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SAMPLE_INTERVAL", 0.0)


_CPU_SECONDS = itertools.count(0.0, 1000.0)


def _saturated() -> float:
    """A process clock that gains 1,000 s at every reading: saturated between any two samples, however the wall clock
    reads (a clock derived from the wall clock is not: a test thread preempted between the pool's two clock reads
    made one sample look idle on a loaded machine)."""
    return next(_CPU_SECONDS)


def _batching_pool(monkeypatch: pytest.MonkeyPatch, clock: Callable[[], float]) -> tuple[ThreadPool, Deferred]:
    """A pool that samples the CPU through ``clock`` and holds jobs for ``Deferred``'s end of iteration."""
    monkeypatch.setattr(pool_module.time, "process_time", clock)
    deferred = Deferred()
    return ThreadPool(8, eager_threads=4, schedule=ManualScheduler(), defer=deferred), deferred


def test_a_saturated_cpu_batches_jobs_until_the_loop_iteration_ends(
    monkeypatch: pytest.MonkeyPatch, sample_every_submit: None
) -> None:
    pool, deferred = _batching_pool(monkeypatch, _saturated)
    done = threading.Semaphore(0)
    job = _counting_job(done)
    try:
        for _ in range(5):
            pool.submit(job, None)
        assert pool.queued == 5
        assert pool.threads == 0  # nothing handed over, no thread woken or started
        assert len(deferred.pending) == 1  # one hand-over for the whole iteration
        deferred.end_iteration()
        for _ in range(5):
            assert done.acquire(timeout=5), "a held job never ran"
    finally:
        pool.shutdown()


def test_a_cpu_with_room_hands_each_job_over_at_once(
    monkeypatch: pytest.MonkeyPatch, sample_every_submit: None
) -> None:
    pool, deferred = _batching_pool(monkeypatch, lambda: 0.0)  # no CPU used at all
    done = threading.Semaphore(0)
    try:
        for _ in range(3):
            pool.submit(_counting_job(done), None)
        for _ in range(3):
            assert done.acquire(timeout=5), "a job waited although the CPU had room"
        assert deferred.pending == []
    finally:
        pool.shutdown()


def test_jobs_held_when_the_pool_shuts_down_are_dropped(
    monkeypatch: pytest.MonkeyPatch, sample_every_submit: None
) -> None:
    pool, deferred = _batching_pool(monkeypatch, _saturated)
    ran = threading.Event()
    pool.submit(lambda _: ran.set(), None)
    pool.shutdown()
    deferred.end_iteration()  # must neither raise nor run the job
    assert pool.threads == 0
    assert not ran.is_set()


def test_jobs_flushed_before_the_pool_shuts_down_still_run(
    monkeypatch: pytest.MonkeyPatch, sample_every_submit: None
) -> None:
    """What to_asgi's close() does: its requests still wait for their held jobs, so they are handed over first."""
    pool, deferred = _batching_pool(monkeypatch, _saturated)
    done = threading.Semaphore(0)
    job = _counting_job(done)
    for _ in range(3):
        pool.submit(job, None)
    assert pool.threads == 0 and pool.queued == 3  # held
    pool.flush()
    pool.shutdown()
    deferred.end_iteration()  # the scheduled hand-over finds nothing left to hand over
    for _ in range(3):
        assert done.acquire(timeout=5), "a flushed job never ran"
    assert wait_until(lambda: pool.threads == 0, timeout=5.0), "threads left after shutdown"
    pool.flush()  # after shutdown: nothing, and no error


def test_batched_hand_over_serves_keep_alive_and_pipelined_clients(  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, sample_every_submit: None, server, raw
) -> None:
    """Through a real server, with the CPU reading as saturated so that every request goes through the batch."""
    monkeypatch.setattr(pool_module.time, "process_time", _saturated)

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    s = server(validator(app))
    clients = [raw(s) for _ in range(16)]
    for i, c in enumerate(clients):
        c.send(b"".join(b"GET /%d/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (i, j) for j in range(3)))
    for round_ in range(2):
        for i, c in enumerate(clients):
            for j in range(3):
                assert c.read_response().body == b"/%d/%d" % (i, j + 3 * round_)
            if round_ == 0:
                c.send(b"".join(b"GET /%d/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (i, j) for j in range(3, 6)))
