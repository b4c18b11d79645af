"""Faulty applications the server must survive: exceptions before ``start_response``, during iteration and in
``close()``; wrong return types; ``start_response`` misuse; CR/LF and non-latin-1 text in the status or headers;
a body shorter or longer than its declared Content-Length; ``sys.exit()``; ``write()`` called after the response
ended; an app that hangs.

For each: the client gets a 500 (when nothing was sent yet) or a closed connection (when the response had begun),
``asyncwsgi.error`` gets a line naming the mistake, nothing about the error reaches the client, and the only worker
thread (``threads=1``) comes back to the pool: a following request on the same server is served.

The apps here are deliberately broken, so they are not wrapped in ``wsgiref.validate``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from . import ErrorLog, get, wait_until

SECRET = "s3cr3t-detail-from-the-app"

INTERNAL_ERROR = b"HTTP/1.1 500 Internal Server Error\r\n"


def ok_body(path: str) -> bytes:
    return f"ok {path}".encode()


class Body:
    """A response iterable with its own ``close()``; ``fail_in_close`` makes ``close()`` raise."""

    def __init__(self, chunks: Iterable[Any], fail_in_close: bool = False, fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_in_close = fail_in_close
        self.fail_at = fail_at
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise KeyError(SECRET)
            yield chunk
        if self.fail_at == len(self.chunks):
            raise KeyError(SECRET)

    def close(self) -> None:
        self.closed.set()
        if self.fail_in_close:
            raise RuntimeError(f"close failed: {SECRET}")


TEXT = [("Content-Type", "text/plain")]


def _raise_before_start(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    raise LookupError(SECRET)


def _raise_after_start(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", TEXT)
    raise LookupError(SECRET)


def _raise_before_first_chunk(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", TEXT)
    return Body([b"never"], fail_at=0)


def _raise_after_first_chunk(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", TEXT)
    return Body([b"first chunk", b"never"], fail_at=1)


def _raise_in_close_of_empty_body(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("Content-Length", "0")])
    return Body([], fail_in_close=True)


def _raise_in_close_after_streaming(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", TEXT)
    return Body([b"streamed"], fail_in_close=True)


def _return_none(environ: dict[str, Any], sr: Any) -> Any:
    sr("200 OK", TEXT)
    return None


def _return_str(environ: dict[str, Any], sr: Any) -> Any:
    sr("200 OK", TEXT)
    return "a str body"


def _return_bytes(environ: dict[str, Any], sr: Any) -> Any:
    sr("200 OK", TEXT)
    return b"a bytes body"


def _return_int(environ: dict[str, Any], sr: Any) -> Any:
    sr("200 OK", TEXT)
    return 42


def _yield_str(environ: dict[str, Any], sr: Any) -> Iterable[Any]:
    sr("200 OK", TEXT)
    return Body(["text, not bytes"])


def _start_response_twice(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", TEXT)
    sr("201 Created", TEXT)
    return [b"never"]


def _never_start_response(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    return [b"no status"]


def _crlf_in_status(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK\r\nX-Injected: 1", TEXT)
    return [b"never"]


def _crlf_in_header_value(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("X-A", "v\r\nSet-Cookie: injected=1")])
    return [b"never"]


def _lf_in_header_value(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("X-A", "v\nX-Injected: 1")])
    return [b"never"]


def _crlf_in_header_name(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("X-A\r\nX-Injected", "1")])
    return [b"never"]


def _non_latin1_status(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 \u20ac OK", TEXT)
    return [b"never"]


def _non_latin1_header(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("X-Price", "10 \u20ac")])
    return [b"never"]


def _app_sets_transfer_encoding(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("Transfer-Encoding", "chunked")])
    return [b"never"]


def _conflicting_content_lengths(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("Content-Length", "3"), ("Content-Length", "5")])
    return [b"never"]


def _negative_content_length(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sr("200 OK", [*TEXT, ("Content-Length", "-1")])
    return [b"never"]


def _exc_info_after_headers_sent(environ: dict[str, Any], sr: Any) -> Iterator[bytes]:
    sr("200 OK", TEXT)
    yield b"first chunk"
    try:
        raise LookupError(SECRET)
    except LookupError:
        sr("500 Internal Server Error", TEXT, sys.exc_info())
    yield b"never"


def _system_exit(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
    sys.exit(3)


# (path, app, what the log must name): nothing was sent when the app failed, so the client gets a 500.
FAIL_BEFORE_RESPONSE: list[Any] = [
    pytest.param(_raise_before_start, f"LookupError: {SECRET}", id="raises-before-start-response"),
    pytest.param(_raise_after_start, f"LookupError: {SECRET}", id="raises-after-start-response"),
    pytest.param(_raise_before_first_chunk, f"KeyError: '{SECRET}'", id="raises-in-iteration-before-first-chunk"),
    pytest.param(_raise_in_close_of_empty_body, f"close failed: {SECRET}", id="raises-in-close"),
    pytest.param(_return_none, "returned NoneType", id="returns-none"),
    pytest.param(_return_str, "returned str", id="returns-str"),
    pytest.param(_return_bytes, "returned bytes", id="returns-bytes"),
    pytest.param(_return_int, "'int' object is not iterable", id="returns-int"),
    pytest.param(_yield_str, "yielded str, not bytes", id="yields-str"),
    pytest.param(_start_response_twice, "start_response() called a second time", id="start-response-twice"),
    pytest.param(_never_start_response, "without calling start_response()", id="never-calls-start-response"),
    pytest.param(_crlf_in_status, "invalid status line", id="crlf-in-status"),
    pytest.param(_crlf_in_header_value, "control character", id="crlf-in-header-value"),
    pytest.param(_lf_in_header_value, "control character", id="lf-in-header-value"),
    pytest.param(_crlf_in_header_name, "invalid response header name", id="crlf-in-header-name"),
    pytest.param(_non_latin1_status, "outside latin-1", id="non-latin1-status"),
    pytest.param(_non_latin1_header, "outside latin-1", id="non-latin1-header"),
    pytest.param(_app_sets_transfer_encoding, "hop-by-hop header 'Transfer-Encoding'", id="app-sets-transfer-encoding"),
    pytest.param(_conflicting_content_lengths, "invalid Content-Length", id="conflicting-content-lengths"),
    pytest.param(_negative_content_length, "invalid Content-Length", id="negative-content-length"),
    pytest.param(_system_exit, "SystemExit", id="sys-exit"),
]


def dispatch(fault: Callable[..., Any]) -> Callable[..., Any]:
    """``/fault`` runs ``fault``; every other path answers ``ok <path>`` with a Content-Length."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/fault":
            return fault(environ, start_response)
        body = ok_body(path)
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]

    return app


