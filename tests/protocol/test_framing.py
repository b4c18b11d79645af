"""HTTP/1.1 framing on a real server, over raw sockets: pipelining, chunked request and response bodies,
close-delimited HTTP/1.0 responses, computed Content-Length, ``Expect: 100-continue``, HEAD, 204/304, keep-alive and
``Connection: close`` both ways, Date/Server headers, limits (414/431), malformed requests (400), the keep-alive
timeout, and request bodies the app leaves unread.
"""

from __future__ import annotations

import email.utils
import gc
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from asyncwsgi.protocol import writer
from asyncwsgi.wsgi.call import WSGICall

from ..apps.basic import echo, hello
from ..helpers import RawClient, wait_until

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT\Z"
)


# -- helpers -----------------------------------------------------------------------------------------------------------


def get(path: str = "/", version: str = "1.1", headers: str = "") -> bytes:
    host = "Host: test\r\n" if version == "1.1" else ""
    return f"GET {path} HTTP/{version}\r\n{host}{headers}\r\n".encode("latin-1")


def parse_head(raw_head: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """(status line, [(name, value)]) of a raw response head."""
    lines = raw_head.split(b"\r\n")
    assert lines[-2:] == [b"", b""], raw_head
    fields = []
    for line in lines[1:-2]:
        name, sep, value = line.partition(b":")
        assert sep, line
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return lines[0], fields


def field(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in fields if k.lower() == name.lower()]


def no_data_within(client: RawClient, wait: float) -> bool:
    """True if no byte arrives within ``wait`` seconds, counting bytes already read ahead into the client's buffer."""
    client.sock.settimeout(0.0)  # non-blocking: peek returns what is buffered or readable now, else b""
    try:
        if client.file.peek(1):
            return False
    finally:
        client.sock.settimeout(client.timeout)
    readable, _, _ = select.select([client.sock], [], [], wait)
    return not readable


def send_while_refused(client: RawClient, data: bytes) -> None:
    """Send ``data`` where the server may answer and close before it has read it all (a refused request)."""
    try:
        client.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def check_answered(client: RawClient, path: str = "/again") -> None:
    """The connection is still usable: a further request on it gets its own answer."""
    client.send(get(path))
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == path.encode()


def _path_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


path_app = validator(_path_app)


class CallLog:
    """Wraps an app; records each call's PATH_INFO (thread-safe) so tests can assert the app was (not) called."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._lock:
            self.paths.append(environ["PATH_INFO"])
        return self._app(environ, start_response)


# -- pipelining --------------------------------------------------------------------------------------------------------


class ConcurrencyRecorder:
    """An app that records how many of its calls overlap, from the call until its iterable is closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.order: list[str] = []

    def _enter(self, path: str) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.order.append(path)

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        self._enter(path)
        try:
            time.sleep(0.05)  # slow work: a second call started meanwhile would overlap this one
            data = path.encode()
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
        except BaseException:
            self._leave()
            raise
        return self._body(data)

    def _body(self, data: bytes) -> Iterator[bytes]:
        try:
            time.sleep(0.05)
            yield data
        finally:
            self._leave()


def test_pipelined_requests_answered_in_order_one_call_at_a_time(server, raw):
    rec = ConcurrencyRecorder()
    handle = server(validator(rec), threads=8)
    client = raw(handle)
    client.send(get("/first") + get("/second") + get("/third"))
    bodies = [client.read_response().body for _ in range(3)]
    assert bodies == [b"/first", b"/second", b"/third"]
    assert rec.order == ["/first", "/second", "/third"]
    assert rec.max_active == 1, "pipelined requests on one connection must not run concurrently"
    check_answered(client, "/fourth")


@pytest.mark.parametrize("when", ["pipelined", "after-the-response"])
def test_next_request_waits_for_the_previous_iterable_to_close(server, raw, when):
    """A one-chunk response with Content-Length goes out as soon as its chunk is produced, before the app's
    iterable is exhausted and closed; the next request on the connection, pipelined or sent once that response
    arrived, still starts only once that close() returned (a framework's teardown runs there)."""
    events: list[str] = []
    closing = threading.Event()
    release = threading.Event()
    second_entered = threading.Event()

    def body(path: str) -> Iterator[bytes]:
        try:
            yield path.encode()
        finally:
            if path == "/first":
                closing.set()
                release.wait(5.0)
            events.append(f"closed {path}")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        events.append(f"enter {path}")
        if path == "/second":
            second_entered.set()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(path)))])
        return body(path)

    client = raw(server(validator(app), threads=4))
    client.send(get("/first") + get("/second") if when == "pipelined" else get("/first"))
    assert client.read_response().body == b"/first"  # out before /first's iterable is closed
    assert closing.wait(5.0)
    if when != "pipelined":
        client.send(get("/second"))
    try:
        assert not second_entered.wait(0.3), "/second started while /first's iterable was still open"
    finally:
        release.set()
    assert client.read_response().body == b"/second"
    assert wait_until(lambda: len(events) == 4)  # /second's response, too, may arrive before its close() ran
    assert events == ["enter /first", "closed /first", "enter /second", "closed /second"]


