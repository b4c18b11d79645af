"""A bounded soak run: a few thousand requests from several client threads, mixing plain requests, keep-alive,
pipelining, uploads and downloads cut off half-way (some with a reset), malformed requests and heads left unfinished.
Every answer is checked as it comes. At the end, once the server has settled: no file descriptor leaked, the worker
threads never exceeded ``threads`` and all stopped after ``thread_idle_timeout``, and memory (VmRSS) stayed flat.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from ..helpers import RawClient
from . import ErrorLog, open_fds, read_rss, request, wait_until

THREADS = 4
CLIENTS = 4
TARGET = 5000  # requests in all
TIME_BUDGET = 10.0  # seconds of load at most
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 16
RSS_GROWTH_LIMIT = 40 * 1024 * 1024

MALFORMED = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + b"\x00" * 40,
    b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
]


class SoakApp:
    """``/small``: a short body; ``/echo``: the request body; ``/stream``: 1 MiB in 64 KiB chunks, chunked."""

    def __init__(self) -> None:
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/echo":
            stream = environ["wsgi.input"]
            parts = []
            while True:
                piece = stream.read(65536)  # an aborted upload raises OSError here: the server handles it
                if not piece:
                    break
                parts.append(piece)
            body = b"".join(parts)
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return self._chunks()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"small"]

    def _chunks(self) -> Iterator[bytes]:
        for i in range(STREAM_CHUNKS):
            yield bytes([i]) * STREAM_CHUNK


def _reset(sock: socket.socket) -> None:
    """Make the next close() send a reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class LoopLog(logging.Handler):
    """Collects WARNING and above from the ``asyncio`` logger while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> LoopLog:
        logging.getLogger("asyncio").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("asyncio").removeHandler(self)


class Load:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.lock = threading.Lock()
        self.requests = 0
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.deadline = 0.0

    def client(self) -> RawClient:
        return RawClient(self.host, self.port, timeout=5.0)

    # -- scenarios: each returns the number of requests it sent -------------------------------------------------------

    def normal(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            c.send(request("GET", "/small", [("Connection", "close")]))
            resp = c.read_response()
            assert (resp.status, resp.body, resp.header("Connection")) == (200, b"small", "close"), resp
            assert c.read_all() == b""
        finally:
            c.close()
        return 1

    def keep_alive(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            for _ in range(5):
                if rnd.random() < 0.5:
                    c.send(request("GET", "/small"))
                    assert c.read_response().body == b"small"
                else:
                    body = rnd.randbytes(rnd.randrange(1, 5000))
                    c.send(request("POST", "/echo", body=body))
                    assert c.read_response().body == body
        finally:
            c.close()
        return 5

    def pipelined(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            bodies = [rnd.randbytes(rnd.randrange(0, 2000)) for _ in range(5)]
            c.send(b"".join(request("POST", "/echo", [("Content-Length", str(len(b)))], b) for b in bodies))
            for body in bodies:
                resp = c.read_response()
                assert (resp.status, resp.body) == (200, body)
        finally:
            c.close()
        return 5

    def abort_mid_request(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            c.send(request("POST", "/echo", [("Content-Length", "100000")], rnd.randbytes(rnd.randrange(1, 20000))))
            if rnd.random() < 0.5:
                _reset(c.sock)
        finally:
            c.close()
        return 1

    def abort_mid_response(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            c.send(request("GET", "/stream"))
            head = c.read_head()
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head
            c.read_exactly(rnd.randrange(1, 200_000))
            if rnd.random() < 0.5:
                _reset(c.sock)
        finally:
            c.close()
        return 1

    def malformed(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            try:
                c.send(rnd.choice(MALFORMED))
            except (BrokenPipeError, ConnectionResetError):
                pass
            resp = c.read_response()
            assert resp.status == 400 and resp.header("Connection") == "close", resp
            assert c.is_closed(2)
        finally:
            c.close()
        return 1

    def unfinished_head(self, rnd: random.Random) -> int:
        c = self.client()
        try:
            data = request("GET", "/small")
            c.send(data[: rnd.randrange(1, len(data) - 1)])
        finally:
            c.close()
        return 1

    # -- driver -------------------------------------------------------------------------------------------------------

    def scenarios(self) -> list[tuple[Callable[[random.Random], int], int]]:
        return [
            (self.normal, 3),
            (self.keep_alive, 3),
            (self.pipelined, 3),
            (self.abort_mid_request, 2),
            (self.abort_mid_response, 1),
            (self.malformed, 2),
            (self.unfinished_head, 1),
        ]

    def run_each_once(self) -> None:
        rnd = random.Random(0)
        for scenario, _ in self.scenarios():
            scenario(rnd)

    def worker(self, seed: int) -> None:
        rnd = random.Random(seed)
        choices = self.scenarios()
        funcs = [f for f, _ in choices]
        weights = [w for _, w in choices]
        while True:
            with self.lock:
                if self.requests >= TARGET or self.errors or time.monotonic() > self.deadline:
                    return
            scenario = rnd.choices(funcs, weights)[0]
            try:
                n = scenario(rnd)
            except Exception as exc:
                with self.lock:
                    self.errors.append(f"{scenario.__name__}: {exc!r}")
                return
            with self.lock:
                self.requests += n
                self.counts[scenario.__name__] = self.counts.get(scenario.__name__, 0) + 1


@pytest.mark.slow
def test_soak_mixed_traffic_leaks_nothing(server):
    handle = server(
        SoakApp().app,
        threads=THREADS,
        thread_idle_timeout=0.5,
        timeout_keep_alive=2.0,
        timeout_request_header=2.0,
        timeout_request_body=2.0,
    )
    srv = handle.server
    load = Load(handle.host, handle.port)

    def settled() -> None:
        assert wait_until(lambda: srv.connections == 0, timeout=10), f"{srv.connections} connections left open"
        assert wait_until(lambda: srv.threads == 0, timeout=5), f"{srv.threads} worker threads still alive"

    # Warm up (every code path once, so lazily created objects exist), then take the baseline.
    load.run_each_once()
    settled()
    fds_before = open_fds()
    rss_before = read_rss()
    threads_before = threading.active_count()

    peak_threads = 0
    stop_sampling = threading.Event()

    def sample() -> None:
        nonlocal peak_threads
        while not stop_sampling.wait(0.01):
            peak_threads = max(peak_threads, srv.threads)

    sampler = threading.Thread(target=sample)
    loop_log = LoopLog()
    with ErrorLog() as errors, loop_log:
        sampler.start()
        load.deadline = time.monotonic() + TIME_BUDGET
        clients = [threading.Thread(target=load.worker, args=(seed,)) for seed in range(CLIENTS)]
        started = time.monotonic()
        for t in clients:
            t.start()
        for t in clients:
            t.join(TIME_BUDGET + 30)
        elapsed = time.monotonic() - started
        stop_sampling.set()
        sampler.join(5)
        settled()

    assert not load.errors, load.errors
    assert not any(t.is_alive() for t in clients)
    assert load.requests >= TARGET or elapsed >= TIME_BUDGET, (load.requests, elapsed)
    assert load.requests >= 1000, f"only {load.requests} requests in {elapsed:.1f}s: {load.counts}"
    assert set(load.counts) == {f.__name__ for f, _ in load.scenarios()}, load.counts

    # Clients going away and malformed requests are the clients' business: nothing at ERROR, and nothing from the
    # event loop's own logger (which complains when a server keeps writing to a connection already lost).
    assert errors.texts(logging.ERROR) == []
    assert loop_log.messages == []
    assert 1 <= peak_threads <= THREADS, f"{peak_threads} worker threads with threads={THREADS}"
    assert srv.queue_depth == 0
    assert handle.call(lambda: srv.in_flight) == 0
    assert open_fds() == fds_before, "file descriptors leaked"
    assert threading.active_count() == threads_before
    growth = read_rss() - rss_before
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.1f} MiB over {load.requests} requests"
