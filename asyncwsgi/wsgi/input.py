"""``wsgi.input``: the request body, streamed from the connection to the app on demand.

Threads: the event-loop thread calls ``feed``/``feed_eof``/``abort`` (the "loop side"); the app's worker thread calls
``read``/``readline``/``readlines``/iteration (the "worker side"). They meet under one ``threading.Condition``.
The worker never touches the transport: when it needs the loop to act (send ``100 Continue``, resume reading after
flow control paused it) it asks through ``request_loop``, which posts to the loop thread.

Memory is bounded: the loop pauses reading from the socket once ``buffered`` passes the high-water mark and resumes
when the app has drained it, so a slow app holds at most about one high-water mark of body plus one socket read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from ..errors import ClientDisconnected, RequestBodyTimeout

__all__ = ["BODY_HIGH_WATER", "EmptyInput", "InputStream"]

#: Buffered request-body bytes above which the loop stops reading the socket.
BODY_HIGH_WATER = 256 * 1024
_LOW_WATER = BODY_HIGH_WATER // 4
_READ_ALL_CHUNK = 64 * 1024
_DISCARDED = ClientDisconnected("the response is complete; the rest of the request body was discarded")


class InputStream:
    """A blocking, file-like request body fed by the loop. Follows PEP 3333's ``wsgi.input`` (input terminated)."""

    # what the worker asks the loop for, through request_loop
    WANT_CONTINUE = "continue"
    WANT_MORE = "more"
    WANT_CLOSE = "close"

    def __init__(
        self,
        request_loop: Callable[[str], None],
        expect_continue: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._buf = bytearray()
        self._eof = False
        self._error: OSError | None = None
        self._request_loop = request_loop
        self._expect_continue = expect_continue
        self._timeout = timeout
        self._resume_asked = False
        self._discard = False
        #: set by the loop when it paused reading because this body's buffer is full; read by the worker.
        self.paused = False
        #: bytes received from the client so far (loop side).
        self.received = 0

    # -- loop side ---------------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def complete(self) -> bool:
        return self._eof

    @property
    def failed(self) -> bool:
        """The body broke off (client gone, malformed, timed out); the connection's framing cannot be trusted."""
        return self._error is not None and self._error is not _DISCARDED

    def feed(self, data: bytes) -> None:
        with self._cond:
            self.received += len(data)
            if self._discard:
                return
            self._buf += data
            self._cond.notify()

    def feed_eof(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify()

    def discard(self) -> None:
        """The response is complete: drop what is buffered and whatever of this body still arrives."""
        with self._cond:
            self._discard = True
            self._buf.clear()
            self.paused = False
            if not self._eof:
                self._error = _DISCARDED
            self._cond.notify()

    def pause(self) -> None:
        """The loop stopped reading the socket because of this buffer. Wakes a waiting reader so that it asks for
        more once it has drained the buffer (it may have checked ``paused`` just before this)."""
        with self._cond:
            if not self.paused:
                self.paused = True
                self._resume_asked = False
                self._cond.notify()

    def abort(self, exc: OSError) -> None:
        """The client went away (or stalled) before the body was complete: every pending and later read raises."""
        with self._cond:
            if not self._eof:
                self._error = exc
            self._cond.notify()

    # -- worker side -------------------------------------------------------------------------------------------------

    def _fill(self, need: int | None, line: bool = False) -> None:
        """Wait (lock held) until ``need`` bytes are buffered, or a whole line if ``line``, or the body ended."""
        buf = self._buf
        while not self._eof:
            if self._error is not None:
                raise self._error
            if (need is not None and len(buf) >= need) or (line and b"\n" in buf):
                return
            if self._expect_continue:
                self._expect_continue = False
                if not self.received:
                    self._request_loop(self.WANT_CONTINUE)
            if self.paused and not self._resume_asked:
                self._resume_asked = True
                self._request_loop(self.WANT_MORE)
            if not self._cond.wait(self._timeout):
                self._error = RequestBodyTimeout(f"no request body data for {self._timeout}s")
                self._request_loop(self.WANT_CLOSE)
                raise self._error

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if self.paused and not self._resume_asked and len(buf) <= _LOW_WATER:
            self._resume_asked = True
            self._request_loop(self.WANT_MORE)
        return data

    def read(self, size: int | None = -1) -> bytes:
        with self._cond:
            if size is None or size < 0:
                parts: list[bytes] = []
                while True:
                    self._fill(_READ_ALL_CHUNK)
                    if not self._buf:
                        return b"".join(parts)
                    parts.append(self._take(len(self._buf)))
            if size == 0:
                return b""
            self._fill(size)
            return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        if limit == 0:
            return b""
        with self._cond:
            self._fill(limit, line=True)
            nl = self._buf.find(b"\n", 0, limit)
            if nl >= 0:
                return self._take(nl + 1)
            return self._take(len(self._buf) if limit is None else limit)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        """Apps may call it; the body's lifetime is the server's business."""


class EmptyInput:
    """``wsgi.input`` for a request without a body: shared and stateless."""

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        pass