def test_idle_connections_keep_nothing_of_a_response_that_ended_early(server, raw):
    """Keep-alive connections left idle after a one-chunk response (sent before its iterable was closed) hold no
    part of that request: thousands of idle connections must stay small."""
    closed = threading.Semaphore(0)

    def body() -> Iterator[bytes]:
        try:
            yield b"done"
        finally:
            closed.release()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return body()

    handle = server(app)
    clients = [raw(handle) for _ in range(3)]
    for client in clients:
        client.send(get("/"))
        assert client.read_response().body == b"done"
    for _ in clients:
        assert closed.acquire(timeout=5.0)

    def calls_alive() -> list[WSGICall]:
        return [o for o in gc.get_objects() if type(o) is WSGICall and o.conn._server is handle.server]

    assert wait_until(lambda: not calls_alive()), f"{len(calls_alive())} calls kept by idle connections"
    clients[0].send(get("/again"))  # and the connection is still usable
    assert clients[0].read_response().body == b"done"


def test_long_pipeline_answered_in_order(server, raw):
    # More requests than the server queues per connection before it pauses reading.
    handle = server(path_app)
    client = raw(handle)
    paths = [f"/r{i}" for i in range(40)]
    client.send(b"".join(get(p) for p in paths))
    assert [client.read_response().body for _ in paths] == [p.encode() for p in paths]


def test_pipelined_requests_with_bodies(server, raw):
    handle = server(echo, threads=4)
    client = raw(handle)
    client.send(
        b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /d HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    )
    got = []
    for _ in range(4):
        resp = client.read_response()
        got.append((resp.status, resp.header("X-Method"), resp.header("X-Path"), resp.body))
    assert got == [
        (200, "POST", "/a", b"hello"),
        (200, "PUT", "/b", b"abcde"),
        (200, "GET", "/c", b""),
        (200, "POST", "/d", b""),
    ]


# -- chunked request bodies --------------------------------------------------------------------------------------------


def test_chunked_request_body_echoed(server, raw):
    handle = server(echo)
    client = raw(handle)
    client.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name=value\r\nhello\r\n1\r\n \r\nA;quoted="a b"\r\n0123456789\r\n0\r\nX-Trailer: ignored\r\n\r\n'
    )
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"hello 0123456789"
    assert resp.header("Content-Length") == "16"
    client.send(get("/again"))
    assert client.read_response().header("X-Path") == "/again"


