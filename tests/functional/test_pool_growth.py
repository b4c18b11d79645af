"""How the thread pool grows past its eager threads: only while jobs wait and the process has CPU to spare.

The growth check is driven by hand through a recording scheduler, and the process's CPU clock is replaced where the
test needs the CPU to look saturated, so each step is deterministic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from asyncwsgi.wsgi import pool as pool_module
from asyncwsgi.wsgi.pool import ThreadPool


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
