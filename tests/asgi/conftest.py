"""Fixtures that serve an ASGI application (``asyncwsgi.to_asgi(...)``, or a Starlette app mounting one) with a real
ASGI server in a background thread, on 127.0.0.1 and a port the OS picked.

- ``asgi_server``: a factory parametrized over the three servers in ``SERVERS``: uvicorn (asyncio loop), hypercorn
  on asyncio and hypercorn on trio (``asgi_server.kind``). ``asgi_server(app, root_path="")`` returns a running
  ``ASGIServer`` with ``.url``, ``.host``, ``.port``, ``.kind`` and ``.lifespan`` (every lifespan message the app
  received and sent).
  Every server is stopped at the end of the test, and a server thread that failed fails the test there.

The listening socket is bound (port 0) and put in listening state here, before the server starts, so the port is
known at once; uvicorn gets it as ``sockets=[sock]``, hypercorn as ``config.bind = ["fd://N"]`` (a duplicate of the
descriptor, which hypercorn closes itself). Readiness is the server's own signal, never a sleep: uvicorn's
``startup()`` returning (a subclass hook), hypercorn-asyncio logging its "Running on" line (a logger subclass),
hypercorn-trio's ``task_status.started()``. Lifespan is on for all three.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import hypercorn.asyncio
import hypercorn.config
import hypercorn.logging
import hypercorn.trio
import pytest
import trio
import uvicorn

#: The servers every adapter test runs under.
SERVERS = ("uvicorn", "hypercorn-asyncio", "hypercorn-trio")
#: Seconds a server has to start, and to stop.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class LifespanRecorder:
    """Pass-through ASGI wrapper that records the lifespan messages exchanged with the wrapped app, so a test can
    check that startup and shutdown were both answered (``received`` from the server, ``sent`` by the app)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.received: list[str] = []
        self.sent: list[str] = []
        self.failed: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def recording_receive() -> Any:
            message = await receive()
            self.received.append(message["type"])
            return message

        async def recording_send(message: Any) -> None:
            self.sent.append(message["type"])
            await send(message)

        try:
            await self.app(scope, recording_receive, recording_send)
        except BaseException as exc:
            self.failed = exc
            raise


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class ASGIServer:
    """One ASGI server running ``app`` in a daemon thread; subclasses say how to run and stop it."""

    kind = ""

    def __init__(self, app: Any, root_path: str = "") -> None:
        self.lifespan = LifespanRecorder(app)
        self.root_path = root_path
        self.sock = _listening_socket()
        self.host, self.port = self.sock.getsockname()[:2]
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name=f"test-{self.kind}", daemon=True)
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _thread_main(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported to the test thread by start() / stop()
            self._error = exc
        finally:
            self._ready.set()

    def _run(self) -> None:
        raise NotImplementedError

    def _request_stop(self) -> None:
        raise NotImplementedError

    def start(self) -> ASGIServer:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self.sock.close()
            raise RuntimeError(f"{self.kind} did not start within {START_TIMEOUT}s")
        if self._error is not None:
            self.sock.close()
            raise RuntimeError(f"{self.kind} failed to start") from self._error
        return self

    def stop(self) -> None:
        """Graceful stop (lifespan shutdown included); raises if the server thread failed or did not end."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._thread.is_alive():
                self._request_stop()
                self._thread.join(STOP_TIMEOUT)
                if self._thread.is_alive():
                    raise RuntimeError(f"{self.kind} did not stop within {STOP_TIMEOUT}s")
            if self._error is not None:
                raise RuntimeError(f"the {self.kind} server thread failed") from self._error
        finally:
            self.sock.close()


class _HookedUvicorn(uvicorn.Server):
    """uvicorn's ``Server`` with a startup hook: ``ready`` is set once ``startup()`` has returned (listening, and
    lifespan startup done) or failed."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready_event = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self._ready_event.set()


class UvicornServer(ASGIServer):
    kind = "uvicorn"

    def __init__(self, app: Any, root_path: str = "") -> None:
        super().__init__(app, root_path)
        config = uvicorn.Config(
            self.lifespan,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
            root_path=root_path,
            timeout_graceful_shutdown=5,
        )
        self._server = _HookedUvicorn(config, self._ready)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._server.serve(sockets=[self.sock]))
            if not self._server.started:
                raise RuntimeError("uvicorn returned without starting")
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _request_stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)


def _hypercorn_config(sock: socket.socket, root_path: str) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    # A duplicate: hypercorn wraps it in a socket object of its own and closes that; ``sock`` stays ours.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.root_path = root_path
    config.graceful_timeout = 5.0
    # A Logger instance is used as it is: no handlers added, records propagate to pytest's capture.
    config.errorlog = logging.getLogger("hypercorn.error")
    config.accesslog = None
    return config


class HypercornAsyncioServer(ASGIServer):
    kind = "hypercorn-asyncio"

    def __init__(self, app: Any, root_path: str = "") -> None:
        super().__init__(app, root_path)
        self.config = _hypercorn_config(self.sock, root_path)
        ready = self._ready

        class ReadyLogger(hypercorn.logging.Logger):
            """Sets ``ready`` when hypercorn says it is running (after lifespan startup and binding)."""

            async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
                await super().info(message, *args, **kwargs)
                if message.startswith("Running on"):
                    ready.set()

        self.config.logger_class = ReadyLogger
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        await hypercorn.asyncio.serve(self.lifespan, self.config, shutdown_trigger=self._stop_event.wait)

    def _request_stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


class HypercornTrioServer(ASGIServer):
    kind = "hypercorn-trio"

    def __init__(self, app: Any, root_path: str = "") -> None:
        super().__init__(app, root_path)
        self.config = _hypercorn_config(self.sock, root_path)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop_event: trio.Event | None = None
        self.binds: list[str] = []

    def _run(self) -> None:
        trio.run(self._main)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop_event = trio.Event()
        async with trio.open_nursery() as nursery:
            serve = functools.partial(
                hypercorn.trio.serve, self.lifespan, self.config, shutdown_trigger=self._stop_event.wait
            )
            self.binds = await nursery.start(serve)
            self._ready.set()

    def _request_stop(self) -> None:
        token, event = self._token, self._stop_event
        if token is not None and event is not None:
            try:
                trio.from_thread.run_sync(event.set, trio_token=token)
            except trio.RunFinishedError:
                pass


SERVER_CLASSES: dict[str, type[ASGIServer]] = {
    "uvicorn": UvicornServer,
    "hypercorn-asyncio": HypercornAsyncioServer,
    "hypercorn-trio": HypercornTrioServer,
}


class ServerFactory:
    """``factory(app, root_path="")`` starts ``app`` under the server named ``factory.kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.started: list[ASGIServer] = []

    def __call__(self, app: Any, root_path: str = "") -> ASGIServer:
        s = SERVER_CLASSES[self.kind](app, root_path=root_path)
        self.started.append(s)
        return s.start()

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for s in self.started:
            try:
                s.stop()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(params=SERVERS)
def asgi_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., ASGIServer]]:
    factory = ServerFactory(request.param)
    yield factory
    factory.stop_all()
