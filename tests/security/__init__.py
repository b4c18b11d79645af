"""Hardening tests: hostile and malformed requests, slow clients, fuzzing, a soak run and faulty applications, all
through a real server on 127.0.0.1.

Helpers shared by these modules live here: request builders, an app that records its calls, and checks for the
server's canned error responses.
"""

from __future__ import annotations

import http
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.validate import validator

from ..helpers import RawClient, Response, wait_until

#: The most an error response the server writes itself may weigh (status line, a few headers, a one-line body).
SMALL_BODY = 256


def request(
    method: str = "GET",
    path: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.1",
    host: str | None = "test",
) -> bytes:
    """A well-formed request; ``Content-Length`` is added when ``body`` is given and no framing header is."""
    lines = [f"{method} {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    names = set()
    for name, value in headers:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if body and not names & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(path: str = "/", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    return request("GET", path, headers)


class Recorder:
    """A PEP 3333 app (wrapped in ``wsgiref.validate``) that records each call and echoes it.

    The response body is ``METHOD PATH\\n`` followed by the request body, read in pieces with ``read(n)``. ``calls``
    holds ``(method, path)``; ``environs`` the header keys (``HTTP_*``, ``CONTENT_*``) of each call; ``errors`` what
    ``wsgi.input.read`` raised (the app re-raises it, as most apps would); ``called`` is set at each call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        self.environs: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        self.errors: list[BaseException] = []
        self.called = threading.Event()
        self.failed = threading.Event()
        self.app = validator(self._app)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.app(environ, start_response)

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return [p for _, p in self.calls]

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        keys = {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}
        with self._lock:
            self.calls.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
            self.environs.append(keys)
        self.called.set()
        parts = []
        stream = environ["wsgi.input"]
        try:
            while True:
                piece = stream.read(65536)
                if not piece:
                    break
                parts.append(piece)
        except OSError as exc:
            with self._lock:
                self.errors.append(exc)
            self.failed.set()
            raise
        data = b"".join(parts)
        with self._lock:
            self.bodies.append(data)
        body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}\n".encode("latin-1") + data
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]


def send_while_refused(client: RawClient, data: bytes) -> None:
    """Send ``data`` where the server may answer and close before it has read it all (a refused request)."""
    try:
        client.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def assert_refused(client: RawClient, status: int, method: str = "GET") -> Response:
    """The next response is the server's own error response with ``status``, and the server then closes."""
    resp = client.read_response(method)
    phrase = http.HTTPStatus(status).phrase
    assert (resp.status, resp.reason) == (status, phrase), resp
    assert resp.header("Connection") == "close", resp
    assert resp.header("Content-Length") == str(len(resp.body)), resp
    assert resp.header("Content-Type") == "text/plain; charset=utf-8", resp
    assert len(resp.body) < SMALL_BODY, resp
    assert resp.body.startswith(f"{status} {phrase}".encode()), resp
    assert b"Traceback" not in resp.body
    assert client.is_closed(3), "the server must close the connection after an error response"
    return resp


def assert_served(handle: Any, raw: Callable[..., RawClient], path: str = "/fresh") -> None:
    """A well-formed request on a fresh connection gets a 200 answer from the app (which must echo, as
    ``Recorder`` does, or name the path)."""
    client = raw(handle)
    try:
        client.send(get(path))
        resp = client.read_response()
    finally:
        client.close()
    assert resp.status == 200, resp
    assert resp.body.startswith(f"GET {path}".encode()) or resp.body == path.encode(), resp


def no_data_within(client: RawClient, wait: float) -> bool:
    """True if no byte (and no EOF) arrives within ``wait`` seconds, counting what the client already buffered."""
    client.sock.settimeout(0.0)
    try:
        if client.file.peek(1):
            return False
    except (BlockingIOError, TimeoutError):
        pass
    finally:
        client.sock.settimeout(client.timeout)
    readable, _, _ = select.select([client.sock], [], [], wait)
    return not readable


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def read_rss() -> int:
    """This process's resident set size in bytes (``VmRSS``)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class ErrorLog(logging.Handler):
    """Collects the records of the ``asyncwsgi.error`` logger while installed, whatever its level and propagation
    were (the command-line runner sets its own level and stops propagation)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()
        self._logger = logging.getLogger("asyncwsgi.error")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def __enter__(self) -> ErrorLog:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        with self._lock2:
            return [r.getMessage() for r in self.records if r.levelno >= level]

    def texts(self, level: int = logging.DEBUG) -> list[str]:
        """Each record's message followed by its exception's type and text, if it carries one."""
        out = []
        with self._lock2:
            records = [r for r in self.records if r.levelno >= level]
        for r in records:
            text = r.getMessage()
            if r.exc_info and r.exc_info[1] is not None:
                text += f" | {type(r.exc_info[1]).__name__}: {r.exc_info[1]}"
            out.append(text)
        return out

    def wait_for(self, fragment: str, timeout: float = 5.0) -> list[str]:
        """The messages containing ``fragment`` once there is one (polled, bounded), else ``[]``."""

        def found() -> list[str]:
            return [m for m in self.texts() if fragment in m]

        wait_until(lambda: bool(found()), timeout)
        return found()