class StagedReader:
    """Reads the body in the given sizes, signalling after each read; then reads to EOF and echoes the pieces."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.stages = [threading.Event() for _ in sizes]
        self.reads: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        for size, stage in zip(self.sizes, self.stages, strict=True):
            self.reads.append(stream.read(size))
            stage.set()
        while True:
            rest = stream.read(1024)
            if not rest:
                break
            self.reads.append(rest)
        body = b"|".join(self.reads)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def test_chunked_request_body_split_across_sends(server, raw):
    app = StagedReader([3, 4])
    handle = server(validator(app))
    client = raw(handle)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    client.send(b"c\r")
    client.send(b"\n")
    assert app.stages[0].wait(5), "the app did not get the first chunk"
    client.send(b"4;ext")
    client.send(b"=v\r\nde")
    client.send(b"fg\r\n")
    assert app.stages[1].wait(5), "the app did not get the second chunk"
    client.send(b"2\r\nhi\r\n0")
    client.send(b"\r\n")
    client.send(b"\r\n")
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"abc|defg|hi"
    client.send(get("/x"))
    assert client.read_response().status == 200


# -- response framing --------------------------------------------------------------------------------------------------


def streaming_app(chunks: list[bytes], headers: list[tuple[str, str]] | None = None) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), *(headers or [])])
        yield from chunks

    return validator(app)


def test_streamed_response_is_chunked_on_http11(server, raw):
    handle = server(streaming_app([b"hello", b"", b"world!", b"x" * 300]))
    client = raw(handle)
    client.send(get("/stream"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Transfer-Encoding") == ["chunked"]
    assert field(fields, "Content-Length") == []
    assert field(fields, "Connection") == []
    expected = b"5\r\nhello\r\n6\r\nworld!\r\n12c\r\n" + b"x" * 300 + b"\r\n0\r\n\r\n"
    assert client.read_exactly(len(expected)) == expected
    client.send(get("/next"))
    assert client.read_response().body == b"hello" + b"world!" + b"x" * 300


def test_streamed_response_with_a_large_first_chunk(server, raw):
    big = bytes(range(256)) * 100  # 25600 bytes: head and first chunk go out as separate buffers
    handle = server(streaming_app([big, b"tail"]))
    client = raw(handle)
    client.send(get("/"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Transfer-Encoding") == ["chunked"]
    expected = b"6400\r\n" + big + b"\r\n4\r\ntail\r\n0\r\n\r\n"
    assert client.read_exactly(len(expected)) == expected
    client.send(get("/"))
    assert client.read_response().body == big + b"tail"


def test_bytes_beyond_the_apps_content_length_are_dropped(server, raw):
    # Not validated: the app deliberately sends more than it declared (PEP 3333: the server must not transmit more).
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        yield b"hel"
        yield b"lo, and more"
        yield b"even more"

    handle = server(app)
    client = raw(handle)
    client.send(get("/") + get("/"))
    for _ in range(2):
        resp = client.read_response()
        assert (resp.status, resp.body, resp.header("Content-Length")) == (200, b"hello", "5")


def test_short_body_closes_the_connection(server, raw):
    # The app declares more than it sends: the only honest signal left is to close after what was sent.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        return [b"short"]

    log = CallLog(app)
    handle = server(log)
    client = raw(handle)
    client.send(get("/a") + get("/b"))
    raw_head = client.read_head()
    assert parse_head(raw_head)[0] == b"HTTP/1.1 200 OK"
    assert client.read_all() == b"short"
    assert log.paths == ["/a"]


def test_streamed_response_with_app_content_length_is_not_chunked(server, raw):
    handle = server(streaming_app([b"hello", b" ", b"world"], [("Content-Length", "11")]))
    client = raw(handle)
    client.send(get("/"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Content-Length") == ["11"]
    assert field(fields, "Transfer-Encoding") == []
    assert client.read_exactly(11) == b"hello world"
    client.send(get("/"))
    assert client.read_response().body == b"hello world"


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "keep-alive-asked"])
def test_http10_streamed_response_is_close_delimited(server, raw, keep_alive):
    handle = server(streaming_app([b"hello", b"", b"world!"]))
    client = raw(handle)
    client.send(get("/", "1.0", "Connection: keep-alive\r\n" if keep_alive else ""))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Transfer-Encoding") == []
    assert field(fields, "Content-Length") == []
    assert field(fields, "Connection") == ["close"]
    assert client.read_all() == b"helloworld!"  # ends when the server closes


@pytest.mark.parametrize(
    "body",
    [[b"ab", b"cd"], [b"single"], [b"", b"x", b""], [], [b""]],
    ids=["two", "one", "with-empties", "empty-list", "empty-bytes"],
)
def test_list_body_gets_content_length(server, raw, body):
    # Not wrapped in the validator: it hides the list behind an iterator, and the list is the point here.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    handle = server(app)
    client = raw(handle)
    client.send(get("/") + get("/"))
    expected = b"".join(body)
    for _ in range(2):
        status, fields = parse_head(client.read_head())
        assert status == b"HTTP/1.1 200 OK"
        assert field(fields, "Content-Length") == [str(len(expected))]
        assert field(fields, "Transfer-Encoding") == []
        assert client.read_exactly(len(expected)) == expected


def test_empty_streamed_response_gets_content_length_zero(server, raw):
    handle = server(streaming_app([]))
    client = raw(handle)
    client.send(get("/") + get("/"))
    for _ in range(2):
        status, fields = parse_head(client.read_head())
        assert status == b"HTTP/1.1 200 OK"
        assert field(fields, "Content-Length") == ["0"]
        assert field(fields, "Transfer-Encoding") == []


def test_http10_keep_alive_with_content_length_from_a_stream(server, raw):
    handle = server(streaming_app([b"abc", b"def"], [("Content-Length", "6")]))
    client = raw(handle)
    for _ in range(2):
        client.send(get("/", "1.0", "Connection: keep-alive\r\n"))
        resp = client.read_response()
        assert (resp.body, resp.header("Connection"), resp.header("Transfer-Encoding")) == (
            b"abcdef",
            "keep-alive",
            None,
        )


# -- Expect: 100-continue ----------------------------------------------------------------------------------------------


def test_expect_continue_sent_when_the_app_reads(server, raw):
    called = threading.Event()
    go = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        called.set()
        go.wait(5)
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    handle = server(validator(app))
    client = raw(handle)
    client.send(b"PUT /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
    assert called.wait(5)
    assert no_data_within(client, 0.3), "100 Continue sent before the app read the body"
    go.set()
    assert client.read_exactly(len(CONTINUE)) == CONTINUE
    client.send(b"hello world")
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"hello world"
    assert resp.header("Connection") is None
    client.send(b"PUT /g HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert client.read_exactly(len(CONTINUE)) == CONTINUE  # go is set: the app reads at once
    client.send(b"ok")
    assert client.read_response().body == b"ok"


def test_expect_continue_not_sent_when_the_app_does_not_read(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"nope"]

    handle = server(validator(app))
    client = raw(handle)
    client.send(b"PUT /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
    raw_head = client.read_head()
    status, fields = parse_head(raw_head)
    assert status == b"HTTP/1.1 403 Forbidden", raw_head
    assert field(fields, "Connection") == ["close"]
    assert client.read_exactly(4) == b"nope"
    assert client.is_closed(3)


def test_expect_continue_for_a_queued_pipelined_request(server, raw):
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            release.wait(5)
            body = b"slow"
        else:
            body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    handle = server(validator(app), threads=4)
    client = raw(handle)
    client.send(get("/slow") + b"PUT /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert no_data_within(client, 0.2)
    release.set()
    assert client.read_response().body == b"slow"
    assert client.read_exactly(len(CONTINUE)) == CONTINUE
    client.send(b"abc")
    resp = client.read_response()
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"abc", None)


def test_expect_continue_with_chunked_body(server, raw):
    handle = server(echo)
    client = raw(handle)
    client.send(b"PUT /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert client.read_exactly(len(CONTINUE)) == CONTINUE
    client.send(b"3\r\nabc\r\n")
    client.send(b"2\r\nde\r\n0\r\n\r\n")
    resp = client.read_response()
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"abcde", None)
    client.send(get("/next"))
    assert client.read_response().header("X-Path") == "/next"


def test_expect_continue_ignored_for_http10(server, raw):
    handle = server(echo)
    client = raw(handle)
    client.send(b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
    data = client.read_all()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:40]
    assert data.endswith(b"\r\n\r\nhello")


# -- HEAD, 204, 304 ----------------------------------------------------------------------------------------------------


def test_head_has_the_apps_headers_and_no_body(server, raw):
    handle = server(hello)
    client = raw(handle)
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Content-Length") == ["13"]
    assert field(fields, "Content-Type") == ["text/plain"]
    assert field(fields, "Transfer-Encoding") == []
    # No body may follow: the very next bytes must be the answer to the next request.
    client.send(get("/"))
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"Hello, world!"


def test_head_of_a_streamed_response(server, raw):
    handle = server(streaming_app([b"hello", b"world"]))
    client = raw(handle)
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get("/"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Transfer-Encoding") == []
    assert field(fields, "Connection") == []
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"helloworld"


def test_head_of_a_list_body_without_content_length(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"twelve bytes"]

    handle = server(app)
    client = raw(handle)
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + get("/"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Content-Length") == ["12"]
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"twelve bytes")


@pytest.mark.parametrize(("method", "status"), [("HEAD", "200 OK"), ("GET", "304 Not Modified")], ids=["head", "304"])
def test_declared_content_length_without_body_keeps_the_connection(server, raw, method, status):
    # HEAD and 304 may carry the Content-Length of the representation (RFC 9110 sections 8.6, 9.3.2); no body follows
    # and the connection stays usable.
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Length", "100")])
        return []

    handle = server(app)
    client = raw(handle)
    request = f"{method} / HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    client.send(request * 2)
    for _ in range(2):
        line, fields = parse_head(client.read_head())
        assert line == b"HTTP/1.1 " + status.encode()
        assert field(fields, "Content-Length") == ["100"]
        assert field(fields, "Connection") == []
    assert no_data_within(client, 0.2)


def _no_body_app(status: str, extra: list[bytes]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(status, [("X-Status", status[:3])])
        yield from extra

    return app


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
@pytest.mark.parametrize("shape", ["conformant", "app-yields-a-body", "app-returns-a-list-body"])
def test_no_body_statuses(server, raw, status, shape, method):
    # Otherwise than conformant, the app gives a body anyway: the server must drop it (RFC 9110 sections 15.3.5,
    # 15.4.5), and say nothing of its length, for HEAD too (a HEAD's Content-Length is the GET's, and these have no
    # content): a list body, whose length is known before the head goes, is where a length could be made up.
    if shape == "conformant":
        app = validator(_no_body_app(status, []))
    elif shape == "app-yields-a-body":
        app = _no_body_app(status, [b"this must not be sent"])
    else:

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response(status, [("X-Status", status[:3])])
            return [b"this must not be sent"]

    handle = server(app)
    client = raw(handle)
    request = f"{method} / HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    client.send(request + request)
    for _ in range(2):
        line, fields = parse_head(client.read_head())
        assert line == f"HTTP/1.1 {status}".encode()
        assert field(fields, "X-Status") == [status[:3]]
        assert field(fields, "Transfer-Encoding") == []
        assert field(fields, "Content-Length") == []
        assert field(fields, "Connection") == []
    assert no_data_within(client, 0.2), "bytes after a response without body"


# -- keep-alive and Connection: close ----------------------------------------------------------------------------------


def test_http10_keep_alive_only_on_request(server, raw):
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/a", "1.0", "Connection: keep-alive\r\n"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/a")
    assert resp.header("Connection") == "keep-alive"
    client.send(get("/b", "1.0"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/b")
    assert resp.header("Connection") == "close"
    assert client.is_closed(3)


def test_http10_without_keep_alive_closes(server, raw):
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/a", "1.0") + get("/b", "1.0"))
    data = client.read_all()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 1
    assert data.endswith(b"\r\n\r\n/a")
    assert b"\r\nConnection: close\r\n" in data


def test_client_connection_close(server, raw):
    log = CallLog(path_app)
    handle = server(log)
    client = raw(handle)
    client.send(get("/a") + get("/b", headers="Connection: close\r\n") + get("/c"))
    resp = client.read_response()
    assert (resp.body, resp.header("Connection")) == (b"/a", None)
    resp = client.read_response()
    assert (resp.body, resp.header("Connection")) == (b"/b", "close")
    assert client.read_all() == b""  # nothing for /c: the connection ends after /b
    assert log.paths == ["/a", "/b"]


def test_bytes_after_connection_close_are_ignored(server, raw):
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/a", headers="Connection: close\r\n") + b"\x16\x03\x01 not http\r\n\r\n")
    data = client.read_all()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\n/a")  # no 400 for what came after the last request
    assert data.count(b"HTTP/1.1 ") == 1


def test_half_close_after_a_request_still_gets_the_response(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        time.sleep(0.2)  # slow work: the client's EOF arrives while the app runs
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]

    handle = server(validator(app))
    client = raw(handle)
    client.send(get("/a"))
    client.sock.shutdown(socket.SHUT_WR)
    data = client.read_all()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\ndone")


def test_half_close_after_pipelined_requests_gets_every_response(server, raw):
    # Half-closing after the last request is how a client says "no more requests" (e.g. `nc -N`); every complete
    # request sent before it is still owed its response, in order (RFC 9112 sections 9.3.2 and 9.6).
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/a") + get("/b") + get("/c"))
    client.sock.shutdown(socket.SHUT_WR)
    data = client.read_all()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3, data
    assert data.endswith(b"\r\n\r\n/c")
    assert data.index(b"/a") < data.index(b"/b") < data.index(b"/c")


class HoldsFirstClose:
    """Answers its path as the body, with Content-Length: the response goes out before the worker closes the
    iterable. The first response's close() waits for ``release`` (bounded), holding the next pipelined request."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._first = True

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        hold, self._first = self._first, False
        return self._body(body, hold)

    def _body(self, body: bytes, hold: bool) -> Iterator[bytes]:
        try:
            yield body
        finally:
            if hold:
                self.release.wait(5)


