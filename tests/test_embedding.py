"""Embedding ``asyncwsgi.Server`` / ``asyncwsgi.serve`` in an asyncio program: listening on ``async with`` entry and
the bound ``address``, a loop that is never blocked by the app, ``serve_forever`` returning after ``shutdown``,
graceful shutdown (in-flight requests finish and count 0, a hung one is cut and counts 1, idle keep-alive connections
close at once), ``serve`` running until cancelled (inherited fd, unix socket), no signal handlers and no loop-policy
change, and all of it on both the stdlib loop and uvloop.

Each scenario is an ``async def`` taking a ``tmp_path``; the ``@pytest.mark.asyncio`` tests run it on the loop of
pytest-asyncio, and ``test_scenario_on_loop`` runs every one on a loop it creates with ``asyncio.Runner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest

import asyncwsgi

from .apps.basic import hello
from .apps.streaming import Gate, slow

HELLO_BODY = b"Hello, world!"


def _url(server: asyncwsgi.Server, path: str = "/") -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


async def _raw_get(host: str, port: int, path: str = "/", close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = b"Connection: close\r\n" if close else b""
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: test\r\n" + conn + b"\r\n")
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_one_response(reader: asyncio.StreamReader, body_length: int) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
    body = await asyncio.wait_for(reader.readexactly(body_length), 5.0)
    return head, body


async def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """Wait on a threading primitive without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _policy() -> asyncio.AbstractEventLoopPolicy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in Python 3.14
        return asyncio.get_event_loop_policy()


# -- scenarios ---------------------------------------------------------------------------------------------------------


async def listens_on_entry_with_address(tmp_path: Path) -> None:
    async with asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False) as server:
        assert server.started
        host, port = server.address
        assert host == "127.0.0.1"
        assert type(port) is int and 0 < port < 65536
        assert server.addresses == [("127.0.0.1", port)]
        data = await _raw_get(host, port)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert data.endswith(b"\r\n\r\n" + HELLO_BODY)
        assert b"\r\nContent-Length: 13\r\n" in data
    with pytest.raises(OSError):
        await _raw_get(host, port)


async def loop_never_blocked_by_the_app(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with asyncwsgi.Server(slow, host="127.0.0.1", port=0, access_log=False) as server:
        tick_task = asyncio.create_task(ticker())
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                first = ticks
                started = loop.time()
                resp = await client.get(_url(server, "/0.3"))
                elapsed = loop.time() - started
                during_one = ticks - first
                assert (resp.status_code, resp.text) == (200, "slept /0.3")
                assert elapsed >= 0.3
                # 0.3 s at one tick per 10 ms is about 30 ticks; a blocked loop would manage 0 or 1.
                assert during_one >= 10, f"only {during_one} ticks in {elapsed:.2f}s while the app worked"

                # Four such requests at once run side by side in worker threads; the loop still ticks.
                first = ticks
                started = loop.time()
                resps = await asyncio.gather(*(client.get(_url(server, "/0.3")) for _ in range(4)))
                elapsed = loop.time() - started
                assert [(r.status_code, r.text) for r in resps] == [(200, "slept /0.3")] * 4
                assert elapsed < 1.0, f"4 concurrent requests of 0.3 s took {elapsed:.2f}s"
                assert ticks - first >= 10
        finally:
            tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick_task


async def serve_forever_returns_after_shutdown(tmp_path: Path) -> None:
    server = asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False)
    with pytest.raises(RuntimeError):
        await server.serve_forever()  # not started
    await server.start()
    forever = asyncio.create_task(server.serve_forever())
    try:
        done, _ = await asyncio.wait({forever}, timeout=0.05)
        assert not done, "serve_forever() returned before shutdown()"
        data = await _raw_get(*server.address)
        assert data.endswith(HELLO_BODY)

        stopper = asyncio.create_task(server.shutdown(5.0))
        assert await asyncio.wait_for(stopper, 5.0) == 0
        assert await asyncio.wait_for(forever, 1.0) is None
    finally:
        forever.cancel()
        await server.shutdown(1.0)


