"""``asyncwsgi.to_asgi``: WSGI apps served as ASGI 3 applications by real ASGI servers (uvicorn, hypercorn on asyncio,
hypercorn on trio; every test runs under each), driven through real sockets with httpx and raw HTTP/1.1 bytes.

Covered: the PEP 3333 environ built from the ASGI scope (SCRIPT_NAME from ``root_path`` whether a mount or the
server sets it, PATH_INFO decoded, QUERY_STRING raw, HTTP_* headers, CONTENT_LENGTH/TYPE, REMOTE_ADDR, SERVER_NAME /
PORT, ``wsgi.url_scheme``, ``wsgi.input_terminated``, ``wsgi.file_wrapper``; apps wrapped in
``wsgiref.validate.validator``); a streamed ``wsgi.input`` (1 MiB read in pieces while the upload is still arriving,
chunked uploads, ``readline``/iteration); a client leaving mid-upload makes ``read()`` raise an ``OSError``; headers
held until the first non-empty chunk (an error before it is a 500), ``exc_info`` before and after the headers,
``write()``, a declared Content-Length enforced (extra bytes never reach the wire), ``close()`` on success, on error
and when the client disconnects mid-stream (within 1 s), streaming responses chunk by chunk, backpressure from a
client that stops reading, concurrent calls on worker threads, ``wsgi.file_wrapper``, lifespan startup and shutdown
(the adapter's threads stop), a websocket handshake refused with 403, HEAD, 204 and 304.

And the edges around them: a client leaving while a request body the app never reads is still arriving,
``Expect: 100-continue`` answered only when the app reads, a body shorter than its Content-Length ending the
connection, the app's ``Connection: close``, an 8 MiB response intact, ``to_asgi`` refusing a non-callable and an
unknown scope type.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import http.client
import io
import logging
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest

from asyncwsgi import to_asgi
from asyncwsgi.wsgi.input import BODY_HIGH_WATER

from ..helpers import RawClient, wait_until
from .conftest import ASGIServer, ServerFactory

StartServer = Callable[..., ASGIServer]
TIMEOUT = 5.0


def mount(prefix: str, app: Any) -> Any:
    """An ASGI mount as the spec describes it (and Starlette does): ``root_path`` extended, ``path`` unchanged."""

    async def mounted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope, root_path=scope.get("root_path", "") + prefix)
        await app(scope, receive, send)

    return mounted


def request(method: str, target: str, headers: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: testserver", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def text_app(body: bytes = b"ok", status: str = "200 OK") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def wait_true(event: threading.Event, what: str, timeout: float = TIMEOUT) -> None:
    assert event.wait(timeout), f"timed out after {timeout}s waiting for {what}"


# -- environ -----------------------------------------------------------------------------------------------------------


def environ_recorder(seen: dict[str, Any]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        seen["body"] = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"recorded"]

    return validator(app)


ENVIRON_REQUEST_HEADERS = (
    "Content-Type: text/plain; charset=utf-8",
    "Content-Length: 5",
    "X-Custom: v1",
    "X-Multi: a",
    "X-Multi: b",
    "X_Under: spoofed",
    "User-Agent: env-test",
)


@pytest.mark.parametrize("how", ["mount", "server-root-path"])
def test_environ(asgi_server: StartServer, raw: Callable[..., RawClient], how: str) -> None:
    seen: dict[str, Any] = {}
    app = to_asgi(environ_recorder(seen))
    if how == "mount":
        srv = asgi_server(mount("/mnt", app))
        target = "/mnt/caf%C3%A9/a%20b?x=1&y=%20z&x=%2F"
    else:
        # The server's own root_path setting (behind a proxy that strips the prefix): the client asks for the path
        # without it.
        srv = asgi_server(app, root_path="/mnt")
        target = "/caf%C3%A9/a%20b?x=1&y=%20z&x=%2F"
    client = raw(srv)
    client.send(request("POST", target, ENVIRON_REQUEST_HEADERS, b"hello"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"recorded")

    assert seen["REQUEST_METHOD"] == "POST"
    assert seen["SCRIPT_NAME"] == "/mnt"
    # PEP 3333: the decoded path as bytes, each byte one latin-1 character.
    assert seen["PATH_INFO"] == "/café/a b".encode().decode("latin-1")
    assert seen["QUERY_STRING"] == "x=1&y=%20z&x=%2F"
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert seen["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in seen and "HTTP_CONTENT_LENGTH" not in seen
    assert seen["HTTP_X_CUSTOM"] == "v1"
    assert seen["HTTP_X_MULTI"] == "a, b"
    assert seen["HTTP_USER_AGENT"] == "env-test"
    assert seen["HTTP_HOST"] == "testserver"
    assert "HTTP_X_UNDER" not in seen  # underscore spelling dropped (header spoofing behind proxies)
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["REMOTE_PORT"] == str(client.sock.getsockname()[1])
    assert seen["SERVER_NAME"] == "127.0.0.1"
    assert seen["SERVER_PORT"] == str(srv.port)
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["wsgi.version"] == (1, 0)
    assert seen["wsgi.input_terminated"] is True
    assert seen["wsgi.multithread"] is True
    assert seen["wsgi.multiprocess"] is False
    assert seen["wsgi.run_once"] is False
    assert callable(seen["wsgi.file_wrapper"])
    assert seen["body"] == b"hello"


def test_environ_https_scheme_from_scope(asgi_server: StartServer) -> None:
    """``scope["scheme"]`` (set by a proxy-headers middleware here) becomes ``wsgi.url_scheme`` and ``HTTPS``."""
    seen: dict[str, Any] = {}
    adapter = to_asgi(environ_recorder(seen))

    async def behind_tls_proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = dict(scope, scheme="https")
        await adapter(scope, receive, send)

    srv = asgi_server(behind_tls_proxy)
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/secure")
    assert (resp.status_code, resp.content) == (200, b"recorded")
    assert (seen["wsgi.url_scheme"], seen.get("HTTPS")) == ("https", "on")


def test_environ_unmounted_get(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    seen: dict[str, Any] = {}
    srv = asgi_server(to_asgi(environ_recorder(seen)))
    client = raw(srv)
    client.send(request("GET", "/a/b"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"recorded")
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"], seen["QUERY_STRING"]) == ("", "/a/b", "")
    assert seen["REQUEST_METHOD"] == "GET"
    assert "CONTENT_LENGTH" not in seen
    assert seen["body"] == b""


# -- request bodies ----------------------------------------------------------------------------------------------------


def test_upload_streamed_in_pieces(asgi_server: StartServer) -> None:
    """1 MiB read 64 KiB at a time; the app gets the first piece while the client still holds back the second half,
    so the body is streamed to the app, not collected first."""
    data = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)
    first_piece = threading.Event()
    pieces: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        digest = hashlib.sha256()
        stream = environ["wsgi.input"]
        for _ in range(10_000):
            piece = stream.read(65536)
            if not piece:
                break
            pieces.append(len(piece))
            digest.update(piece)
            first_piece.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{sum(pieces)} {digest.hexdigest()}".encode()]

    srv = asgi_server(to_asgi(validator(app)))
    waited: list[bool] = []

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        waited.append(first_piece.wait(TIMEOUT))
        yield data[len(data) // 2 :]

    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(srv.url + "/upload", content=body(), headers={"Content-Length": str(len(data))})
    assert waited == [True], "the app saw nothing of the body before the whole of it was sent"
    assert resp.status_code == 200
    assert resp.text == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    assert len(pieces) >= 16 and max(pieces) <= 65536


def test_read_larger_than_the_buffer_mark(asgi_server: StartServer) -> None:
    """One ``read(n)`` with n well above the body's buffer mark returns n bytes: the adapter keeps receiving what the
    app asked for instead of waiting for it to drain a buffer it is itself waiting on."""
    data = hashlib.sha256(b"big").digest() * (3 * BODY_HIGH_WATER // 32)
    n = 2 * BODY_HIGH_WATER + 5
    got: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        got.extend([stream.read(n), stream.read(n), stream.read(n)])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(got[0])]

    srv = asgi_server(to_asgi(validator(app)))
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(srv.url + "/big", content=data)
    assert (resp.status_code, resp.text) == (200, str(n))
    assert got == [data[:n], data[n:], b""]


def test_chunked_upload_read_by_lines(asgi_server: StartServer) -> None:
    lines = [b"line %d %s\n" % (i, b"x" * (i % 50)) for i in range(3000)]
    data = b"".join(lines)
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen["lines"] = list(environ["wsgi.input"])
        seen["content_length"] = environ.get("CONTENT_LENGTH")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(seen["lines"])]

    srv = asgi_server(to_asgi(validator(app)))

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), 777):  # pieces that cut lines anywhere
            yield data[i : i + 777]

    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(srv.url + "/lines", content=body())
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert (resp.status_code, resp.text) == (200, str(len(lines)))
    assert seen["lines"] == lines
    assert seen["content_length"] in (None, "")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_gone_mid_upload_read_raises(
    asgi_server: StartServer, raw: Callable[..., RawClient], framing: str
) -> None:
    got_some = threading.Event()
    finished = threading.Event()
    outcome: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        received = 0
        try:
            for _ in range(100_000):
                piece = stream.read(4096)
                if not piece:
                    outcome["eof_after"] = received
                    break
                received += len(piece)
                got_some.set()
        except BaseException as exc:
            outcome["error"] = exc
            raise
        finally:
            finished.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"complete?"]

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    if framing == "content-length":
        client.send(request("POST", "/upload", ("Content-Length: 1000000",), b"x" * 20000))
    else:
        client.send(request("POST", "/upload", ("Transfer-Encoding: chunked",), b"4e20\r\n" + b"x" * 20000 + b"\r\n"))
    wait_true(got_some, "the app to read the first bytes")
    client.close()
    wait_true(finished, "the app's read() to return or raise after the client left")
    assert "eof_after" not in outcome, f"read() reported a clean end after {outcome.get('eof_after')} bytes"
    assert isinstance(outcome.get("error"), OSError), outcome


# -- the response: headers deferred, exc_info, write, Content-Length ------------------------------------------------


def fails_after_empty_chunk(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Early", "1")])
    yield b""
    raise RuntimeError("failure before any body byte")


def fails_before_start_response(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise RuntimeError("failure before start_response")


def returns_without_start_response(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    return [b"no status"]


@pytest.mark.parametrize("app", [fails_after_empty_chunk, fails_before_start_response, returns_without_start_response])
def test_error_before_first_chunk_is_500(asgi_server: StartServer, raw: Callable[..., RawClient], app: Any) -> None:
    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(request("GET", "/"))
    resp = client.read_response()
    assert resp.status == 500
    assert resp.body == b"Internal Server Error\n"
    assert resp.header("X-Early") is None
    assert resp.header("Content-Type") == "text/plain; charset=utf-8"


def test_headers_held_until_first_nonempty_chunk(asgi_server: StartServer) -> None:
    """Empty chunks before the body do not start the response: exc_info can still replace status and headers."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Attempt", "first")])
        yield b""
        yield b""
        try:
            raise LookupError("changed my mind")
        except LookupError:
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("X-Attempt", "second")], sys.exc_info())
        yield b"not "
        yield b"found"

    srv = asgi_server(to_asgi(validator(app)))
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/")
    assert (resp.status_code, resp.content) == (404, b"not found")
    assert resp.headers.get_list("x-attempt") == ["second"]