def test_half_close_while_the_next_pipelined_request_waits_for_close(server, raw):
    # A response whose declared length is reached goes out before the worker closes its iterable, and the next
    # pipelined request starts only once it has: in between no request is in flight, yet two are still owed. A
    # half-close arriving then must not drop them. The first iterable's close() is held until the server has seen it.
    app = HoldsFirstClose()
    seen_eof = app.release
    handle = server(validator(app))
    client = raw(handle)
    client.send(get("/a") + get("/b") + get("/c"))
    first = client.read_response()
    assert first.body == b"/a"
    client.sock.shutdown(socket.SHUT_WR)
    connections = handle.server._connections
    # The server has either taken the EOF as "no more requests" or closed the connection (the defect).
    assert wait_until(lambda: not connections or all(c._read_done for c in list(connections)))
    seen_eof.set()
    rest = client.read_all()
    assert rest.count(b"HTTP/1.1 200 OK\r\n") == 2, rest
    assert rest.index(b"/b") < rest.index(b"/c")
    assert rest.endswith(b"\r\n\r\n/c")


def test_request_sent_one_byte_at_a_time(server, raw):
    handle = server(echo)
    client = raw(handle)
    request = b"POST /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbyte\r\n0\r\n\r\n"
    for i in range(len(request)):
        client.send(request[i : i + 1])
    resp = client.read_response()
    assert (resp.status, resp.header("X-Path"), resp.body) == (200, "/slow", b"byte")