async def cancelling_serve_forever_does_not_stop_the_server(tmp_path: Path) -> None:
    async with asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False) as server:
        forever = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        data = await _raw_get(*server.address)
        assert data.endswith(HELLO_BODY)


async def shutdown_waits_for_in_flight_request(tmp_path: Path) -> None:
    gate = Gate()
    loop = asyncio.get_running_loop()
    server = asyncwsgi.Server(gate.app, host="127.0.0.1", port=0, access_log=False)
    await server.start()
    try:
        host, port = server.address
        async with httpx.AsyncClient(timeout=10.0) as client:
            request = asyncio.create_task(client.get(_url(server, "/block")))
            assert await _blocking(gate.wait_entered, 1), "the request did not reach the app"
            assert server.in_flight == 1
            started = loop.time()
            stopper = asyncio.create_task(server.shutdown(5.0))
            done, _ = await asyncio.wait({stopper}, timeout=0.2)
            assert not done, "shutdown() returned while a request was still running"
            with pytest.raises(OSError):
                await _raw_get(host, port)  # no longer accepting
            gate.release.set()
            resp = await asyncio.wait_for(request, 5.0)
            assert (resp.status_code, resp.text) == (200, "/block done")
            # The server is closing: it says so (RFC 9112 section 9.6).
            assert resp.headers.get("connection") == "close"
            assert await asyncio.wait_for(stopper, 5.0) == 0
            assert loop.time() - started < 4.0
        assert server.connections == 0
        assert server.in_flight == 0
    finally:
        gate.release.set()
        await server.shutdown(1.0)


async def shutdown_cuts_a_hung_request(tmp_path: Path) -> None:
    gate = Gate()
    loop = asyncio.get_running_loop()
    server = asyncwsgi.Server(gate.app, host="127.0.0.1", port=0, access_log=False)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        try:
            writer.write(b"GET /hang HTTP/1.1\r\nHost: test\r\n\r\n")
            assert await _blocking(gate.hung.wait, 5.0)
            started = loop.time()
            cut = await asyncio.wait_for(server.shutdown(0.2), 5.0)
            elapsed = loop.time() - started
            assert cut == 1
            assert 0.2 <= elapsed < 2.0, f"shutdown(0.2) took {elapsed:.2f}s"
            try:
                rest = await asyncio.wait_for(reader.read(), 2.0)
            except ConnectionResetError:
                rest = b""
            assert rest == b"", "a cut request must not get a response"
            assert server.connections == 0
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    finally:
        gate.unhang.set()
        await server.shutdown(1.0)


