"""Response framing without I/O: status line and headers to bytes, chunk framing, canned error responses.

Pure functions, safe to call from any thread. The ``Date`` value is cached and recomputed at most once a second.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

__all__ = ["CHUNK_END", "CONTINUE", "DATE", "error_response", "frame_chunk", "http_date", "refresh_date"]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNK_END = b"0\r\n\r\n"

#: ``[value, start, end, field]``: the current IMF-fixdate, the ``time.time()`` second it stands for, and the whole
#: ``Date: ...\r\n`` header line. Read inline on the hot path (``DATE[0]`` or ``DATE[3]`` once
#: ``DATE[1] <= time.time() < DATE[2]`` holds, else ``refresh_date()`` first), where a call per response costs. The
#: check holds both ways, so a clock stepped back is followed too. Threads may race to refresh; a reader sees at
#: worst the previous second's value.
DATE: list[Any] = ["", 0.0, 0.0, ""]


def refresh_date() -> None:
    second = int(time.time())
    value = formatdate(second, usegmt=True)
    DATE[:] = [value, float(second), second + 1.0, f"Date: {value}\r\n"]


def http_date() -> str:
    """The current time as an IMF-fixdate, recomputed at most once per second."""
    if not DATE[1] <= time.time() < DATE[2]:
        refresh_date()
    return str(DATE[0])


def frame_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def error_response(status: int, detail: str | None = None, *, server_header: bool = True) -> bytes:
    """A small, complete response that closes the connection, for errors the server answers itself."""
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n" if detail is None else f"{status} {phrase}: {detail}\n"
    body_bytes = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body_bytes)}\r\n"
        f"Connection: close\r\n"
        f"Date: {http_date()}\r\n"
    )
    if server_header:
        head += "Server: asyncwsgi\r\n"
    if status == 503:
        head += "Retry-After: 1\r\n"
    return (head + "\r\n").encode("latin-1") + body_bytes