def test_app_connection_close(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close"), ("Content-Length", "3")])
        return [b"bye"]

    log = CallLog(validator(app))
    handle = server(log)
    client = raw(handle)
    client.send(get("/a") + get("/b"))
    status, fields = parse_head(client.read_head())
    assert status == b"HTTP/1.1 200 OK"
    assert field(fields, "Connection") == ["close"]
    assert client.read_exactly(3) == b"bye"
    assert client.read_all() == b""
    assert log.paths == ["/a"]


# -- Date and Server ---------------------------------------------------------------------------------------------------


def test_date_and_server_headers(server, raw):
    handle = server(path_app)
    client = raw(handle)
    before = time.time()
    client.send(get("/"))
    resp = client.read_response()
    after = time.time()
    dates = [v for k, v in resp.headers if k.lower() == "date"]
    assert len(dates) == 1
    assert IMF_FIXDATE.match(dates[0]), dates[0]
    stamp = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert int(before) - 1 <= stamp <= after + 1
    assert [v for k, v in resp.headers if k.lower() == "server"] == ["asyncwsgi"]


@pytest.mark.parametrize("cached", [784111777.0, 4102444800.0], ids=["stale", "clock-stepped-back"])
def test_date_header_follows_the_clock_whatever_second_is_cached(server, raw, cached):
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/"))
    assert client.read_response().status == 200
    value = email.utils.formatdate(cached, usegmt=True)
    writer.DATE[:] = [value, cached, cached + 1, f"Date: {value}\r\n"]  # the cache the workers read
    before = time.time()
    client.send(get("/"))
    resp = client.read_response()
    after = time.time()
    stamp = email.utils.parsedate_to_datetime(resp.header("Date")).timestamp()
    assert int(before) - 1 <= stamp <= after + 1


def test_app_date_and_server_headers_are_not_duplicated(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Server", "myapp/1.0"),
                ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("Content-Length", "0"),
            ],
        )
        return []

    handle = server(validator(app))
    client = raw(handle)
    client.send(get("/"))
    resp = client.read_response()
    assert [v for k, v in resp.headers if k.lower() == "server"] == ["myapp/1.0"]
    assert [v for k, v in resp.headers if k.lower() == "date"] == ["Sun, 06 Nov 1994 08:49:37 GMT"]