def assert_keeps_serving(handle: Any, raw: Any, client: Any = None) -> None:
    """The server answers again (on ``client``'s connection when given, else on a fresh one); with ``threads=1``
    this also proves the worker thread came back to the pool."""
    c = client if client is not None else raw(handle)
    c.send(get("/after"))
    resp = c.read_response()
    assert (resp.status, resp.body) == (200, ok_body("/after"))
    assert wait_until(lambda: handle.call(lambda: handle.server.in_flight) == 0)


def assert_no_leak(data: bytes) -> None:
    for secret in (SECRET.encode(), b"Traceback", b"Error:", b'File "', b"X-Injected", b"Set-Cookie", b"never"):
        assert secret not in data, data


@pytest.mark.parametrize(("fault", "mistake"), FAIL_BEFORE_RESPONSE)
def test_fault_before_the_response_becomes_500(server, raw, fault, mistake):
    handle = server(dispatch(fault), threads=1)
    with ErrorLog() as log:
        client = raw(handle)
        client.send(get("/fault"))
        data = client.read_all()
        assert data.startswith(INTERNAL_ERROR), data
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"\r\nConnection: close\r\n" in head + b"\r\n"
        assert body == b"500 Internal Server Error\n"
        assert_no_leak(data)
        assert log.wait_for(mistake), f"no log line names the mistake {mistake!r}: {log.texts()}"
        errors = log.texts(logging.ERROR)
        assert any(mistake in t and "error in the application for GET /fault" in t for t in errors), errors
    assert_keeps_serving(handle, raw)


