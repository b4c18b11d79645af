"""``wsgi.input``: the request body, streamed from the connection to the app on demand.

Threads: the event-loop thread calls ``feed``/``feed_eof``/``pause``/``discard``/``abort`` (the "loop side"); the
app's worker thread calls ``read``/``readline``/``readlines``/iteration (the "worker side"). They share one lock.
There is at most one reader (the request's worker), so instead of a ``threading.Condition`` the reader parks on a
lock of its own and says what it waits for (``_need`` bytes, or a newline); the loop wakes it only once that is
buffered or something else changed (end of body, error, pause), not for every piece of body that arrives.
The worker never touches the transport: when it needs the loop to act (send ``100 Continue``, resume reading after
flow control paused it) it asks through ``request_loop``, which posts to the loop thread.

Memory is bounded: the loop pauses reading from the socket once ``buffered`` reaches ``high_water`` and resumes when
the app has drained it, so a slow app holds at most about one high-water mark of body plus one socket read. The
mark is ``BODY_HIGH_WATER``, or more while the app waits in ``read(n)`` for a larger ``n`` (it asked for that much).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from ..errors import ClientDisconnected, RequestBodyTimeout

__all__ = ["BODY_HIGH_WATER", "EmptyInput", "InputStream"]

#: Buffered request-body bytes above which the loop stops reading the socket.
BODY_HIGH_WATER = 256 * 1024
_LOW_WATER = BODY_HIGH_WATER // 4
_READ_ALL_CHUNK = 64 * 1024
_DISCARDED = ClientDisconnected("the response is complete; the rest of the request body was discarded")
_NEVER = 1 << 62  # a need no buffer reaches: readline() without a limit waits for a newline or the end
_allocate_lock = threading.Lock
_monotonic = time.monotonic


class InputStream:
    """A blocking, file-like request body fed by the loop. Follows PEP 3333's ``wsgi.input`` (input terminated)."""

    # what the worker asks the loop for, through request_loop
    WANT_CONTINUE = "continue"
    WANT_MORE = "more"
    WANT_CLOSE = "close"

    __slots__ = (
        "_chunks",
        "_discard",
        "_eof",
        "_error",
        "_expect_continue",
        "_fed_at",
        "_line",
        "_lock",
        "_need",
        "_pos",
        "_request_loop",
        "_resume_asked",
        "_size",
        "_timeout",
        "_waiter",
        "high_water",
        "paused",
        "received",
    )

    def __init__(
        self,
        request_loop: Callable[[str], None],
        expect_continue: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._lock = _allocate_lock()
        #: the reader's parked lock while it waits (held; released once to wake it), else None
        self._waiter: threading.Lock | None = None
        #: what the parked reader waits for: this many bytes buffered, or (``_line``) a newline in new data
        self._need = 0
        self._line = False
        #: when the loop last fed data that did not wake the reader (for the body timeout)
        self._fed_at = 0.0
        #: the unread body: pieces as the loop fed them (never copied on the way in), the first read from ``_pos``
        self._chunks: deque[bytes] = deque()
        self._pos = 0
        self._size = 0
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
        #: buffered bytes at which the loop pauses reading (set by the worker, read by the loop).
        self.high_water = BODY_HIGH_WATER

    # -- loop side ---------------------------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def complete(self) -> bool:
        return self._eof

    @property
    def failed(self) -> bool:
        """The body broke off (client gone, malformed, timed out); the connection's framing cannot be trusted."""
        return self._error is not None and self._error is not _DISCARDED

    def _wake(self) -> None:
        # Lock held.
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.release()

    def feed(self, data: bytes) -> None:
        with self._lock:
            self.received += len(data)
            if self._discard:
                return
            self._chunks.append(data)
            size = self._size = self._size + len(data)
            waiter = self._waiter
            if waiter is not None:
                if size >= self._need or (self._line and data.find(b"\n") >= 0):
                    self._waiter = None
                    waiter.release()
                elif self._timeout is not None:
                    self._fed_at = _monotonic()

    def feed_eof(self) -> None:
        with self._lock:
            self._eof = True
            self._wake()

    def discard(self) -> None:
        """The response is complete: drop what is buffered and whatever of this body still arrives."""
        with self._lock:
            self._discard = True
            self._chunks.clear()
            self._pos = self._size = 0
            self.paused = False
            if not self._eof:
                self._error = _DISCARDED
            self._wake()

    def pause(self) -> None:
        """The loop stopped reading the socket because of this buffer. Wakes a waiting reader so that it asks for
        more once it has drained the buffer (it may have checked ``paused`` just before this)."""
        with self._lock:
            if not self.paused:
                self.paused = True
                self._resume_asked = False
                self._wake()

    def abort(self, exc: OSError) -> None:
        """The client went away (or stalled) before the body was complete: every pending and later read raises."""
        with self._lock:
            if not self._eof:
                self._error = exc
            self._wake()

    # -- worker side -------------------------------------------------------------------------------------------------

    def _park(self, timeout: float | None) -> bool:
        """Wait (lock held on entry and on return) until the loop wakes this reader; False if ``timeout`` passed."""
        waiter = _allocate_lock()
        waiter.acquire()
        self._waiter = waiter
        lock = self._lock
        lock.release()
        try:
            woken = waiter.acquire(True, -1 if timeout is None else timeout)
        finally:
            lock.acquire()
        if not woken and self._waiter is not waiter:
            woken = True  # woken between the timeout and taking the lock back
        self._waiter = None
        return woken

    def _fill(self, need: int | None, line: bool = False) -> None:
        """Wait (lock held) until ``need`` bytes are buffered, or a whole line if ``line``, or the body ended."""
        while not self._eof:
            if self._error is not None:
                raise self._error
            if (need is not None and self._size >= need) or (line and self._line_end(need) >= 0):
                return
            self._need = _NEVER if need is None else need
            self._line = line
            # The app asked for this much (or for a whole line, however long): let the loop buffer it.
            mark = self._size + BODY_HIGH_WATER if need is None else need
            if mark > BODY_HIGH_WATER:
                self.high_water = mark
            if self._expect_continue:
                self._expect_continue = False
                if not self.received:
                    self._request_loop(self.WANT_CONTINUE)
            if self.paused and not self._resume_asked:
                self._resume_asked = True
                self._request_loop(self.WANT_MORE)
            timeout = self._timeout
            if timeout is None:
                self._park(None)
                continue
            wait = timeout
            while not self._park(wait):
                # Data that arrived without completing the read counts: the timeout runs from the last piece.
                wait = self._fed_at + timeout - _monotonic()
                if wait <= 0:
                    self._error = RequestBodyTimeout(f"no request body data for {timeout}s")
                    self._request_loop(self.WANT_CLOSE)
                    raise self._error

    def _line_end(self, limit: int | None) -> int:
        """(Lock held.) The length of the first buffered line, newline included, if it ends within ``limit``
        bytes; else -1."""
        pos = self._pos
        offset = 0
        for chunk in self._chunks:
            nl = chunk.find(b"\n", pos)
            if nl >= 0:
                end = offset + nl - pos + 1
                return end if limit is None or end <= limit else -1
            offset += len(chunk) - pos
            if limit is not None and offset >= limit:
                return -1
            pos = 0
        return -1

    def _take(self, n: int) -> bytes:
        """(Lock held.) Up to ``n`` buffered bytes, copied only where they are part of a piece or span pieces: a
        read that takes a whole piece as fed returns that very object."""
        size = self._size
        if n > size:
            n = size
        chunks = self._chunks
        if n:
            first = chunks[0]
            pos = self._pos
            end = pos + n
            if end < len(first):
                data = first[pos:end]
                self._pos = end
            elif end == len(first):
                data = first[pos:] if pos else first
                chunks.popleft()
                self._pos = 0
            else:
                parts = [first[pos:] if pos else first]
                chunks.popleft()
                left = n - (len(first) - pos)
                while left:
                    chunk = chunks[0]
                    if len(chunk) <= left:
                        parts.append(chunk)
                        chunks.popleft()
                        left -= len(chunk)
                    else:
                        parts.append(chunk[:left])
                        self._pos = left
                        break
                else:
                    self._pos = 0
                data = b"".join(parts)
            size = self._size = size - n
        else:
            data = b""
        self.high_water = BODY_HIGH_WATER
        if self.paused and not self._resume_asked and size <= _LOW_WATER:
            self._resume_asked = True
            self._request_loop(self.WANT_MORE)
        return data

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            if size is None or size < 0:
                parts: list[bytes] = []
                while True:
                    self._fill(_READ_ALL_CHUNK)
                    if not self._size:
                        return b"".join(parts)
                    parts.append(self._take(self._size))
            if size == 0:
                return b""
            self._fill(size)
            return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        if limit == 0:
            return b""
        with self._lock:
            self._fill(limit, line=True)
            end = self._line_end(limit)
            if end >= 0:
                return self._take(end)
            return self._take(self._size if limit is None else limit)

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