def test_server_header_can_be_turned_off(server, raw):
    handle = server(path_app, server_header=False)
    client = raw(handle)
    client.send(get("/") + b"GARBAGE\r\n\r\n")
    resp = client.read_response()
    assert resp.status == 200
    assert resp.header("Server") is None
    assert resp.header("Date") is not None
    resp = client.read_response()
    assert resp.status == 400
    assert resp.header("Server") is None


# -- limits and malformed requests -------------------------------------------------------------------------------------


def _fresh_connection_answered(handle: Any, raw: Any) -> None:
    client = raw(handle)
    client.send(get("/fresh"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/fresh")


@pytest.mark.parametrize(
    ("options", "request_bytes", "status"),
    [
        pytest.param({"limit_request_line": 64}, get("/" + "a" * 100), 414, id="request-line"),
        pytest.param(
            {"limit_request_fields": 5},
            get("/", headers="".join(f"X-H{i}: v\r\n" for i in range(10))),
            431,
            id="field-count",
        ),
        pytest.param(
            {"limit_request_headers_size": 256},
            get("/", headers="".join(f"X-H{i}: {'v' * 60}\r\n" for i in range(6))),
            431,
            id="header-block-size",
        ),
        pytest.param(
            {"limit_request_headers_size": 1024},
            get("/", headers=f"X-Big: {'v' * 100_000}\r\n"),
            431,
            id="one-huge-field",
        ),
    ],
)
def test_limits(server, raw, options, request_bytes, status):
    log = CallLog(path_app)
    handle = server(log, **options)
    client = raw(handle)
    send_while_refused(client, request_bytes)
    resp = client.read_response()
    assert resp.status == status
    assert resp.header("Connection") == "close"
    assert resp.header("Content-Length") == str(len(resp.body))
    assert client.is_closed(3)
    assert log.paths == []
    _fresh_connection_answered(handle, raw)
    assert log.paths == ["/fresh"]


def test_endless_header_line_is_cut_at_the_size_limit(server, raw):
    # A header line that never ends must be refused once it passes the size limit, not buffered until it ends.
    log = CallLog(path_app)
    handle = server(log, limit_request_headers_size=1024, timeout_request_header=2.0)
    client = raw(handle)
    send_while_refused(client, b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"v" * 200_000)
    resp = client.read_response()
    assert resp.status == 431
    assert resp.header("Connection") == "close"
    assert log.paths == []


TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100c8010000c40303" + "5f1b3c2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a" + "00"
    "0004130113020100" + "0097000000110000" + "00" * 40
)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"\x00\x01\x02\xff garbage\r\n\r\n", 400, id="binary-garbage"),
        pytest.param(TLS_CLIENT_HELLO, 400, id="tls-client-hello"),
        pytest.param(b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n", 400, id="invalid-method"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="missing-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400, id="bad-content-length"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            id="content-length-and-transfer-encoding",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxx", 400, id="te-not-chunked"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400, id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX : a\r\n\r\n", 400, id="space-before-colon"),
    ],
)
def test_malformed_request_gets_400_and_close(server, raw, request_bytes, status):
    log = CallLog(path_app)
    handle = server(log)
    client = raw(handle)
    client.send(request_bytes)
    resp = client.read_response()
    assert resp.status == status
    assert resp.header("Connection") == "close"
    assert resp.body.startswith(f"{status} ".encode())
    assert client.is_closed(3)
    assert log.paths == []
    _fresh_connection_answered(handle, raw)


