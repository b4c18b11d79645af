"""Slow and greedy clients through a real server: a request head dribbled byte by byte (408 at the
``timeout_request_header`` deadline, counted from the connection's start or from the first byte after an idle
keep-alive), many half-sent heads at once (slowloris), idle keep-alive connections closed after
``timeout_keep_alive``, a stalled upload (``timeout_request_body``: the app's read raises an ``OSError`` and the
connection closes), a client that never reads its response, and the load limits: ``limit_concurrency`` (503 with
``Retry-After``), ``limit_connections`` (new connections wait in the backlog), the thread-pool starvation warning and
``server.queue_depth``.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from . import (
    ErrorLog,
    Recorder,
    assert_refused,
    assert_served,
    get,
    no_data_within,
    request,
    send_while_refused,
    wait_until,
)

SLOW_HEAD = get("/slow", [(f"X-Pad-{i}", "p" * 20) for i in range(8)])  # ~280 bytes: 28 s at 10 bytes a second


def dribble_until_answered(client: Any, data: bytes, interval: float, limit: float) -> float:
    """Send ``data`` one byte every ``interval`` seconds until the server answers or closes (or ``limit`` seconds
    pass); returns the seconds from the first byte until the server's first byte or EOF."""
    first = time.monotonic()
    for i in range(len(data)):
        client.send(data[i : i + 1])
        readable, _, _ = select.select([client.sock], [], [], interval)
        if readable:
            return time.monotonic() - first
        if time.monotonic() - first > limit:
            break
    raise AssertionError(f"no answer within {limit}s of dribbling ({i + 1} bytes sent)")


# -- the request-head deadline ----------------------------------------------------------------------------------------


def test_head_dribbled_one_byte_every_100ms_is_cut_at_the_deadline_with_408(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.5)
    client = raw(handle)
    connected = time.monotonic()
    dribble_until_answered(client, SLOW_HEAD, 0.1, limit=5.0)
    elapsed = time.monotonic() - connected
    assert 0.4 <= elapsed <= 2.0, f"408 after {elapsed:.2f}s; the deadline is 0.5s"
    assert_refused(client, 408)
    assert app.calls == []
    assert handle.server.threads == 0, "a slow head must not hold a worker thread"
    assert_served(handle, raw)


def test_connection_that_sends_nothing_gets_408_at_the_deadline(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.5)
    client = raw(handle)
    connected = time.monotonic()
    assert_refused(client, 408)
    elapsed = time.monotonic() - connected
    assert 0.4 <= elapsed <= 2.0, f"408 after {elapsed:.2f}s; the deadline is 0.5s"
    assert app.calls == []


def test_complete_head_within_the_deadline_is_served(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.5)
    client = raw(handle)
    data = get("/quick")
    for piece in (data[:5], data[5:15]):  # three pieces, about 0.2s in all
        client.send(piece)
        assert no_data_within(client, 0.1)
    client.send(data[15:])
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"GET /quick\n")


def test_head_timer_restarts_at_the_first_byte_after_an_idle_keep_alive(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.5, timeout_keep_alive=5.0)
    client = raw(handle)
    client.send(get("/one"))
    assert client.read_response().body == b"GET /one\n"
    # Idle for longer than the head timeout: still open (the keep-alive timeout governs an idle connection).
    assert no_data_within(client, 0.8)
    # The second head arrives over ~0.3s: within 0.5s of its first byte, long after 0.5s from the first response.
    data = get("/two")
    for piece in (data[:4], data[4:12], data[12:20]):
        client.send(piece)
        assert no_data_within(client, 0.08)
    client.send(data[20:])
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"GET /two\n")
    assert app.paths == ["/one", "/two"]


def test_second_head_deadline_is_counted_from_its_first_byte(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.5, timeout_keep_alive=5.0)
    client = raw(handle)
    client.send(get("/one"))
    assert client.read_response().body == b"GET /one\n"
    assert no_data_within(client, 0.8)
    elapsed = dribble_until_answered(client, SLOW_HEAD, 0.1, limit=5.0)
    assert 0.4 <= elapsed <= 2.0, f"408 {elapsed:.2f}s after the first byte of the second head; deadline 0.5s"
    assert_refused(client, 408)
    assert app.paths == ["/one"]


