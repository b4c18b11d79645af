"""``Server``: listening sockets, the connection registry, the thread pool and graceful shutdown, on the caller's loop.

Embedding contract: a ``Server`` runs on whatever loop is running when ``start()`` is awaited. It installs no signal
handlers, changes no loop policy and never exits the process; those are ``runner.py``'s business, for the CLI only.

Threads: everything here runs on the event-loop thread, except ``queue_depth``/``threads`` (read-only counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from .accesslog import AccessLogFormat
from .config import Config
from .errors import ConfigError
from .protocol.connection import HTTPConnection
from .protocol.parser import RequestParser
from .proxy import ProxyTrust
from .sockets import ListenSpec, bind_sockets
from .wsgi.bridge import LoopChannel
from .wsgi.environ import connection_environ
from .wsgi.pool import ThreadPool

__all__ = ["Server", "serve"]

logger = logging.getLogger("asyncwsgi.error")

WSGIApp = Callable[..., Iterable[bytes]]

#: Threads started at once when requests find none idle; beyond these the pool grows only while the CPU has room.
EAGER_THREADS = 4


class Server:
    """A WSGI server on the running asyncio loop.

    ``Server(app, config=None, **options)``: ``options`` are ``Config`` field names (``host``, ``port``, ``threads``,
    ...) applied over ``config``. Use as ``async with Server(app, port=0) as server:``; the bound address is
    ``server.address``.
    """

    def __init__(
        self,
        app: WSGIApp,
        config: Config | None = None,
        *,
        sockets: list[socket.socket] | None = None,
        max_requests: int | None = None,
        **options: Any,
    ) -> None:
        """``sockets``: already-listening sockets to serve instead of binding what the config names (a supervisor
        binds once and hands them to its workers). ``max_requests``: after this many completed requests the
        ``retiring`` event is set (the server keeps serving; its owner decides when to shut it down)."""
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        base = config if config is not None else Config()
        self.config = base.replace(**options) if options else base
        self.app = app
        self._given_sockets = sockets
        #: the ``retiring`` event is set once this many requests are done (None: never)
        self.max_requests = max_requests
        #: requests whose response was completely handed to the transport
        self.requests_done = 0
        #: set once ``max_requests`` requests are done
        self.retiring = asyncio.Event()
        self.environ_extra: dict[str, Any] = {"asyncwsgi.config": self.config}
        self.access_format = AccessLogFormat(self.config.access_log_format)
        self.proxy_trust = (
            ProxyTrust(self.config.forwarded_allow_ips, self.config.forwarded_header)
            if self.config.proxy_headers
            else None
        )
        # Set by start(), read by every connection per request: plain attributes, not properties (a call each).
        #: the loop the server runs on
        self.loop: asyncio.AbstractEventLoop
        #: worker threads -> loop messages
        self.channel: LoopChannel
        #: ``submit(fn, arg)``: run ``fn(arg)`` on a worker thread (the pool's own method)
        self.submit: Callable[[Callable[[Any], object], Any], None]
        self._pool: ThreadPool | None = None
        #: ``limit_concurrency``: at this many requests in flight, new ones are answered 503
        self.limit_concurrency = self.config.limit_concurrency
        self._listeners: list[tuple[ListenSpec, socket.socket, asyncio.Server | None]] = []
        self._connections: set[HTTPConnection] = set()
        #: requests handed to the app and not finished (read-only outside the server and its connections)
        self.in_flight = 0
        self._all_closed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[int] | None = None
        self._deadline = 0.0
        self._wakeup = asyncio.Event()
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._accepting = 0
        self._room = asyncio.Event()
        self._reaper: asyncio.TimerHandle | None = None
        self._addresses: list[Any] = []
        self._draining = False
        self._environ_bases: dict[Any, dict[str, Any]] = {}
        #: parsers between messages, shared by the connections (bounded: ``connection.IDLE_PARSERS``)
        self.idle_parsers: list[RequestParser] = []
        #: ``wsgi.multiprocess``: set by a supervisor running several workers
        self.multiprocess = False
        self._reap_interval = 1.0
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start listening. Raises ``ConfigError`` (one line) when an address cannot be bound."""
        if self.started:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.channel = LoopChannel(loop.call_soon_threadsafe, loop.call_soon)
        self._pool = ThreadPool(
            self.config.threads,
            self.config.thread_idle_timeout,
            eager_threads=EAGER_THREADS,
            schedule=loop.call_later,
            defer=loop.call_soon,
        )
        self.submit = self._pool.submit
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._stopped = asyncio.Event()
        context = tls_context(self.config)
        tls: dict[str, Any] = {}
        if context is not None:
            tls = {"ssl": context, "ssl_handshake_timeout": self.config.timeout_request_header or None}
        if self._given_sockets is not None:
            bound = [(_spec_of(sock), sock) for sock in self._given_sockets]
            for _, sock in bound:
                sock.setblocking(False)
        else:
            bound = bind_sockets(self.config)
        try:
            for spec, sock in bound:
                if self.config.limit_connections is not None:
                    # Our own accept loop, so that at the limit we stop accepting and clients wait in the backlog.
                    self._accept_tasks.append(loop.create_task(self._accept_loop(sock, tls)))
                    self._listeners.append((spec, sock, None))
                    continue
                if sock.family == socket.AF_UNIX:
                    srv = await loop.create_unix_server(
                        self._make_protocol, sock=sock, backlog=self.config.backlog, **tls
                    )
                else:
                    srv = await loop.create_server(self._make_protocol, sock=sock, backlog=self.config.backlog, **tls)
                self._listeners.append((spec, sock, srv))
        except BaseException:
            for _, sock in bound:
                sock.close()
            raise
        self._addresses = [_sockname(sock) for _, sock, _ in self._listeners]
        self._reap_interval = _reap_interval(self.config)
        self._reaper = loop.call_later(self._reap_interval, self._reap)
        self.started = True

    async def _accept_loop(self, sock: socket.socket, tls: dict[str, Any]) -> None:
        loop = self.loop
        limit = self.config.limit_connections
        assert limit is not None
        room = self._room
        while True:
            while len(self._connections) + self._accepting >= limit:
                room.clear()
                await room.wait()
            try:
                conn_sock, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if sock.fileno() < 0:
                    return  # closed by shutdown
                logger.warning("accept failed: %s", exc)
                continue
            self._accepting += 1
            try:
                await loop.connect_accepted_socket(self._make_protocol, conn_sock, **tls)
            except OSError:
                conn_sock.close()
            finally:
                self._accepting -= 1

    def _reap(self) -> None:
        """Every ``_reap_interval`` seconds, one pass over the connections: fire the deadlines whose time is up (slow
        heads, idle keep-alives) and drop clients that have taken none of their response for ``timeout_write``. One
        periodic timer per server instead of timer handles per request."""
        now = self.loop.time()
        write_limit = now - self.config.timeout_write if self.config.timeout_write else 0.0
        expired, stalled = [], []
        for conn in self._connections:  # act after the pass: closing changes the set
            if 0.0 < conn.deadline <= now:
                expired.append(conn)
            elif 0.0 < conn.stalled_since <= write_limit:
                stalled.append(conn)
        for conn in expired:
            conn.on_deadline()
        for conn in stalled:
            conn.on_write_timeout()
        self._reaper = self.loop.call_later(self._reap_interval, self._reap)

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def serve_forever(self) -> None:
        """Wait until ``shutdown()`` completes (from another task). Cancelling this does not stop the server."""
        if not self.started or self._stopped is None:
            raise RuntimeError("start() the server first (or use 'async with')")
        await self._stopped.wait()

    async def shutdown(self, timeout: float | None = None) -> int:
        """Stop accepting, close idle connections now, let in-flight requests finish for up to ``timeout`` seconds
        (default: ``config.timeout_graceful``), then cut what remains. A request is finished when its app code is:
        the response iterable's ``close()`` included, which may still run after the response went out. Returns how
        many requests were cut.
        Safe to call more than once and from several tasks."""
        if not self.started:
            return 0
        loop = self.loop
        deadline = loop.time() + (self.config.timeout_graceful if timeout is None else timeout)
        if self._shutdown_task is None:
            self._deadline = deadline
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        elif deadline < self._deadline:
            # A later call with a shorter timeout (a second Ctrl-C, say) shortens the wait.
            self._deadline = deadline
            self._wakeup.set()
        return await asyncio.shield(self._shutdown_task)

    async def drain(self, grace: float) -> None:
        """Stop accepting and let clients leave on their own, for up to ``grace`` seconds: every connection's next
        response head says ``Connection: close`` and the connection closes after it. A response whose head already
        promised keep-alive is not cut short; the request after it gets the ``close``. Closing idle keep-alive
        connections at once instead would race with a client that is sending its next request right then
        (RFC 9112 section 9.6). Call ``shutdown()`` afterwards for what is left (idle connections that sent
        nothing more). Used to replace a worker without dropping a request."""
        if not self.started or self._draining:
            return
        self._draining = True
        self._stop_listening()
        for conn in self._connections:
            conn.draining = True
        all_closed = self._all_closed
        assert all_closed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_closed.wait(), grace)

    def _stop_listening(self) -> None:
        for task in self._accept_tasks:
            task.cancel()
        for _, sock, srv in self._listeners:
            if srv is not None:
                srv.close()
            # uvloop serves a duplicate of the descriptor: close ours too, or the kernel keeps queueing connections
            sock.close()

    async def _shutdown(self) -> int:
        loop = self.loop
        self._stop_listening()
        for conn in list(self._connections):
            conn.shutdown()
        all_closed = self._all_closed
        assert all_closed is not None
        while self._connections:
            remaining = self._deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            waiters = [
                asyncio.ensure_future(all_closed.wait()),
                asyncio.ensure_future(self._wakeup.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
        pool = self._pool
        if pool is not None and not self._connections:
            # Every connection is closed, yet a worker may still be in the app: closing the iterable of a response
            # that went out whole before it (see WSGICall.open_after_end), or running a request whose client left.
            # Its work is waited for as a request's is, within the same deadline. Polled: only ever at shutdown.
            while pool.busy and loop.time() < self._deadline:
                await asyncio.sleep(min(_POOL_POLL, self._deadline - loop.time()))
        cut = 0
        if self._connections:
            cut = sum(1 for c in self._connections if not c.idle)
            logger.warning("graceful shutdown timed out: cutting %d request(s) still in flight", cut)
            for conn in list(self._connections):
                conn.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(all_closed.wait(), 1.0)
        elif pool is not None and pool.busy:
            # Counted as cut: the process may end with them (worker threads are daemons).
            cut = pool.busy
            logger.warning(
                "graceful shutdown timed out: %d worker thread(s) still in the app after their connection closed "
                "(a response iterable's close(), or a request whose client left)",
                cut,
            )
        if self._reaper is not None:
            self._reaper.cancel()
        for spec, _, srv in self._listeners:
            if srv is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(srv.wait_closed(), 1.0)
            if spec.kind == "unix" and self._given_sockets is None:  # given sockets belong to whoever bound them
                with contextlib.suppress(OSError):
                    os.unlink(spec.path)
        if self._pool is not None:
            self._pool.shutdown()
        assert self._stopped is not None
        self._stopped.set()
        return cut

    # -- introspection -----------------------------------------------------------------------------------------------

    @property
    def addresses(self) -> list[Any]:
        """Every bound address: ``(host, port)`` for TCP, the path (str) for unix sockets. Raises ``RuntimeError``
        when the server is not listening (not started, or shutting down)."""
        if not self.started or self._shutdown_task is not None:
            raise RuntimeError("the server is not listening")
        return list(self._addresses)

    @property
    def address(self) -> Any:
        """The first bound address: ``(host, port)`` for TCP, the socket path for unix sockets."""
        return self.addresses[0]

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a free worker thread."""
        return self._pool.queued if self._pool is not None else 0

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return self._pool.threads if self._pool is not None else 0

    # -- for connections (loop thread) -------------------------------------------------------------------------------

    def environ_base(self, sockname: Any, tls: bool) -> dict[str, Any]:
        """The environ keys shared by every request through one listening address (cached: a handful)."""
        key = (sockname if isinstance(sockname, (tuple, str)) else repr(sockname), tls)
        base = self._environ_bases.get(key)
        if base is None:
            base = connection_environ(
                sockname, "https" if tls else "http", self.config.root_path, self.multiprocess, self.environ_extra
            )
            if len(self._environ_bases) < 64:  # bounded: one per listener, unless sockets are exotic
                self._environ_bases[key] = base
        return base

    def new_parser(self, conn: HTTPConnection) -> RequestParser:
        """A request parser for ``conn`` when ``idle_parsers`` has none (parsers are per active connection, not per
        connection: connections take one from ``idle_parsers`` when bytes arrive and put it back between requests)."""
        c = self.config
        return RequestParser(
            conn, c.limit_request_line, c.limit_request_fields, c.limit_request_headers_size, c.limit_request_body
        )

    def _make_protocol(self) -> HTTPConnection:
        return HTTPConnection(self)

    def connection_opened(self, conn: HTTPConnection) -> None:
        self._connections.add(conn)
        assert self._all_closed is not None
        self._all_closed.clear()
        if self._shutdown_task is not None:
            conn.shutdown()
        elif self._draining:
            conn.draining = True

    def connection_closed(self, conn: HTTPConnection, had_request: bool) -> None:
        self._connections.discard(conn)
        self._room.set()
        if had_request:
            self.in_flight -= 1
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def request_done(self) -> None:
        """A request's response ended (``HTTPConnection.on_response_end`` does the same inline)."""
        self.in_flight -= 1
        self.requests_done += 1
        if self.requests_done == self.max_requests:
            self.retiring.set()


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The server-side TLS context the config asks for (``ConfigError`` with one line when the files are wrong)."""
    if not config.ssl_certfile:
        return None
    for option, path in (
        ("--ssl-certfile", config.ssl_certfile),
        ("--ssl-keyfile", config.ssl_keyfile),
        ("--ssl-ca-certs", config.ssl_ca_certs),
    ):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{option} {path}: {exc.strerror or exc}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        if config.ssl_ca_certs:
            ctx.load_verify_locations(config.ssl_ca_certs)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA file: {exc}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _spec_of(sock: socket.socket) -> ListenSpec:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return ListenSpec("unix", path=name if isinstance(name, str) else "")
    return ListenSpec("tcp", host=str(name[0]), port=int(name[1]))


def _sockname(sock: socket.socket) -> Any:
    name = sock.getsockname()
    return tuple(name[:2]) if isinstance(name, tuple) else name


#: Seconds between looks at the thread pool while shutdown waits for the app's last work (see _shutdown).
_POOL_POLL = 0.01


def _reap_interval(config: Config) -> float:
    """A quarter of the shortest connection timeout, between 50 ms and 1 s."""
    timeouts = [t for t in (config.timeout_keep_alive, config.timeout_request_header, config.timeout_write) if t > 0]
    return min(1.0, max(0.05, min(timeouts, default=4.0) / 4))


async def serve(app: WSGIApp, config: Config | None = None, **options: Any) -> None:
    """Serve ``app`` on the running loop until cancelled; on cancellation, shut down gracefully."""
    async with Server(app, config, **options) as server:
        await server.serve_forever()