def test_malformed_request_after_a_good_one(server, raw):
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/ok") + b"NOT HTTP\r\n\r\n" + get("/never"))
    resp = client.read_response()
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"/ok", None)
    resp = client.read_response()
    assert resp.status == 400
    assert resp.header("Connection") == "close"
    assert client.read_all() == b""


def test_malformed_request_after_pipelined_good_ones(server, raw):
    # Every complete request before the malformed one is answered, in order, then the 400: a client pairs responses
    # with its requests by order, so a 400 in place of /b's response would be taken as /b's.
    handle = server(path_app)
    client = raw(handle)
    client.send(get("/a") + get("/b") + get("/c") + b"NOT HTTP\r\n\r\n" + get("/never"))
    for path in (b"/a", b"/b", b"/c"):
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, path)
    resp = client.read_response()
    assert (resp.status, resp.header("Connection")) == (400, "close")
    assert client.read_all() == b""


def test_malformed_request_while_the_next_pipelined_request_waits_for_close(server, raw):
    # Between /a's response and /b's start (the worker still closing /a's iterable) no request is in flight; /b is
    # still owed its response before the 400.
    app = HoldsFirstClose()
    rejected = app.release
    handle = server(validator(app))
    client = raw(handle)
    client.send(get("/a") + get("/b"))
    assert client.read_response().body == b"/a"
    client.send(b"NOT HTTP\r\n\r\n")
    connections = handle.server._connections
    assert wait_until(lambda: not connections or all(c._read_done for c in list(connections)))
    rejected.set()
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/b")
    resp = client.read_response()
    assert (resp.status, resp.header("Connection")) == (400, "close")
    assert client.read_all() == b""


def test_malformed_body_of_a_queued_request_is_answered_400_without_calling_the_app(server, raw):
    release = threading.Event()
    paths: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        paths.append(environ["PATH_INFO"])
        release.wait(5)  # /a is in flight while the queued request's body turns out malformed
        body = environ["wsgi.input"].read(100)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    handle = server(validator(app))
    client = raw(handle)
    client.send(get("/a") + b"POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    connections = handle.server._connections
    assert wait_until(lambda: all(c._read_done for c in list(connections)))
    release.set()
    assert client.read_response().status == 200
    resp = client.read_response()
    assert (resp.status, resp.header("Connection")) == (400, "close")
    assert client.read_all() == b""
    assert paths == ["/a"]


def test_malformed_chunked_body_while_the_app_reads_it(server, raw):
    errors: list[BaseException] = []
    failed = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read(100)
        except OSError as exc:  # what the app sees; it lets it propagate, as most apps would
            errors.append(exc)
            failed.set()
            raise
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = server(validator(app))
    client = raw(handle)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    assert failed.wait(5), "the app's read() must fail, not wait for a body that can never be framed"
    assert isinstance(errors[0], OSError)
    # Nothing was sent: the client is owed the 400 for its malformed body (RFC 9112 section 2.2).
    resp = client.read_response()
    assert resp.status == 400
    assert resp.header("Connection") == "close"
    assert client.is_closed(3)


# -- keep-alive timeout ------------------------------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed_after_the_timeout(server, raw):
    handle = server(path_app, timeout_keep_alive=0.3)
    client = raw(handle)
    client.send(get("/a"))
    resp = client.read_response()
    assert (resp.status, resp.header("Connection")) == (200, None)
    idle_from = time.monotonic()
    assert client.is_closed(wait=3)
    idle = time.monotonic() - idle_from
    assert idle >= 0.25, f"closed after {idle:.3f}s, before the keep-alive timeout"
    _fresh_connection_answered(handle, raw)


def test_keep_alive_timeout_does_not_cut_a_slow_response(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        time.sleep(0.5)  # slow work, longer than the keep-alive timeout
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]

    handle = server(validator(app), timeout_keep_alive=0.2)
    client = raw(handle)
    client.send(get("/a"))
    assert client.read_response().body == b"done"
    client.send(get("/b"))  # well within the keep-alive timeout of the end of the first response
    assert client.read_response().body == b"done"


# -- Upgrade -----------------------------------------------------------------------------------------------------------


def test_upgrade_request_answered_as_plain_http(server, raw):
    # WSGI cannot switch protocols: Upgrade is ignored (RFC 9110 section 7.8), the app answers the request as plain
    # HTTP/1.1 and the connection goes on carrying HTTP/1.1 requests.
    log = CallLog(path_app)
    handle = server(log)
    client = raw(handle)
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + get("/b")
    )
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/ws")
    assert resp.header("Upgrade") is None
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/b")
    assert log.paths == ["/ws", "/b"]


