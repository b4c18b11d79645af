"""Helpers for the PEP 3333 tests: building raw requests, reading until the server closes, recording apps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..helpers import RawClient

#: Upper bound for any single wait on the server in these tests.
WAIT = 5.0


def request_bytes(
    method: str = "GET",
    target: str | bytes = "/",
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body: bytes = b"",
    version: str = "1.1",
    host: str | None = "test.local",
) -> bytes:
    """One request, byte for byte. ``Host`` is added (first) unless ``host`` is None; nothing else is added."""

    def b(x: str | bytes) -> bytes:
        return x if isinstance(x, bytes) else x.encode("latin-1")

    lines = [b"%s %s HTTP/%s" % (b(method), b(target), b(version))]
    if host is not None:
        lines.append(b"Host: " + b(host))
    lines += [b(name) + b": " + b(value) for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    """A chunked request body (RFC 9112 section 7.1) made of ``chunks``, with the last-chunk."""
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"


def read_until_close(client: RawClient, timeout: float = WAIT) -> bytes:
    """Everything the server sends until it closes the connection. Fails (instead of hanging) if the server neither
    sends nor closes for ``timeout`` seconds; a reset counts as a close."""
    client.sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while time.monotonic() < deadline:
            try:
                chunk = client.file.read1(65536)
            except (ConnectionResetError, BrokenPipeError):
                return b"".join(chunks)
            except TimeoutError:
                raise AssertionError(
                    f"the server kept the connection open for {timeout}s after sending {sum(map(len, chunks))} bytes"
                ) from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
        raise AssertionError(f"the server was still sending after {timeout}s")
    finally:
        client.sock.settimeout(client.timeout)


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    """``(head, body)`` of one raw response; the head without its final blank line."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    return head, body


class EnvironRecorder:
    """A minimal app that keeps a copy of every environ it is called with and answers ``200 ok``."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.environs.append(environ.copy())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    @property
    def last(self) -> dict[str, Any]:
        assert self.environs, "the application was never called"
        return self.environs[-1]


class Closing:
    """A response iterable that records ``close()`` calls; ``items`` may hold exceptions to raise in ``__next__``
    and callables to call there (their return value is yielded)."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items: Iterator[Any] = iter(items)
        self.close_calls = 0
        self.closed = threading.Event()

    def __iter__(self) -> Closing:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        if isinstance(item, BaseException):
            raise item
        if callable(item):
            return item()
        return item

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()