def test_exc_info_before_headers_replaces_response(asgi_server: StartServer) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("late problem")
        except ValueError:
            start_response(
                "503 Service Unavailable", [("Content-Type", "text/plain"), ("X-Second", "1")], sys.exc_info()
            )
        return [b"replaced"]

    srv = asgi_server(to_asgi(validator(app)))
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/")
    assert (resp.status_code, resp.content) == (503, b"replaced")
    assert "x-first" not in resp.headers
    assert resp.headers["x-second"] == "1"


def test_exc_info_after_headers_reraises_and_cuts(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    """Once the head is out, start_response(..., exc_info) re-raises the app's exception; the response cannot be
    repaired and must not look complete: no chunked terminator, and nothing the app produced after the error."""
    reraised: list[BaseException] = []
    closed = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            yield b"partial"
            try:
                raise ValueError("failure after the head went out")
            except ValueError:
                try:
                    start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
                except ValueError as exc:
                    reraised.append(exc)
                    raise
            yield b"never sent"
        finally:
            closed.set()

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(request("GET", "/"))
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 200 ")
    rest = client.read_all()
    wait_true(closed, "the generator to be closed")
    assert [str(e) for e in reraised] == ["failure after the head went out"]
    assert b"partial" in rest
    assert b"never sent" not in rest
    assert b"transfer-encoding: chunked" in head.lower(), head
    assert not rest.endswith(b"0\r\n\r\n"), f"the cut response was terminated as if complete: {rest!r}"


def test_write_then_iterable(asgi_server: StartServer) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one,")
        write(b"two,")
        return [b"three"]

    srv = asgi_server(to_asgi(validator(app)))
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/")
    assert (resp.status_code, resp.content) == (200, b"one,two,three")


def _too_long_list(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello", b" world, and more"]


def _too_long_generator(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    yield b"hel"
    yield b"lo world"
    yield b", and more"


def _too_long_write(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    write(b"hello world")
    return [b", and more"]


@pytest.mark.parametrize("app", [_too_long_list, _too_long_generator, _too_long_write])
def test_content_length_extra_bytes_not_sent(asgi_server: StartServer, raw: Callable[..., RawClient], app: Any) -> None:
    """The body is cut at the declared length; the next request on the same connection is answered cleanly, so no
    extra byte reached the wire."""

    def routed(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/next":
            return text_app(b"next response")(environ, start_response)
        return app(environ, start_response)

    srv = asgi_server(to_asgi(routed))
    client = raw(srv)
    client.send(request("GET", "/"))
    first = client.read_response()
    assert (first.status, first.body, first.header("Content-Length")) == (200, b"hello", "5")
    client.send(request("GET", "/next"))
    second = client.read_response()
    assert (second.status, second.body) == (200, b"next response")


def test_streamed_response_arrives_chunk_by_chunk(asgi_server: StartServer) -> None:
    """The first chunk reaches the client while the app is still blocked before producing the second."""
    first_read = threading.Event()
    app_waited: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first;"
        app_waited.append(first_read.wait(TIMEOUT))
        yield b"second"

    srv = asgi_server(to_asgi(validator(app)))
    received = b""
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", srv.url + "/") as resp:
        assert resp.status_code == 200
        assert resp.headers.get("transfer-encoding") == "chunked"
        for piece in resp.iter_raw():
            received += piece
            if received == b"first;":
                first_read.set()
    assert received == b"first;second"
    assert app_waited == [True]


class TrackedFile(io.FileIO):
    """A regular file whose ``close()`` can be waited for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.closed_event = threading.Event()

    def close(self) -> None:
        super().close()
        self.closed_event.set()


def test_file_wrapper(asgi_server: StartServer, tmp_path: Path) -> None:
    content = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(4000))  # 128000 bytes
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    opened: list[TrackedFile] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        f = TrackedFile(path)
        opened.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 8192)

    # Not wrapped in the validator: it would wrap the returned file_wrapper in an iterator of its own, hiding it.
    srv = asgi_server(to_asgi(app))
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/file")
    assert resp.status_code == 200
    assert resp.content == content
    # A regular file's length is known, so it is declared rather than chunked.
    assert resp.headers.get("content-length") == str(len(content))
    assert len(opened) == 1
    # The client may have the whole declared length before the worker gets to close(): wait for it.
    wait_true(opened[0].closed_event, "the file to be closed")


def test_concurrent_calls_run_on_worker_threads(asgi_server: StartServer) -> None:
    """Three requests meet at a barrier inside the app: only possible if all three run at the same time."""
    barrier = threading.Barrier(3, timeout=TIMEOUT)
    app_threads: set[str] = set()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        app_threads.add(threading.current_thread().name)
        barrier.wait()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"met"]

    srv = asgi_server(to_asgi(validator(app), threads=8))
    with httpx.Client(timeout=TIMEOUT * 2) as client, ThreadPoolExecutor(3) as pool:
        resps = list(pool.map(lambda _: client.get(srv.url + "/"), range(3)))
    assert [(r.status_code, r.content) for r in resps] == [(200, b"met")] * 3
    assert len(app_threads) == 3
    assert all(name.startswith("asyncwsgi-asgi") for name in app_threads), app_threads


# -- close() -----------------------------------------------------------------------------------------------------------


class TrackedBody:
    """A response iterable that counts its ``close()`` calls and can fail at a given chunk."""

    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closes = 0
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError(f"failure at chunk {i}")
            yield chunk

    def close(self) -> None:
        self.closes += 1
        self.closed.set()


@pytest.mark.parametrize(
    ("fail_at", "expect"),
    [(None, "complete"), (0, "500"), (2, "cut")],
    ids=["success", "error-before-body", "error-mid-body"],
)
def test_close_called_once(
    asgi_server: StartServer, raw: Callable[..., RawClient], fail_at: int | None, expect: str
) -> None:
    body = TrackedBody([b"alpha,", b"beta,", b"gamma"], fail_at)

    def app(environ: dict[str, Any], start_response: Any) -> TrackedBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(request("GET", "/"))
    if expect == "cut":
        head = client.read_head()
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = client.read_all()
        assert b"alpha," in rest and b"beta," in rest and b"gamma" not in rest
        assert not rest.endswith(b"0\r\n\r\n"), rest
    else:
        resp = client.read_response()
        if expect == "complete":
            assert (resp.status, resp.body) == (200, b"alpha,beta,gamma")
        else:
            assert (resp.status, resp.body) == (500, b"Internal Server Error\n")
    wait_true(body.closed, "close()")
    assert body.closes == 1


def test_client_disconnect_mid_stream_stops_iterable(asgi_server: StartServer) -> None:
    """The client reads a little of an endless stream and closes; the app's iterable stops and close() runs
    within 1 s."""
    produced = 0
    first = threading.Event()
    closed = threading.Event()
    closed_at: list[float] = []

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            nonlocal produced
            for _ in range(400):  # 4 s at most
                produced += 1
                first.set()
                yield b"x" * 1024
                time.sleep(0.01)

        def close(self) -> None:
            closed_at.append(time.monotonic())
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Endless:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    srv = asgi_server(to_asgi(validator(app)))
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(request("GET", "/endless"))
        wait_true(first, "the first chunk")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    left_at = time.monotonic()
    wait_true(closed, "close() after the client left")
    assert closed_at[0] - left_at < 1.0, f"close() came {closed_at[0] - left_at:.2f}s after the client left"
    assert produced < 200


def test_client_gone_before_a_slow_stream_starts_stops_it_at_its_first_chunk(asgi_server: StartServer) -> None:
    """A request without a body whose app is silent for a while, then streams: the client leaves during the
    silence; once the stream starts, the adapter learns the client left (receive()) and the iterable stops and is
    closed within 1 s."""
    produced = 0
    left = threading.Event()
    closed = threading.Event()
    started_at: list[float] = []
    closed_at: list[float] = []

    class SlowStart:
        def __iter__(self) -> Iterator[bytes]:
            nonlocal produced
            left.wait(TIMEOUT)  # silent until the client has gone
            started_at.append(time.monotonic())
            for _ in range(400):  # 4 s at most
                produced += 1
                yield b"x" * 1024
                time.sleep(0.01)

        def close(self) -> None:
            closed_at.append(time.monotonic())
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> SlowStart:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return SlowStart()

    srv = asgi_server(to_asgi(validator(app)))
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(request("GET", "/slow-start"))
    left.set()
    wait_true(closed, "close() after the client left")
    assert closed_at[0] - started_at[0] < 1.0, f"close() came {closed_at[0] - started_at[0]:.2f}s into the stream"
    assert produced < 100


def test_backpressure_stalls_producer(asgi_server: StartServer) -> None:
    """A client that stops reading: the app is held at a bounded number of chunks ahead, and resumes when the
    client reads again."""
    chunk = b"b" * 65536
    limit = 1024  # 64 MiB if nothing held the app back
    produced = 0
    progress = threading.Condition()
    closed = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        nonlocal produced
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        try:
            for _ in range(limit):
                with progress:
                    produced += 1
                    progress.notify_all()
                yield chunk
        finally:
            closed.set()

    def wait_stall(quiet: float = 0.5, budget: float = 10.0) -> int:
        """The production count once it has not moved for ``quiet`` seconds."""
        deadline = time.monotonic() + budget
        with progress:
            last = produced
            while time.monotonic() < deadline:
                progress.wait(quiet)
                if produced == last:
                    return last
                last = produced
        raise AssertionError(f"the producer never stalled ({produced} chunks)")

    srv = asgi_server(to_asgi(validator(app)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(TIMEOUT)
        sock.connect((srv.host, srv.port))
        sock.sendall(request("GET", "/big"))
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
        stalled = wait_stall()
        assert stalled * len(chunk) <= 16 * 1024 * 1024, f"{stalled} chunks of 64 KiB produced for a stalled client"
        # Reading again lets the app go on (the lock is not held while reading: the app takes it to count).
        deadline = time.monotonic() + TIMEOUT
        while produced <= stalled + 4 and time.monotonic() < deadline:
            assert sock.recv(1 << 20), "the server closed the connection"
        assert produced > stalled + 4
    finally:
        sock.close()
    wait_true(closed, "close() after the client left")


# -- lifespan, websockets ----------------------------------------------------------------------------------------------


def test_lifespan_startup_and_shutdown_answered(asgi_server: StartServer) -> None:
    before = set(threading.enumerate())
    srv = asgi_server(to_asgi(validator(text_app(b"alive"))))
    assert srv.lifespan.received == ["lifespan.startup"]
    assert srv.lifespan.sent == ["lifespan.startup.complete"]
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/")
    assert (resp.status_code, resp.content) == (200, b"alive")
    workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("asyncwsgi-asgi")]
    assert workers, "the request ran on no adapter thread"
    srv.stop()
    assert srv.lifespan.received == ["lifespan.startup", "lifespan.shutdown"]
    assert srv.lifespan.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert srv.lifespan.failed is None
    for t in workers:  # lifespan shutdown stops the adapter's thread pool
        t.join(TIMEOUT)
    assert [t.name for t in workers if t.is_alive()] == []


def test_websocket_handshake_refused(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    called: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"http"]

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(
        request(
            "GET",
            "/ws",
            (
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ),
        )
    )
    try:
        resp = client.read_response()
    except http.client.RemoteDisconnected:
        pytest.fail("the connection closed without an answer")
    # ASGI: a websocket.close before websocket.accept is answered with 403 by the server.
    assert resp.status == 403
    assert called == []  # the WSGI app never sees a websocket


# -- HEAD, 204, 304 ----------------------------------------------------------------------------------------------------


def _body_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/listed":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"listed body"]
    if path == "/declared":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return iter([b"declared body"])
    if path == "/streamed":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"streamed ", b"body"])
    if path == "/204":
        start_response("204 No Content", [])
        return [b"body the server must drop"]
    if path == "/304":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return iter([b"dropped", b" too"])
    if path == "/304-listed":
        start_response("304 Not Modified", [("ETag", '"v1"')])
        return [b"dropped as well"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"next"]


@pytest.mark.parametrize(
    ("method", "path", "status", "length"),
    [
        ("HEAD", "/listed", 200, "11"),
        ("HEAD", "/declared", 200, "13"),
        ("HEAD", "/streamed", 200, None),
        ("GET", "/204", 204, None),
        ("HEAD", "/204", 204, None),
        ("GET", "/304", 304, None),
        ("GET", "/304-listed", 304, None),
        ("HEAD", "/304-listed", 304, None),
    ],
)
def test_responses_without_body(
    asgi_server: StartServer,
    raw: Callable[..., RawClient],
    method: str,
    path: str,
    status: int,
    length: str | None,
) -> None:
    """No body bytes on the wire (the next response on the connection parses cleanly); HEAD reports the length a GET
    would have when it is known; 204 and 304 carry no Content-Length made up from the body they drop (RFC 9110
    section 8.6: never on a 204; on a 304 only the length a 200 would have, which the server cannot know)."""
    srv = asgi_server(to_asgi(_body_app))
    client = raw(srv)
    client.send(request(method, path))
    resp = client.read_response(method)
    # Everything is observed before the first assertion: the server is done with the connection by then (a failing
    # assertion formatted while a server thread logs a traceback can trip a Python 3.11 race in the ast module).
    client.send(request("GET", "/next"))
    try:
        after = client.read_response()
        next_outcome: Any = (after.status, after.body)
    except (http.client.HTTPException, OSError) as exc:
        next_outcome = f"the next request failed: {exc!r}"
    assert resp.status == status
    assert resp.body == b""
    assert resp.header("Content-Length") == length
    if status in (204, 304):
        assert resp.header("Transfer-Encoding") is None
    if status == 304:
        assert resp.header("ETag") == '"v1"'
    assert next_outcome == (200, b"next")


def test_get_bodies_for_comparison(asgi_server: StartServer) -> None:
    """The GETs of the HEAD cases above carry the bodies HEAD left out."""
    srv = asgi_server(to_asgi(_body_app))
    with httpx.Client(timeout=TIMEOUT) as client:
        got = {p: client.get(srv.url + p) for p in ("/listed", "/declared", "/streamed")}
    assert {p: (r.status_code, r.content) for p, r in got.items()} == {
        "/listed": (200, b"listed body"),
        "/declared": (200, b"declared body"),
        "/streamed": (200, b"streamed body"),
    }
    assert got["/listed"].headers["content-length"] == "11"
    assert got["/streamed"].headers.get("transfer-encoding") == "chunked"


# -- more edges: unread bodies, 100-continue, short bodies, Connection: close, big bodies, misuse ----------------------


def test_client_disconnect_with_unread_request_body_stops_iterable(asgi_server: StartServer) -> None:
    """As ``test_client_disconnect_mid_stream_stops_iterable``, but the request has a body the app never reads: 600
    KiB of a declared 1.2 MiB, more than the adapter buffers (so it has stopped asking the server for the rest). The
    client leaving must still stop the iterable within 1 s. It leaves once the app has streamed for a while (20
    chunks, about 0.2 s), long after those 600 KiB reached the server."""
    streaming = threading.Event()
    closed = threading.Event()
    closed_at: list[float] = []
    produced = 0

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            nonlocal produced
            for _ in range(400):  # 4 s at most
                produced += 1
                if produced == 20:
                    streaming.set()
                yield b"x" * 1024
                time.sleep(0.01)

        def close(self) -> None:
            closed_at.append(time.monotonic())
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Endless:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    srv = asgi_server(to_asgi(app))
    body = b"u" * (600 * 1024)
    with socket.create_connection((srv.host, srv.port), timeout=TIMEOUT) as sock:
        sock.sendall(request("POST", "/ignores-body", (f"Content-Length: {len(body) * 2}",), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        wait_true(streaming, "20 chunks")
    left_at = time.monotonic()
    closed_in_time = closed.wait(2.0)
    assert closed_in_time, f"close() not called 2 s after the client left ({produced} chunks produced so far)"
    assert closed_at[0] - left_at < 1.0, f"close() came {closed_at[0] - left_at:.2f}s after the client left"


def test_expect_continue_not_answered_when_app_refuses_body(
    asgi_server: ServerFactory, raw: Callable[..., RawClient]
) -> None:
    """``Expect: 100-continue`` and an app that answers 413 without reading ``wsgi.input``: the client is told 413
    and never invited to send the body (as asyncwsgi's own server does: 100 only when the app first reads). ASGI
    leaves the 100 to the server, sent when the application first awaits ``receive()`` (uvicorn); hypercorn sends it
    as soon as the request head arrives, whatever the app does, so there is nothing the adapter can do there."""
    if asgi_server.kind.startswith("hypercorn"):
        pytest.skip("hypercorn answers 100 Continue itself before the application runs")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("413 Content Too Large", [("Content-Type", "text/plain"), ("Content-Length", "9")])
        return [b"too large"]

    srv = asgi_server(to_asgi(validator(app)))
    client = raw(srv)
    client.send(request("POST", "/upload", ("Content-Length: 100000000", "Expect: 100-continue")))
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 413 "), head  # ASGI carries no reason phrase: the server picks its own


def test_expect_continue_answered_when_app_reads(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"got " + data]

    srv = asgi_server(to_asgi(validator(app)))
    client = raw(srv)
    client.send(request("POST", "/upload", ("Content-Length: 5", "Expect: 100-continue")))
    assert client.read_head().startswith(b"HTTP/1.1 100 ")
    client.send(b"abcde")
    resp = client.read_response("POST")
    assert (resp.status, resp.body) == (200, b"got abcde")


def test_short_body_ends_the_connection(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    """Content-Length 10 declared, 5 bytes sent: the connection must close after them (RFC 9112 section 6.3: an
    incomplete message), never wait for bytes that will not come."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        yield b"12345"

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(request("GET", "/short"))
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 10\r\n" in head.lower()
    assert client.read_all() == b"12345"  # then EOF, within the socket timeout


def test_app_connection_close_honoured(asgi_server: StartServer, raw: Callable[..., RawClient]) -> None:
    """A WSGI app's ``Connection: close`` asks the server to close after this response (asyncwsgi's own server
    honours it); through the adapter the request should reach the ASGI server, which can do the same."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close")])
        return [b"bye"]

    srv = asgi_server(to_asgi(app))
    client = raw(srv)
    client.send(request("GET", "/"))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"bye")
    assert (resp.header("Connection") or "").lower() == "close"
    assert client.is_closed(2.0)


def test_large_streamed_response_intact(asgi_server: StartServer) -> None:
    blocks = [hashlib.sha256(b"%d" % i).digest() * 2048 for i in range(128)]  # 128 distinct 64 KiB blocks, 8 MiB
    expected = hashlib.sha256(b"".join(blocks)).hexdigest()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        yield from blocks

    srv = asgi_server(to_asgi(validator(app)))
    digest = hashlib.sha256()
    size = 0
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("GET", srv.url + "/big") as resp:
        assert resp.status_code == 200
        for piece in resp.iter_bytes():
            digest.update(piece)
            size += len(piece)
    assert (size, digest.hexdigest()) == (128 * 65536, expected)


def test_to_asgi_refuses_non_callable() -> None:
    with pytest.raises(TypeError, match="WSGI callable"):
        to_asgi("app:module")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_unsupported_scope_type() -> None:
    async def receive() -> Any:
        raise AssertionError("not expected to receive")

    async def send(message: Any) -> None:
        raise AssertionError("not expected to send")

    with pytest.raises(ValueError, match="unsupported ASGI scope type 'webtransport'"):
        await to_asgi(text_app())({"type": "webtransport"}, receive, send)


@pytest.mark.asyncio
async def test_send_failing_mid_response_raises_closes_and_logs_no_loop_error(caplog: pytest.LogCaptureFixture) -> None:
    """An ASGI server whose send() fails (its client is gone) gets the error back from the adapter; the app's iterable
    is closed, and what the worker still posts after the cut is dropped, not reported as a loop error."""
    closed = threading.Event()

    def body() -> Iterator[bytes]:
        try:
            for _ in range(1000):  # bounded; the cut ends it much earlier
                yield b"x" * 65536
        finally:
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body()

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(TIMEOUT)  # no disconnect message: the cut comes from send()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")

    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
    adapter = to_asgi(app)
    caplog.set_level(logging.ERROR, logger="asyncwsgi.error")
    try:
        with pytest.raises(OSError, match="connection reset"):
            await adapter(scope, receive, send)
        assert await asyncio.to_thread(closed.wait, TIMEOUT), "the iterable was not closed after the cut"
        pool = adapter.loop_side().pool
        deadline = time.monotonic() + TIMEOUT
        while pool.busy and time.monotonic() < deadline:  # the worker's call has returned
            await asyncio.sleep(0.01)
        assert pool.busy == 0, "the worker did not finish"
        for _ in range(3):  # then the loop handles what it posted on the way out
            await asyncio.sleep(0)
    finally:
        adapter.close()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    loop_errors = [r for r in caplog.records if "in the event loop" in r.getMessage()]
    assert loop_errors == []


@pytest.mark.asyncio
async def test_empty_path_in_scope_is_served() -> None:
    """A scope with an empty path and no raw_path reaches the app as the root path (it used to be a 500)."""
    seen: dict[str, Any] = {}
    adapter = to_asgi(environ_recorder(seen))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(TIMEOUT)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "", "query_string": b"", "headers": []}
    try:
        await adapter(scope, receive, send)
    finally:
        adapter.close()
    assert sent[0]["status"] == 200
    assert (seen["REQUEST_METHOD"], seen["PATH_INFO"]) == ("GET", "/")


@pytest.mark.asyncio
async def test_a_body_buffer_the_server_reuses_is_not_kept() -> None:
    """``wsgi.input`` keeps what it is fed without copying bytes; a server that hands over a bytearray and reuses it
    for the next message must not change the body the app reads."""
    got: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        got.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    adapter = to_asgi(app)
    buffer = bytearray(b"hello")
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": buffer, "more_body": True},
        {"type": "http.request", "body": b" world", "more_body": False},
    ]
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            buffer[:] = b"XXXXX"  # the server reuses its buffer for the next read
        if messages:
            return messages.pop(0)
        await asyncio.sleep(TIMEOUT)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(b"content-length", b"11")],
    }
    try:
        await adapter(scope, receive, send)
    finally:
        adapter.close()
    assert sent[0]["status"] == 200
    assert got == [b"hello world"]


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_finished_request_is_freed_without_the_cyclic_collector(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the adapter keeps per request (the exchange, and the request body its stream holds) is freed by reference
    counting once the request is answered: a reference cycle (the exchange holding its pump task, whose coroutine
    holds the exchange) kept every request's body until the cyclic collector ran, doubling the adapter's peak memory
    under a POST load."""
    from asyncwsgi import asgi

    made: list[weakref.ref[Any]] = []
    real_init = asgi._Exchange.__init__

    def recording_init(self: Any, *args: Any) -> None:
        real_init(self, *args)
        made.append(weakref.ref(self))

    monkeypatch.setattr(asgi._Exchange, "__init__", recording_init)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    body = b"b" * 65536 if method == "POST" else b""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(TIMEOUT)  # the client stays until the response is done
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-length", str(len(body)).encode())] if body else []
    scope = {"type": "http", "method": method, "path": "/", "raw_path": b"/", "query_string": b"", "headers": headers}
    adapter = to_asgi(app)
    gc.disable()
    try:
        await adapter(scope, receive, send)
        for _ in range(5):  # the pump task, if any, handles its cancellation
            await asyncio.sleep(0)
        # The worker posts the end of the response before it lets go of its job (which holds the call, which holds
        # the exchange): wait until it has parked.
        pool = adapter.loop_side().pool
        deadline = time.monotonic() + TIMEOUT
        while pool.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert pool.busy == 0
        assert sent[-1]["body"] == body
        assert len(made) == 1
        assert made[0]() is None, "the exchange outlived its request (a reference cycle)"
    finally:
        gc.enable()
        adapter.close()


def _ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


async def _get(adapter: Any) -> list[dict[str, Any]]:
    """One GET through the adapter, called directly as an ASGI server would: the messages it sent (callers bound it
    in time)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
    await adapter(scope, receive, send)
    return sent


def test_one_adapter_serves_one_event_loop_after_another() -> None:
    """An adapter made once (at import, as a framework's app object is) and served by one event loop after another
    (asyncio.run() per test, an application restarted in-process): each loop gets threads of its own; those of a loop
    that has ended stop. Bound to the first loop, the pool scheduled its growth check on that closed loop, and the
    second loop's requests failed with 'Event loop is closed' once more than a few waited for a thread."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(0.01)  # requests overlap: more wait than the few threads started at once
        return _ok(environ, start_response)

    adapter = to_asgi(validator(app), threads=32)
    pools = []

    async def many(n: int) -> list[int]:
        answers = await asyncio.wait_for(asyncio.gather(*(_get(adapter) for _ in range(n))), TIMEOUT)
        pools.append(adapter.loop_side().pool)
        return [int(sent[0]["status"]) for sent in answers]

    try:
        assert asyncio.run(many(40)) == [200] * 40
        assert asyncio.run(many(40)) == [200] * 40
        assert pools[0] is not pools[1]
        first = pools[0]
        assert wait_until(lambda: first.threads == 0, timeout=TIMEOUT), "the ended loop's threads were kept"
    finally:
        adapter.close()


@pytest.mark.asyncio
async def test_close_in_the_loop_iteration_of_a_held_request_still_answers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a saturated CPU the adapter's pool holds the requests of a loop iteration until the iteration ends;
    close() (a lifespan shutdown, or the application's own) in that iteration hands them over first: dropped by the
    shutdown, the request would wait for an answer that never comes."""
    from asyncwsgi.wsgi import pool as pool_module

    monkeypatch.setattr(pool_module, "SAMPLE_INTERVAL", 0.0)  # sample at every submit
    cpu = iter(range(0, 10**9, 1000))
    monkeypatch.setattr(pool_module.time, "process_time", lambda: float(next(cpu)))  # always saturated
    adapter = to_asgi(validator(_ok))
    task = asyncio.create_task(_get(adapter))
    await asyncio.sleep(0)  # the task submits its call (held); this coroutine resumes before the hand-over runs
    pool = adapter.loop_side().pool
    assert pool.queued == 1 and pool.threads == 0, "the request was not held"
    adapter.close()
    sent = await asyncio.wait_for(task, TIMEOUT)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200


def test_sides_of_loops_left_unclosed_are_bounded() -> None:
    """An application that makes event loops and never closes them does not keep a pool (and its threads) per loop
    for good: past 16, those of loops not running are let go."""
    adapter = to_asgi(validator(_ok), threads=2)

    async def one() -> tuple[int, Any]:
        sent = await asyncio.wait_for(_get(adapter), TIMEOUT)
        return int(sent[0]["status"]), adapter.loop_side().pool

    loops = [asyncio.new_event_loop() for _ in range(20)]
    try:
        results = [loop.run_until_complete(one()) for loop in loops]  # none closed
        assert [status for status, _ in results] == [200] * 20
        first = results[0][1]
        assert wait_until(lambda: first.threads == 0, timeout=TIMEOUT), "the first loop's threads were kept"
        assert len(adapter._sides) <= 16
    finally:
        adapter.close()
        for loop in loops:
            loop.close()


@pytest.mark.asyncio
async def test_each_response_gets_a_header_list_of_its_own() -> None:
    """The encoded header list is remembered per response header list; what an ASGI middleware adds to one
    response's list (Starlette's MutableHeaders appends in place) must not show up in the next response."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Kind", "Same"), ("Content-Length", "2")])
        return [b"ok"]

    adapter = to_asgi(validator(app))
    try:
        first = await asyncio.wait_for(_get(adapter), TIMEOUT)
        first[0]["headers"].append((b"x-added", b"by middleware"))
        second = await asyncio.wait_for(_get(adapter), TIMEOUT)
    finally:
        adapter.close()
    assert second[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-kind", b"Same"), (b"content-length", b"2")]
    assert first[0]["headers"] is not second[0]["headers"]


def test_close_from_another_thread_leaves_a_running_loop_its_own_pool_to_stop() -> None:
    """close() on one thread (a lifespan shutdown of one server, an operator's thread) while another thread's loop
    holds requests for the end of its iteration: they are handed over, and the pool shut down, on that loop's own
    thread (asyncio's debug mode raises if anything of that loop is touched from another, as the hand-over did when
    close() did it itself), and every request is answered."""
    adapter = to_asgi(validator(_ok))
    ready, closed = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    async def serve() -> None:
        pool = results["pool"] = await _pool_of(adapter)
        pool._batching = True  # as on a saturated CPU...
        pool._sample_wall = time.monotonic() + 3600  # ...for good
        pool._defer = lambda release: None  # and this loop's own hand-over never comes: only close() hands over
        tasks = [asyncio.ensure_future(_get(adapter)) for _ in range(8)]  # more than the threads started at once
        await asyncio.sleep(0)
        results["held"] = pool.queued
        ready.set()
        deadline = time.monotonic() + TIMEOUT
        while not closed.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        answers = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        results["statuses"] = [sent[0]["status"] for sent in answers]

    def run() -> None:
        try:
            asyncio.run(serve(), debug=True)
        except BaseException as exc:  # reported below
            results["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(TIMEOUT)
        assert results["held"] == 8
        adapter.close()  # from this thread, while the other loop runs
    finally:
        closed.set()
        thread.join(TIMEOUT)
        adapter.close()
    assert "error" not in results, results.get("error")
    assert results["statuses"] == [200] * 8
    first = results["pool"]
    assert wait_until(lambda: first.threads == 0, timeout=TIMEOUT), "the pool was not shut down"


def test_trio_runs_share_one_pool() -> None:
    """A trio run has nothing a pool needs to be bound to: one pool serves them all, and a run that ends leaves no
    threads of its own behind (a pool per run kept up to 16 x threads idle)."""
    trio = pytest.importorskip("trio")
    adapter = to_asgi(validator(_ok), threads=8)
    pools = []

    async def one() -> None:
        sent: list[dict[str, Any]] = []

        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await trio.sleep(TIMEOUT)  # the client stays until the response is done
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
        with trio.fail_after(TIMEOUT):
            await adapter(scope, receive, send)
        assert sent[0]["status"] == 200
        pools.append(adapter.loop_side().pool)

    try:
        for _ in range(3):
            trio.run(one)
        assert pools[0] is pools[1] is pools[2]
    finally:
        adapter.close()
    assert wait_until(lambda: pools[0].threads == 0, timeout=TIMEOUT)


def test_close_after_a_loop_closed_with_requests_held_stops_every_pool() -> None:
    """A loop closed while its pool still held requests for the end of an iteration it never finished (nothing
    waits for them any more): close() must not hand them over through that closed loop (it raised 'Event loop is
    closed', and the pools after it were never shut down)."""
    adapter = to_asgi(validator(_ok))
    loop, other = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        held_pool = loop.run_until_complete(_pool_of(adapter))
        held_pool._batching = True  # as on a saturated CPU...
        held_pool._sample_wall = time.monotonic() + 3600  # ...for good
        held_pool._defer = lambda release: None  # and the end of the iteration never comes

        async def submit() -> Any:
            tasks = [asyncio.ensure_future(_get(adapter)) for _ in range(8)]  # more than the threads started at once
            await asyncio.sleep(0)  # the requests are submitted, and held
            return tasks

        tasks = loop.run_until_complete(submit())
        assert held_pool.queued == 8
        other_pool = other.run_until_complete(_pool_of(adapter))
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
        adapter.close()  # must not raise
    finally:
        other.close()
        loop.close()
    assert held_pool._shutdown and other_pool._shutdown, "a pool was not shut down"
    assert wait_until(lambda: other_pool.threads == 0 and held_pool.threads == 0, timeout=TIMEOUT)


async def _pool_of(adapter: Any) -> Any:
    await asyncio.wait_for(_get(adapter), TIMEOUT)
    return adapter.loop_side().pool