def test_upgrade_request_body_reaches_the_app(server, raw):
    # The request asking for an upgrade is a complete HTTP/1.1 message, body included (RFC 9110 section 7.8; an
    # h2c upgrade on a POST must carry its whole body first). The server never switches, so the app must see it.
    handle = server(echo)
    client = raw(handle)
    client.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 5\r\n\r\nhello"
    )
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == b"hello"


# -- unread request bodies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789", id="content-length"),
        pytest.param(
            b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n5\r\n HTTP\r\n0\r\n\r\n",
            id="chunked",
        ),
        pytest.param(
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 600000\r\n\r\n" + b"x" * 600_000,
            id="larger-than-the-body-buffer",
        ),
    ],
)
def test_unread_request_body_is_discarded(server, raw, first):
    log = CallLog(path_app)  # never reads wsgi.input
    handle = server(log)
    client = raw(handle)
    client.send(first + get("/b"))
    resp = client.read_response()
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"/a", None)
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/b")
    assert log.paths == ["/a", "/b"]
    check_answered(client, "/c")


def test_partly_read_request_body_is_discarded(server, raw):
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        head = environ["wsgi.input"].read(4)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(head)))])
        return [head]

    handle = server(validator(app))
    client = raw(handle)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\nfirstGET / H" + get("/b"))
    assert client.read_response().body == b"firs"
    assert client.read_response().body == b""  # /b has no body: read(4) gives b""


def test_unread_body_that_stops_coming_closes_without_a_second_answer(server, raw):
    # The app answered without reading a large upload (a 401 or 413 before the body, say). The server reads and drops
    # the rest so the connection can serve another request; a rest that does not come within the head timeout ends
    # the connection, with no 408 after the response already given: the client sent one request and got one answer.
    handle = server(path_app, timeout_request_header=0.2)
    client = raw(handle)
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10)
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"/upload")
    assert client.read_all() == b""  # the reaper closes it (bounded by the client's socket timeout)


def test_unread_body_that_ends_after_the_response_leaves_the_connection_idle(server, raw):
    # The rest of the unread body arrives after the response: the connection is then an idle keep-alive one. Its
    # head timeout (0.3 s) must not fire a 408 at a client that sent nothing more; the next request is served.
    handle = server(path_app, timeout_request_header=0.3, timeout_keep_alive=5.0)
    client = raw(handle)
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n" + b"x" * 10)
    assert client.read_response().body == b"/upload"
    client.send(b"y" * 10)
    assert no_data_within(client, 1.0)  # three reaper passes past the head timeout
    check_answered(client, "/next")


def test_unread_body_that_ends_after_the_response_then_keep_alive_timeout(server, raw):
    handle = server(path_app, timeout_keep_alive=0.3)
    client = raw(handle)
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n" + b"x" * 10)
    assert client.read_response().body == b"/upload"
    client.send(b"y" * 10)
    assert client.read_all() == b""  # closed by the keep-alive timeout, nothing sent


def test_unread_chunked_body_turning_malformed_after_the_response_closes_without_a_400(server, raw):
    # The response already answered the request; a malformed rest of its body ends the connection, no second answer.
    handle = server(path_app)
    client = raw(handle)
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert client.read_response().body == b"/upload"
    client.send(b"zz\r\n")
    assert client.read_all() == b""
