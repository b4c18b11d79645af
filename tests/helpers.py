"""Raw-socket HTTP client for framing tests: send exact bytes, read exact responses."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from typing import Any


class _NoCloseFile:
    def __init__(self, f: Any) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        """HTTPResponse closes its file after each body; the next response still needs it."""


class _FileSock:
    """Lets ``http.client.HTTPResponse`` read successive responses from one buffered file."""

    def __init__(self, f: Any) -> None:
        self._f = _NoCloseFile(f)

    def makefile(self, *args: Any, **kwargs: Any) -> Any:
        return self._f


class Response:
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes, version: int) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.version = version

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


class RawClient:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, method: str = "GET") -> Response:
        """Read exactly one response (framed by Content-Length, chunked, or close)."""
        resp = http.client.HTTPResponse(_FileSock(self.file), method=method)  # type: ignore[arg-type]
        resp.begin()
        body = resp.read()
        return Response(resp.status, resp.reason, resp.getheaders(), body, resp.version)

    def read_head(self) -> bytes:
        """Raw bytes up to and including the blank line ending a response head."""
        lines = []
        while True:
            line = self.file.readline(65537)
            if not line:
                raise ConnectionError("connection closed before the end of the response head")
            lines.append(line)
            if line in (b"\r\n", b"\n"):
                return b"".join(lines)

    def read_exactly(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) != n:
            raise ConnectionError(f"expected {n} bytes, got {len(data)}")
        return data

    def read_all(self) -> bytes:
        """Everything until the server closes (bounded by the socket timeout)."""
        chunks = []
        while True:
            chunk = self.file.read1(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def is_closed(self, wait: float = 2.0) -> bool:
        """True if the server closed the connection (EOF or reset) within ``wait`` seconds, with no data first."""
        self.sock.settimeout(wait)
        try:
            return self.file.peek(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` (a counter nothing signals) until it holds or ``timeout`` passes; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
