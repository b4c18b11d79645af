"""Shared test fixtures.

- ``server``: a factory that starts ``asyncwsgi.Server`` in a background thread on its own event loop, on
  127.0.0.1 port 0, and returns a handle once it is listening (readiness by a ``threading.Event``, never a sleep).
  Every server is shut down at the end of the test.
- ``aserver``: the same on the test's own loop, for ``async`` tests (the embedding path).
- ``raw``: a factory of raw-socket clients for tests where framing matters (see ``tests/helpers.py``).
- (autouse) the command line's ``gc.freeze()`` is a no-op in this process: a test that runs ``main()`` in-process
  must not freeze the test runner's objects (``gc.get_referrers`` stops seeing them). Subprocesses freeze as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio

import asyncwsgi
import asyncwsgi.runner
import asyncwsgi.supervisor
from asyncwsgi.runner import loop_factory

from .helpers import RawClient


@pytest.fixture(autouse=True)
def no_heap_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncwsgi.runner, "freeze_heap", lambda: None)
    monkeypatch.setattr(asyncwsgi.supervisor, "freeze_heap", lambda: None)


#: The loop the ``server`` fixture runs on: uvloop (the production default) unless ASYNCWSGI_TEST_LOOP=asyncio.
TEST_LOOP = os.environ.get("ASYNCWSGI_TEST_LOOP", "auto")


class ThreadedServer:
    """A Server running on a private loop in a daemon thread. ``loop=`` picks "uvloop" or "asyncio"."""

    def __init__(self, app: Any, loop: str = TEST_LOOP, **options: Any) -> None:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("access_log", False)
        self.server = asyncwsgi.Server(app, **options)
        self.loop_name, factory = loop_factory(loop)
        self.loop = factory()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server-loop", daemon=True)
        self._stop: asyncio.Event | None = None
        self.cut: int | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        await self.server.start()
        self._ready.set()
        await self._stop.wait()
        self.cut = await self.server.shutdown(self._timeout)

    def start(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start within 10s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        if self._thread.is_alive() and self._stop is not None:
            self._timeout = timeout
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout + 10)
        return self.cut

    _timeout = 5.0

    @property
    def host(self) -> str:
        return str(self.server.address[0])

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the server's loop thread and return its result (to read loop-owned state safely)."""
        fut: Any = asyncio.run_coroutine_threadsafe(_call(fn), self.loop)
        return fut.result(5)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


@pytest.fixture
def server() -> Iterator[Callable[..., ThreadedServer]]:
    started: list[ThreadedServer] = []

    def start(app: Any, **options: Any) -> ThreadedServer:
        s = ThreadedServer(app, **options).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest_asyncio.fixture
async def aserver() -> AsyncIterator[Callable[..., Any]]:
    servers: list[asyncwsgi.Server] = []

    async def start(app: Any, **options: Any) -> asyncwsgi.Server:
        options.setdefault("host", "127.0.0.1")
        options.setdefault("port", 0)
        options.setdefault("access_log", False)
        s = asyncwsgi.Server(app, **options)
        await s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        with contextlib.suppress(Exception):
            await s.shutdown(5)


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    clients: list[RawClient] = []

    def connect(target: Any, timeout: float = 5.0) -> RawClient:
        host, port = (target.host, target.port) if hasattr(target, "host") else target
        c = RawClient(host, port, timeout)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()