def test_partial_head_is_not_cut_by_the_keep_alive_timeout(server, raw):
    # Once a head has begun the connection is not idle: the (longer) head timeout applies, not the keep-alive one.
    app = Recorder()
    handle = server(app, timeout_request_header=3.0, timeout_keep_alive=0.3)
    client = raw(handle)
    client.send(get("/one"))
    assert client.read_response().body == b"GET /one\n"
    data = get("/two")
    client.send(data[:10])
    assert no_data_within(client, 0.8)
    client.send(data[10:])
    assert client.read_response().body == b"GET /two\n"


def test_slowloris_many_half_sent_heads(server, raw):
    app = Recorder()
    handle = server(app, timeout_request_header=0.6)
    started = time.monotonic()
    slow = [raw(handle) for _ in range(50)]
    for c in slow:
        c.send(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    assert wait_until(lambda: handle.server.connections == 50)
    assert handle.server.threads == 0, "half-sent heads must not hold worker threads"
    # Served meanwhile, at once: half-sent heads block nobody.
    for i in range(5):
        assert_served(handle, raw, f"/meanwhile/{i}")
    for c in slow:
        assert_refused(c, 408)
    assert time.monotonic() - started < 3.0
    assert app.paths == [f"/meanwhile/{i}" for i in range(5)]
    assert wait_until(lambda: handle.server.connections == 0)


# -- idle keep-alive --------------------------------------------------------------------------------------------------


def test_idle_keep_alive_connection_closes_after_the_timeout_without_a_response(server, raw):
    app = Recorder()
    handle = server(app, timeout_keep_alive=0.5)
    client = raw(handle)
    client.send(get("/one"))
    assert client.read_response().body == b"GET /one\n"
    idle_from = time.monotonic()
    assert client.read_all() == b"", "an idle connection is closed without a response"
    idle = time.monotonic() - idle_from
    assert 0.45 <= idle <= 2.0, f"closed after {idle:.2f}s idle; the timeout is 0.5s"
    assert handle.server.connections == 0
    assert_served(handle, raw)


# -- stalled uploads --------------------------------------------------------------------------------------------------


class StalledUpload:
    """Reads the body with ``read(n)``; records what the read raised and how long it blocked. With ``answer``, the
    app catches the error and answers 400 itself; otherwise it lets the error propagate."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.error: BaseException | None = None
        self.blocked = 0.0
        self.done = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        if environ["PATH_INFO"] != "/upload":
            path = environ["PATH_INFO"].encode()
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(path)))])
            return [path]
        got = b""
        try:
            while True:
                t0 = time.monotonic()
                try:
                    piece = stream.read(5)
                finally:
                    self.blocked = time.monotonic() - t0
                if not piece:
                    break
                got += piece
        except OSError as exc:
            self.error = exc
            if not self.answer:
                raise
            body = b"upload timed out after %d bytes" % len(got)
            start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        finally:
            self.done.set()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(got)))])
        return [got]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_stalled_upload_makes_the_apps_read_raise_and_the_connection_close(server, raw, framing):
    probe = StalledUpload(answer=False)
    handle = server(probe.app, timeout_request_body=0.3, threads=1)
    client = raw(handle)
    if framing == "chunked":
        client.send(request("POST", "/upload", [("Transfer-Encoding", "chunked")], b"a\r\n0123456789\r\n"))
    else:
        client.send(request("POST", "/upload", [("Content-Length", "100")], b"0123456789"))
    assert probe.done.wait(5)
    assert isinstance(probe.error, OSError), probe.error
    assert 0.25 <= probe.blocked <= 2.0, f"read() blocked {probe.blocked:.2f}s; the body timeout is 0.3s"
    assert client.read_all() == b"", "the app raised: no response, the connection closes"
    assert_served(handle, raw, "/after")  # the only worker thread is back in the pool


def test_stalled_upload_answered_by_the_app_then_closed(server, raw):
    probe = StalledUpload(answer=True)
    handle = server(probe.app, timeout_request_body=0.3, threads=1)
    client = raw(handle)
    client.send(request("POST", "/upload", [("Content-Length", "100")], b"0123456789"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (400, b"upload timed out after 10 bytes")
    assert isinstance(probe.error, OSError)
    assert client.is_closed(3), "the rest of the body will never come: the connection cannot be reused"
    assert_served(handle, raw, "/after")


def test_response_after_a_stalled_upload_says_connection_close(server, raw):
    # The server knows the connection will close (the body is incomplete) before the app's response head goes out,
    # so the head should say so (RFC 9112 section 9.6) rather than let the client think it may reuse it.
    probe = StalledUpload(answer=True)
    handle = server(probe.app, timeout_request_body=0.3)
    client = raw(handle)
    client.send(request("POST", "/upload", [("Content-Length", "100")], b"0123456789"))
    resp = client.read_response()
    assert resp.status == 400
    assert client.is_closed(3)
    assert resp.header("Connection") == "close", resp.headers


# -- a client that never reads ----------------------------------------------------------------------------------------


class EndlessStream:
    """``/stream``: 64 KiB chunks without Content-Length until the client leaves (bounded by ``cap``); ``produced``
    counts them (under ``cond``) and ``closed`` is set when the server closes the iterable. Anything else: its path."""

    def __init__(self, cap: int = 2000) -> None:
        self.cap = cap
        self.produced = 0
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path != "/stream":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(path)))])
            return [path.encode()]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        try:
            for _ in range(self.cap):
                with self.cond:
                    self.produced += 1
                    self.cond.notify_all()
                yield b"s" * 65536
        finally:
            self.closed.set()

    def wait_stalled(self, quiet: float = 0.3, limit: float = 10.0) -> int:
        """Block until ``produced`` has not grown for ``quiet`` seconds (bounded by ``limit``); return it."""
        deadline = time.monotonic() + limit
        with self.cond:
            while time.monotonic() < deadline:
                before = self.produced
                if before and not self.cond.wait_for(lambda before=before: self.produced != before, timeout=quiet):
                    return self.produced
                if not before:
                    self.cond.wait_for(lambda: self.produced > 0, timeout=limit)
        raise AssertionError(f"the stream never stalled within {limit}s ({self.produced} chunks)")


def test_client_that_never_reads_its_response_does_not_stop_the_others(server, raw):
    stream = EndlessStream()
    handle = server(stream.app, threads=2)
    stuck = socket.create_connection((handle.host, handle.port))
    try:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stuck.sendall(get("/stream"))
        produced = stream.wait_stalled()  # backpressure: the app is blocked in the server, holding one thread
        assert produced < 100, f"{produced} chunks of 64 KiB held for a client that reads nothing"
        others = [raw(handle) for _ in range(3)]
        for i in range(5):
            for n, other in enumerate(others):
                other.send(get(f"/other/{n}/{i}"))
            for n, other in enumerate(others):
                resp = other.read_response()
                assert (resp.status, resp.body) == (200, f"/other/{n}/{i}".encode())
        assert stream.produced == produced, "the stuck stream moved without its client reading"
        assert not stream.closed.is_set()
        assert handle.server.threads == 2
    finally:
        stuck.close()
    # Once the client leaves, the stuck iteration stops, close() is called, and the thread serves again.
    assert stream.closed.wait(5)
    client = raw(handle)
    for i in range(3):  # two at once would need both threads
        client.send(get(f"/after/{i}"))
    for i in range(3):
        assert client.read_response().body == f"/after/{i}".encode()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_clients_resetting_mid_download_leave_no_loop_warnings(server, raw, loop):
    # A client that resets the connection in the middle of a streamed response: the app's iterable is closed, the
    # server goes on, and it does not keep writing to the dead transport (the stdlib loop logs "socket.send() raised
    # exception." on the asyncio logger for every write to a lost connection past the fifth).
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    stream = EndlessStream(cap=64)
    handle = server(stream.app, loop=loop)
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    collect = Collect(logging.WARNING)
    logging.getLogger("asyncio").addHandler(collect)
    try:
        for _ in range(5):
            stream.closed.clear()
            client = raw(handle)
            client.send(get("/stream"))
            assert client.read_head().startswith(b"HTTP/1.1 200 OK\r\n")
            client.read_exactly(1000)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            assert stream.closed.wait(5), "the iterable of a response whose client left must be closed"
        assert_served(handle, raw, "/after")
    finally:
        logging.getLogger("asyncio").removeHandler(collect)
    assert records == []


def test_pipelining_flood_is_answered_in_order_with_default_limits(server, raw):
    # A client pipelines a large number of small requests without waiting. The server reads them as fast as it
    # can answer (reading pauses while 16 wait), in reads of whatever size the kernel hands over: every one of
    # them is a valid request and must get its 200.
    count = 20_000

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = server(validator(app))
    client = raw(handle, timeout=10.0)
    one = get("/p")
    last = request("GET", "/p", [("Connection", "close")])
    sender = threading.Thread(target=lambda: send_while_refused(client, one * (count - 1) + last))
    sender.start()
    chunks = []
    try:
        while True:
            chunk = client.file.read1(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # refused with our requests still unread: what came before is checked below
    finally:
        sender.join(10)
    data = b"".join(chunks)
    errors = re.findall(rb"HTTP/1\.1 [45][0-9][0-9] [^\r]*\r\n(?:.*\r\n)*?\r\n[^\n]*\n", data)
    assert errors == [], f"{data.count(b'HTTP/1.1 200 OK')} answered, then {errors[:1]}"
    assert data.count(b"HTTP/1.1 200 OK\r\n") == count


# -- load limits ------------------------------------------------------------------------------------------------------


class Blocker:
    """``/block`` waits (bounded) for ``release``; everything else answers at once. Records every path it is
    called with."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.paths: list[str] = []
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        self.paths.append(path)
        if path == "/block":
            self.entered.release()
            self.release.wait(10)
        body = f"{path} done".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def test_limit_concurrency_answers_503_with_retry_after(server, raw):
    blocker = Blocker()
    handle = server(blocker.app, limit_concurrency=1, threads=4)
    with ErrorLog() as log:
        busy = raw(handle)
        busy.send(get("/block"))
        try:
            assert blocker.entered.acquire(timeout=5)
            shed = raw(handle)
            shed.send(get("/shed"))
            resp = assert_refused(shed, 503)
            assert resp.header("Retry-After") == "1"
            assert blocker.paths == ["/block"]
            assert log.wait_for("concurrency limit reached")
        finally:
            blocker.release.set()
    assert busy.read_response().body == b"/block done"
    assert wait_until(lambda: handle.call(lambda: handle.server.in_flight) == 0)
    client = raw(handle)
    client.send(get("/after"))
    assert client.read_response().body == b"/after done"


def test_limit_connections_keeps_new_connections_waiting_in_the_backlog(server, raw):
    blocker = Blocker()
    handle = server(blocker.app, limit_connections=1)
    first = raw(handle)
    first.send(b"GET /first HTTP/1.1\r\nHost: test\r\nConnection: close\r\n")  # head not finished yet
    assert wait_until(lambda: handle.server.connections == 1)
    waiting = raw(handle)  # the kernel completes the handshake; the server does not accept it yet
    waiting.send(get("/second"))
    assert no_data_within(waiting, 0.3), "the second connection was served beyond limit_connections"
    assert handle.server.connections == 1
    assert blocker.paths == []
    first.send(b"\r\n")  # the first request ends, is answered, and its connection closes
    assert first.read_response().body == b"/first done"
    assert first.is_closed(3)
    resp = waiting.read_response()
    assert (resp.status, resp.body) == (200, b"/second done")
    assert blocker.paths == ["/first", "/second"]


def test_starved_pool_reports_its_queue_and_warns(server, raw):
    blocker = Blocker()
    handle = server(blocker.app, threads=1)
    with ErrorLog() as log:
        a, b = raw(handle), raw(handle)
        a.send(get("/block"))
        try:
            assert blocker.entered.acquire(timeout=5)
            b.send(get("/queued"))
            assert wait_until(lambda: handle.server.queue_depth == 1), handle.server.queue_depth
            assert handle.server.threads == 1
            assert no_data_within(b, 0.1)
            warnings = [m for m in log.messages(logging.WARNING) if "worker threads are busy" in m]
            assert warnings == ["all 1 worker threads are busy; 1 request(s) waiting for a thread (raise --threads?)"]
        finally:
            blocker.release.set()
    assert a.read_response().body == b"/block done"
    assert b.read_response().body == b"/queued done"
    assert handle.server.queue_depth == 0


def test_a_client_that_stops_reading_is_dropped_after_timeout_write(server, raw) -> None:  # type: ignore[no-untyped-def]
    """--timeout-write: once the client has taken none of its response for that long, the connection is dropped and
    the worker thread goes back to the pool (the app's iterable is closed), instead of waiting forever."""
    closed = threading.Event()

    class Endless:
        def __iter__(self):  # type: ignore[no-untyped-def]
            for _ in range(100_000):  # bounded: 6 GiB, far more than any buffer
                yield b"x" * 65536

        def close(self) -> None:
            closed.set()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    s = server(app, timeout_write=0.5)
    c = raw(s)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    started = time.monotonic()
    assert closed.wait(10), "the stalled response was never cut"
    assert time.monotonic() - started < 5
    other = raw(s)
    other.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert other.read_head().startswith(b"HTTP/1.1 200 ")