class ClosingApp:
    """A response that goes out whole (its Content-Length reached) while the iterable's close() is still running:
    close() waits for ``release``, then sets ``closed``. Each on the worker thread."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return self._body()

    def _body(self) -> Iterator[bytes]:
        try:
            yield b"ok"
        finally:  # the generator's close()
            self.entered.set()
            self.release.wait(5.0)
            self.closed.set()


async def shutdown_waits_for_a_close_after_the_response(tmp_path: Path) -> None:
    app = ClosingApp()
    server = asyncwsgi.Server(validator(app), host="127.0.0.1", port=0, access_log=False)
    await server.start()
    try:
        data = await _raw_get(*server.address)  # Connection: close: the server closes once the response is out
        assert data.endswith(b"\r\n\r\nok")
        assert await _blocking(app.entered.wait, 5.0)
        stopper = asyncio.create_task(server.shutdown(5.0))
        done, _ = await asyncio.wait({stopper}, timeout=0.2)
        assert not done, "shutdown() returned while the app was still closing its response"
        app.release.set()
        assert await asyncio.wait_for(stopper, 5.0) == 0
        assert app.closed.is_set()
    finally:
        app.release.set()
        await server.shutdown(1.0)


async def shutdown_counts_a_close_that_outlives_the_timeout(tmp_path: Path) -> None:
    app = ClosingApp()
    loop = asyncio.get_running_loop()
    server = asyncwsgi.Server(validator(app), host="127.0.0.1", port=0, access_log=False)
    await server.start()
    try:
        assert (await _raw_get(*server.address)).endswith(b"\r\n\r\nok")
        assert await _blocking(app.entered.wait, 5.0)
        started = loop.time()
        cut = await asyncio.wait_for(server.shutdown(0.2), 5.0)
        elapsed = loop.time() - started
        assert cut == 1
        assert 0.19 <= elapsed < 2.0, f"shutdown(0.2) took {elapsed:.3f}s"  # loop clock: float sums
        assert not app.closed.is_set()
    finally:
        app.release.set()
        await server.shutdown(1.0)


async def shorter_second_shutdown_cuts_sooner(tmp_path: Path) -> None:
    gate = Gate()
    loop = asyncio.get_running_loop()
    server = asyncwsgi.Server(gate.app, host="127.0.0.1", port=0, access_log=False)
    await server.start()
    try:
        _reader, writer = await asyncio.open_connection(*server.address)
        try:
            writer.write(b"GET /hang HTTP/1.1\r\nHost: test\r\n\r\n")
            assert await _blocking(gate.hung.wait, 5.0)
            started = loop.time()
            patient = asyncio.create_task(server.shutdown(30.0))
            done, _ = await asyncio.wait({patient}, timeout=0.05)
            assert not done
            # A second call (a second Ctrl-C, say) with a shorter timeout shortens the wait for both callers.
            results = await asyncio.wait_for(asyncio.gather(patient, server.shutdown(0.2)), 5.0)
            assert results == [1, 1]
            assert loop.time() - started < 2.0
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    finally:
        gate.unhang.set()
        await server.shutdown(1.0)


async def idle_keep_alive_closed_at_once(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    server = asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False, timeout_keep_alive=30.0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        try:
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                head, body = await _read_one_response(reader, len(HELLO_BODY))
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert b"connection: close" not in head.lower()
                assert body == HELLO_BODY
            assert server.connections == 1
            started = loop.time()
            assert await asyncio.wait_for(server.shutdown(10.0), 5.0) == 0
            assert loop.time() - started < 1.0, "shutdown waited for an idle keep-alive connection"
            assert await asyncio.wait_for(reader.read(), 1.0) == b""
            assert server.connections == 0
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    finally:
        await server.shutdown(1.0)


async def serve_until_cancelled_on_an_inherited_fd(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        # The server owns (and closes) the fd it is given: hand it a duplicate.
        task = asyncio.create_task(asyncwsgi.serve(hello, fd=os.dup(listener.fileno()), access_log=False))
        try:
            # Already listening: the connection waits in the backlog until serve() accepts it. No readiness wait.
            async with httpx.AsyncClient(timeout=5.0) as client:
                for _ in range(2):
                    resp = await client.get(f"http://127.0.0.1:{port}/")
                    assert (resp.status_code, resp.content) == (200, HELLO_BODY)
            assert not task.done()
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5.0)
        assert task.cancelled()


async def serve_until_cancelled_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    task = asyncio.create_task(asyncwsgi.serve(hello, uds=path, access_log=False))
    try:
        # serve() binds before its first await: yielding to it once or twice is enough.
        for _ in range(100):
            if os.path.exists(path) or task.done():
                break
            await asyncio.sleep(0)
        assert os.path.exists(path), "serve() did not bind its unix socket"
        transport = httpx.AsyncHTTPTransport(uds=path)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            resp = await client.get("http://localhost/")
            assert (resp.status_code, resp.content) == (200, HELLO_BODY)
        assert not task.done()
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)
    assert not os.path.exists(path), "the unix socket file was left behind"


async def no_signal_handlers_and_no_policy_change(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    sigs = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.getsignal(s) for s in sigs}
    policy = _policy()
    loop_handlers = dict(getattr(loop, "_signal_handlers", {}))
    assert loop_handlers == {}, "the test loop has signal handlers before the server starts"

    def check() -> None:
        assert {s: signal.getsignal(s) for s in sigs} == before
        assert dict(getattr(loop, "_signal_handlers", {})) == {}
        for s in sigs:
            assert loop.remove_signal_handler(s) is False, f"a handler for {s.name} was installed on the loop"
        assert _policy() is policy

    async with asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False) as server:
        check()
        data = await _raw_get(*server.address)
        assert data.endswith(HELLO_BODY)
        check()
        await server.shutdown(1.0)
        check()
    task = asyncio.create_task(asyncwsgi.serve(hello, host="127.0.0.1", port=0, access_log=False))
    await asyncio.sleep(0)
    check()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    check()


SCENARIOS: dict[str, Callable[[Path], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        listens_on_entry_with_address,
        loop_never_blocked_by_the_app,
        serve_forever_returns_after_shutdown,
        cancelling_serve_forever_does_not_stop_the_server,
        shutdown_waits_for_in_flight_request,
        shutdown_cuts_a_hung_request,
        shorter_second_shutdown_cuts_sooner,
        shutdown_waits_for_a_close_after_the_response,
        shutdown_counts_a_close_that_outlives_the_timeout,
        idle_keep_alive_closed_at_once,
        serve_until_cancelled_on_an_inherited_fd,
        serve_until_cancelled_on_a_unix_socket,
        no_signal_handlers_and_no_policy_change,
    )
}


# -- on pytest-asyncio's loop -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_async_with_listens_on_entry_and_reports_address(tmp_path):
    await listens_on_entry_with_address(tmp_path)


@pytest.mark.asyncio
async def test_loop_keeps_ticking_while_the_app_works(tmp_path):
    await loop_never_blocked_by_the_app(tmp_path)


@pytest.mark.asyncio
async def test_serve_forever_returns_after_shutdown_from_another_task(tmp_path):
    await serve_forever_returns_after_shutdown(tmp_path)


@pytest.mark.asyncio
async def test_cancelling_serve_forever_leaves_the_server_running(tmp_path):
    await cancelling_serve_forever_does_not_stop_the_server(tmp_path)


@pytest.mark.asyncio
async def test_shutdown_waits_for_an_in_flight_request_and_returns_0(tmp_path):
    await shutdown_waits_for_in_flight_request(tmp_path)


@pytest.mark.asyncio
async def test_shutdown_cuts_a_hung_request_after_its_timeout_and_returns_1(tmp_path):
    await shutdown_cuts_a_hung_request(tmp_path)


@pytest.mark.asyncio
async def test_a_second_shutdown_with_a_shorter_timeout_cuts_sooner(tmp_path):
    await shorter_second_shutdown_cuts_sooner(tmp_path)


@pytest.mark.asyncio
async def test_address_before_start_and_after_shutdown_raises_runtime_error():
    server = asyncwsgi.Server(hello, host="127.0.0.1", port=0, access_log=False)
    with pytest.raises(RuntimeError, match="not listening"):
        server.address  # noqa: B018
    async with server:
        assert server.address[0] == "127.0.0.1"
    # Shut down: not listening any more, and saying so (not a stale or closed socket's error).
    with pytest.raises(RuntimeError, match="not listening"):
        server.address  # noqa: B018


@pytest.mark.asyncio
async def test_shutdown_closes_idle_keep_alive_connections_at_once(tmp_path):
    await idle_keep_alive_closed_at_once(tmp_path)


@pytest.mark.asyncio
async def test_serve_runs_until_cancelled_on_an_inherited_fd(tmp_path):
    await serve_until_cancelled_on_an_inherited_fd(tmp_path)


@pytest.mark.asyncio
async def test_serve_runs_until_cancelled_on_a_unix_socket(tmp_path):
    await serve_until_cancelled_on_a_unix_socket(tmp_path)


@pytest.mark.asyncio
async def test_embedding_installs_no_signal_handlers_and_keeps_the_loop_policy(tmp_path):
    await no_signal_handlers_and_no_policy_change(tmp_path)


# -- on a loop of our own: the stdlib loop and uvloop -----------------------------------------------------------------


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner(loop_factory=...) needs Python 3.11")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_scenario_on_loop(loop_name, scenario, tmp_path):
    factory = _loop_factory(loop_name)
    policy = _policy()

    async def main() -> str:
        await SCENARIOS[scenario](tmp_path)
        return type(asyncio.get_running_loop()).__module__

    with asyncio.Runner(loop_factory=factory) as runner:
        loop_module = runner.run(main())
    assert loop_module.split(".")[0] == ("uvloop" if loop_name == "uvloop" else "asyncio")
    assert _policy() is policy
