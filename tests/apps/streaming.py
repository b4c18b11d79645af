"""WSGI apps for the streaming, backpressure, disconnect and thread-pool tests.

Each app is an object whose state (counters, events, captured exceptions) the test reads; the state is shared
between the worker thread running the app and the test thread, under a ``threading.Condition`` or via
``threading.Event``. The WSGI callable is the ``app`` attribute, wrapped in ``wsgiref.validate.validator``: all of
these apps are PEP 3333-conformant.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

CHUNK = 64 * 1024

#: How long an app blocked on a test's Event waits at most (so a failing test never leaves a thread hanging).
APP_WAIT = 10.0


def numbered_chunk(i: int, size: int = CHUNK) -> bytes:
    """``size`` bytes identifying chunk ``i``: its index as 4 big-endian bytes, repeated (size is a multiple of 4)."""
    return i.to_bytes(4, "big") * (size // 4)


def read_rss() -> int:
    """This process's resident set size in bytes (``VmRSS`` in /proc/self/status)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RSSPeak:
    """The highest RSS seen by ``sample()``, which any thread may call (sampling every ``every`` calls)."""

    def __init__(self, every: int = 8) -> None:
        self.every = every
        self.peak = read_rss()
        self._n = 0
        self._lock = threading.Lock()

    def sample(self) -> None:
        with self._lock:
            self._n += 1
            if self._n % self.every:
                return
        rss = read_rss()
        with self._lock:
            self.peak = max(self.peak, rss)


class Producer:
    """Streams numbered 64 KiB chunks without Content-Length (so chunked) until ``stop`` is set or ``cap`` chunks.

    ``count`` is the number of chunks handed to the server (incremented, with a notify on ``cond``, just before each
    is yielded). ``closed`` is set when the generator is closed or finishes.
    """

    def __init__(self, cap: int = 2000) -> None:
        self.cap = cap
        self.count = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.closed = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        try:
            for i in range(self.cap):
                if self.stop.is_set():
                    return
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()
                yield numbered_chunk(i)
        finally:
            self.closed.set()

    def wait_stalled(self, quiet: float = 0.3, limit: float = 15.0) -> int:
        """Block until ``count`` has not grown for ``quiet`` seconds (bounded by ``limit``); return it."""
        deadline = time.monotonic() + limit
        with self.cond:
            if not self.cond.wait_for(lambda: self.count > 0, timeout=limit):
                raise AssertionError(f"the app produced nothing within {limit}s")
            while time.monotonic() < deadline:
                before = self.count
                if not self.cond.wait_for(lambda before=before: self.count != before, timeout=quiet):
                    return self.count
        raise AssertionError(f"the producer never stalled within {limit}s (count {self.count})")


class TickingBody:
    """A response iterable yielding a small chunk every ``interval`` seconds, forever (bounded by ``cap``), with a
    ``close()`` that sets ``closed``. ``count`` (under ``cond``) is the number of chunks yielded."""

    def __init__(self, owner: TickingStream) -> None:
        self._owner = owner

    def __iter__(self) -> TickingBody:
        return self

    def __next__(self) -> bytes:
        o = self._owner
        if o.count:
            time.sleep(o.interval)  # between chunks, not before the first: the response head goes out at once
        with o.cond:
            if o.count >= o.cap:
                raise StopIteration
            o.count += 1
            o.cond.notify_all()
            return b"tick %06d\n" % o.count

    def close(self) -> None:
        self._owner.closed.set()


class TickingStream:
    def __init__(self, interval: float = 0.01, cap: int = 3000) -> None:
        self.interval = interval
        self.cap = cap
        self.count = 0
        self.cond = threading.Condition()
        self.closed = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return TickingBody(self)


class Writer:
    """Streams with PEP 3333's ``write()`` callable: a line every ``interval`` seconds (bounded by ``cap``), then
    returns an empty list. ``error`` is what ``write()`` raised (``done`` is set when the app returns or raises);
    ``count`` (under ``cond``) is the number of successful writes."""

    def __init__(self, interval: float = 0.01, cap: int = 3000) -> None:
        self.interval = interval
        self.cap = cap
        self.count = 0
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for i in range(self.cap):
                if i:
                    time.sleep(self.interval)
                write(b"line %06d\n" % i)
                with self.cond:
                    self.count += 1
                    self.cond.notify_all()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
        return []


class UploadProbe:
    """Reads the request body in 64 KiB pieces and records how it ended: ``received`` bytes, then either
    ``error`` (the exception instance raised by ``wsgi.input.read``) or a normal end. ``entered`` is set when the app
    starts, ``done`` when it stops reading, either way."""

    def __init__(self) -> None:
        self.received = 0
        self.error: BaseException | None = None
        self.entered = threading.Event()
        self.done = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        self.entered.set()
        try:
            while True:
                piece = stream.read(CHUNK)
                if not piece:
                    break
                self.received += len(piece)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
        body = b"%d" % self.received
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class HashingUpload:
    """Hashes the request body read in 64 KiB pieces; answers ``<sha256 hex> <length>``. ``on_piece`` is called
    after each piece (the tests sample RSS there). With ``hold`` given, the app sets ``entered`` and waits (bounded)
    for ``hold`` to be set before reading anything. ``error`` is what reading raised; ``done`` is set when reading
    ends either way."""

    def __init__(self, on_piece: Callable[[], None] = lambda: None, hold: threading.Event | None = None) -> None:
        self.on_piece = on_piece
        self.hold = hold
        self.entered = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.received = 0
        self.pieces = 0
        self.largest = 0
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(APP_WAIT)
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                piece = stream.read(CHUNK)
                if not piece:
                    break
                h.update(piece)
                n += len(piece)
                self.received = n
                self.pieces += 1
                self.largest = max(self.largest, len(piece))
                self.on_piece()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
        body = f"{h.hexdigest()} {n}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class BigDownload:
    """Yields ``total`` bytes of numbered 64 KiB chunks without Content-Length; ``on_chunk`` runs before each."""

    def __init__(self, total: int, on_chunk: Callable[[], None] = lambda: None) -> None:
        assert total % CHUNK == 0
        self.total = total
        self.on_chunk = on_chunk
        self.app = validator(self._app)

    def expected_sha256(self) -> str:
        h = hashlib.sha256()
        for i in range(self.total // CHUNK):
            h.update(numbered_chunk(i))
        return h.hexdigest()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        for i in range(self.total // CHUNK):
            self.on_chunk()
            yield numbered_chunk(i)


class Gate:
    """``/block``: counts itself in ``entered`` (under ``cond``), then waits for ``release`` (bounded); ``/hang``:
    waits for ``unhang`` (bounded); anything else answers at once. ``max_running`` is the most calls seen running at
    the same time."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.entered = 0
        self.running = 0
        self.max_running = 0
        self.release = threading.Event()
        self.unhang = threading.Event()
        self.hung = threading.Event()
        self.app = validator(self._app)

    def wait_entered(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.entered >= n, timeout)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        with self.cond:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if path == "/block":
                with self.cond:
                    self.entered += 1
                    self.cond.notify_all()
                self.release.wait(APP_WAIT)
            elif path == "/hang":
                self.hung.set()
                self.unhang.wait(APP_WAIT)
        finally:
            with self.cond:
                self.running -= 1
        body = f"{path} done".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def _slow(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Sleeps (in its worker thread) for the seconds given as the path, e.g. ``/0.3``, then names the path."""
    time.sleep(float(environ["PATH_INFO"].lstrip("/") or 0))
    body = f"slept {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


slow = validator(_slow)