# Faults after the response began: the head (and some body) is out, so the only honest signal is to close the
# connection without completing the body.
FAIL_DURING_RESPONSE: list[Any] = [
    pytest.param(_raise_after_first_chunk, b"first chunk", f"KeyError: '{SECRET}'", id="raises-in-iteration"),
    pytest.param(_raise_in_close_after_streaming, b"streamed", f"close failed: {SECRET}", id="raises-in-close"),
    pytest.param(_exc_info_after_headers_sent, b"first chunk", f"LookupError: {SECRET}", id="exc-info-after-headers"),
]


@pytest.mark.parametrize(("fault", "sent", "mistake"), FAIL_DURING_RESPONSE)
def test_fault_during_a_streamed_response_closes_the_connection(server, raw, fault, sent, mistake):
    handle = server(dispatch(fault), threads=1)
    with ErrorLog() as log:
        client = raw(handle)
        client.send(get("/fault"))
        data = client.read_all()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Transfer-Encoding: chunked" in head
        # The chunks sent so far, and no terminating zero-size chunk: the client can tell the body is incomplete.
        assert body == b"%x\r\n%s\r\n" % (len(sent), sent), body
        assert_no_leak(data)
        assert log.wait_for(mistake), f"no log line names the mistake {mistake!r}: {log.texts()}"
    assert_keeps_serving(handle, raw)


def test_body_shorter_than_its_content_length_closes_the_connection(server, raw):
    def fault(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
        sr("200 OK", [*TEXT, ("Content-Length", "10")])
        return Body([b"12345"])

    handle = server(dispatch(fault), threads=1)
    with ErrorLog() as log:
        client = raw(handle)
        client.send(get("/fault"))
        head = client.read_head()
        assert b"\r\nContent-Length: 10\r\n" in head
        assert client.read_all() == b"12345"
        assert log.wait_for("declared Content-Length 10 but sent 5 bytes; closing the connection")
    assert_keeps_serving(handle, raw)


def test_body_longer_than_its_content_length_is_cut_and_the_connection_stays_in_step(server, raw):
    def fault(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
        sr("200 OK", [*TEXT, ("Content-Length", "3")])
        return Body([b"to", b"o long", b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"])

    handle = server(dispatch(fault), threads=1)
    with ErrorLog() as log:
        client = raw(handle)
        client.send(get("/fault"))
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, b"too")
        assert log.wait_for("the app sent more than its Content-Length (3); extra bytes dropped")
    assert_keeps_serving(handle, raw, client)  # the next response on this connection is the right one


def test_write_after_the_response_ended_sends_nothing(server, raw):
    # A thread of the app keeps the write() callable and calls it once the response is over: those bytes must never
    # reach the connection, where the client would read them as the response to its next request.
    saved: list[Callable[[bytes], None]] = []

    def fault(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
        saved.append(sr("200 OK", TEXT))
        return [b"first"]

    handle = server(dispatch(fault), threads=1)
    client = raw(handle)
    client.send(get("/fault"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"first")
    try:
        saved[0](b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
    except Exception:
        pass  # refusing the call is fine; sending the bytes is not
    assert_keeps_serving(handle, raw, client)


def test_hung_app_holds_one_thread_and_shutdown_cuts_it(server, raw):
    hung = threading.Event()
    unhang = threading.Event()

    def fault(environ: dict[str, Any], sr: Any) -> Iterable[bytes]:
        hung.set()
        unhang.wait(10)  # "forever", bounded so that a failing test leaves no thread behind for long
        sr("200 OK", TEXT)
        return [b"late"]

    handle = server(dispatch(fault), threads=2)
    stuck = raw(handle)
    stuck.send(get("/fault"))
    try:
        assert hung.wait(5)
        client = raw(handle)
        for i in range(20):
            client.send(get(f"/flow/{i}"))
            assert client.read_response().body == ok_body(f"/flow/{i}")
        assert handle.server.threads == 2
        assert handle.call(lambda: handle.server.in_flight) == 1
        client.close()
        started = time.monotonic()
        assert handle.stop(timeout=0.3) == 1, "one request was cut"
        assert time.monotonic() - started < 3.0
        try:
            assert stuck.read_all() == b"", "the cut request gets no response"
        except ConnectionResetError:
            pass
    finally:
        unhang.set()
