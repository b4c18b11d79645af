"""``to_asgi(app)``: any WSGI app as an ASGI 3 application, on the same bridge the server uses.

    from asyncwsgi import to_asgi
    asgi_app = to_asgi(flask_app, threads=64)      # mount it in Starlette, serve it with uvicorn or hypercorn

What is shared with the server: ``WSGICall`` (start_response, exc_info, headers deferred to the first non-empty chunk,
``write()``, Content-Length enforcement, ``close()`` on every path, error handling), the environ builder,
``InputStream`` (streamed ``wsgi.input`` with flow control; a client gone mid-upload makes ``read()`` raise),
``WriteFlow`` (backpressure), ``LoopChannel`` and ``ThreadPool``. What differs is only the framing: ``ASGICall``
produces ASGI messages where the server's call produces HTTP/1.1 bytes.

Threads and tasks: the app runs on a worker thread of the adapter's pool for the running event loop (one pool and
one ``LoopChannel`` per loop that serves the adapter, made on its first request: a pool's growth checks and batching
run on its loop, and its jobs are submitted from that loop's thread only). On the event loop, per request, one task
(``_Exchange.pump``) feeds ``receive()`` into ``wsgi.input`` and watches for ``http.disconnect``, and the request's own
coroutine (``_Exchange.deliver``) awaits ``send()`` for each message the worker posted; ``send()`` completing is the
backpressure. On asyncio a request without a body starts the pump only once its response streams (a first message
that is not the end): a response in one message has nothing to stop if the client leaves, and the task cost a third
of the adapter's time per small request. The worker never touches ASGI objects; it posts to the loop through
``LoopChannel``. Runs under asyncio and trio: on asyncio with its own primitives (a task, futures), on any other loop
with anyio's (a task group, events).
The asyncio path avoids anyio's objects per request in flight (a task group, a cancel scope, events: a few KiB
each, which is what made the adapter hold more than a2wsgi for clients that stop reading) and its modules, about
1 MiB imported by the first request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import quote

from .accesslog import AccessLogFormat
from .errors import ClientDisconnected
from .protocol.parser import RequestHead
from .proxy import ProxyTrust
from .wsgi.bridge import LoopChannel, Soon, WriteFlow
from .wsgi.call import WSGICall
from .wsgi.environ import connection_environ, remote_of
from .wsgi.input import BODY_HIGH_WATER, InputStream
from .wsgi.pool import ThreadPool

__all__ = ["WSGIToASGI", "to_asgi"]

#: While the app is behind on the request body, how often to take one more message from receive() so that a
#: client that left is noticed: ASGI reports disconnects only there.
PAUSED_PEEK = 0.25
#: Response bytes handed to the worker's loop but not yet taken by ``send()``, above which the worker waits. Small:
#: the ASGI server keeps its own buffer, and ``send()`` returning is already its backpressure.
ASGI_HIGH_WATER = 64 * 1024
#: Request body buffered past the stream's high-water mark for an app that is behind, beyond which receive() is
#: only called every PAUSED_PEEK.
PEEK_CAP = 3 * BODY_HIGH_WATER

logger = logging.getLogger("asyncwsgi.error")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[..., Iterable[bytes]]


def to_asgi(app: WSGIApp, threads: int = 64, thread_idle_timeout: float = 60.0) -> WSGIToASGI:
    """Wrap the WSGI ``app`` as an ASGI 3 application whose WSGI calls run on up to ``threads`` threads (per asyncio
    loop serving it, and one pool shared by trio runs; a loop that has ended lets its threads go when the next one
    starts)."""
    return WSGIToASGI(app, threads=threads, thread_idle_timeout=thread_idle_timeout)


def _running_loop() -> tuple[object, Soon, Soon]:
    """The running event loop (asyncio's loop or trio's token), its way to run a callable on its thread from another
    thread, and from its own thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio
        import trio

        token = trio.lowlevel.current_trio_token()
        return token, token.run_sync_soon, token.run_sync_soon
    return loop, loop.call_soon_threadsafe, loop.call_soon


class WSGIToASGI:
    def __init__(self, app: WSGIApp, threads: int = 64, thread_idle_timeout: float = 60.0) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        self.app = app
        self.threads = threads
        self._idle_timeout = thread_idle_timeout
        # Per running loop: its channel and thread pool (kept with a strong reference to the loop, so an id is never
        # reused for another), and environ bases per (server, scheme, root_path). Both small and bounded.
        self._sides: dict[int, _LoopSide] = {}
        self._shared: ThreadPool | None = None
        self._bases: dict[tuple[Any, ...], dict[str, Any]] = {}

    def loop_side(self) -> _LoopSide:
        """What the running loop (an asyncio loop, or trio's token) uses: made on its first request."""
        try:
            running: object = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:  # the usual case, looked up without making anything
            side = self._sides.get(id(running))
            if side is not None and side.owner is running:
                return side
        owner, call_soon_threadsafe, call_soon = _running_loop()
        side = self._sides.get(id(owner))
        if side is not None and side.owner is owner:
            return side
        # The sides of loops that have ended (an application run more than once, one asyncio.run() per test) let
        # their threads go: a closed asyncio loop's at once; past 16 sides, those of asyncio loops not running now
        # (their held requests handed over first: nothing else will) and trio runs' (their channel only: the pool
        # they use is shared).
        for key, old in list(self._sides.items()):
            old_aio = old.aio
            if old_aio is None:
                if len(self._sides) < 16:
                    continue
            elif not old_aio.is_closed() and (len(self._sides) < 16 or old_aio.is_running()):
                continue
            if self._sides.pop(key, None) is old and old_aio is not None:  # not already let go by another thread
                _retire(old)
        aio = owner if isinstance(owner, asyncio.AbstractEventLoop) else None
        if aio is not None:
            # adaptive growth, and requests handed over in batches on a saturated CPU, as in the server
            pool = ThreadPool(
                self.threads,
                self._idle_timeout,
                name="asyncwsgi-asgi",
                eager_threads=4,
                schedule=aio.call_later,
                defer=aio.call_soon,
            )
        else:
            pool = self._shared_pool()
        self._sides[id(owner)] = side = _LoopSide(owner, LoopChannel(call_soon_threadsafe, call_soon), aio, pool)
        return side

    def _shared_pool(self) -> ThreadPool:
        """The pool of every loop that is not asyncio's (trio): nothing in it is bound to a loop (threads start
        whenever a request finds none idle; each request is handed over at once), so one serves all, and a trio
        run that ends leaves no pool of its own behind."""
        pool = self._shared
        if pool is None:
            pool = self._shared = ThreadPool(self.threads, self._idle_timeout, name="asyncwsgi-asgi", eager_threads=4)
        return pool

    def environ_base(self, server: Any, scheme: str, root_path: str) -> dict[str, Any]:
        key = (server, scheme, root_path)
        base = self._bases.get(key)
        if base is None:
            base = connection_environ(server, scheme, root_path, False, {})
            if len(self._bases) < 64:
                self._bases[key] = base
        return base

    def close(self) -> None:
        """Stop the adapter's idle threads (busy ones finish their request first). Lifespan shutdown does this;
        call it yourself when the adapter is mounted where lifespan events do not reach it (a Starlette ``Mount``)."""
        sides, self._sides = self._sides, {}
        shared, self._shared = self._shared, None
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for side in sides.values():
            aio = side.aio
            if aio is None:
                continue  # the shared pool, below
            try:
                if aio is not current and aio.is_running():
                    aio.call_soon_threadsafe(_retire, side)  # a pool is only touched from its loop's thread
                else:
                    _retire(side)
            except Exception:  # the loop closed meanwhile: its held requests are gone with it
                side.pool.shutdown()
        if shared is not None:
            shared.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await _Exchange(self, scope).run(receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # WSGI has no websockets: refuse the handshake (the server answers 403).
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": 1000})
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _LoopSide:
    """What the adapter keeps per event loop it serves on: the channel its workers post through, and its own thread
    pool, whose growth checks and batching run on that loop. Not shared between loops: a pool's jobs are submitted
    from one thread, and one bound to a loop that has ended would schedule its checks on a closed loop."""

    __slots__ = ("aio", "channel", "owner", "pool")

    def __init__(self, owner: object, channel: LoopChannel, aio: asyncio.AbstractEventLoop | None, pool: ThreadPool):
        self.owner = owner  # the asyncio loop, or trio's token
        self.channel = channel
        self.aio = aio  # the asyncio loop, or None under trio
        self.pool = pool


def _retire(side: _LoopSide) -> None:
    """Shut an asyncio side's pool down, on its loop's thread or while that loop is not running. The requests it
    holds for the end of the loop iteration are handed over first (their coroutines still wait for them), unless the
    loop is closed (then nothing waits)."""
    assert side.aio is not None
    try:
        if not side.aio.is_closed():
            side.pool.flush()
    finally:
        side.pool.shutdown()


def _head_from_scope(scope: Scope) -> RequestHead:
    raw_path = scope.get("raw_path")
    if not raw_path:
        # An empty path (nothing in the ASGI spec forbids one) is the root: origin-form needs at least "/".
        raw_path = quote(scope.get("path") or "/", safe="/:@!$&'()*+,;=-._~").encode("latin-1")
    query = scope.get("query_string", b"")
    target = raw_path + b"?" + query if query else raw_path
    headers = [(bytes(name), bytes(value)) for name, value in scope.get("headers", ())]
    version = "1.0" if scope.get("http_version") == "1.0" else "1.1"
    expect = chunked = False
    content_length: int | None = None
    for name, value in headers:
        if len(name) in (6, 14, 17):
            lname = name.lower()
            if lname == b"content-length" and value.strip().isdigit():
                content_length = int(value)
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"expect" and version == "1.1" and value.strip().lower() == b"100-continue":
                expect = True
    return RequestHead(
        scope.get("method", "GET"), target, version, headers, True, content_length, chunked, expect, False
    )


class _Exchange:
    """One request: the loop-side partner of an ``ASGICall`` (it plays the connection's role for it)."""

    # Read by WSGICall (worker thread) as it reads them from HTTPConnection.
    access_log = False
    server_header = False
    closing = False
    draining = False
    can_sendfile = False
    proxy_trust: ProxyTrust | None = None  # the ASGI server in front handles proxy headers
    access_format = AccessLogFormat(None)  # unused: access_log is False (the ASGI server logs requests)

    def __init__(self, adapter: WSGIToASGI, scope: Scope) -> None:
        self.adapter = adapter
        self.root_path: str = scope.get("root_path", "") or ""
        server, client = scope.get("server"), scope.get("client")
        self.remote = remote_of(tuple(client) if client else None)
        base = adapter.environ_base(
            # ASGI gives lists or tuples; a unix-socket server is (path, None): name and port then come from Host.
            tuple(server) if server and server[1] is not None else None,
            scope.get("scheme", "http"),
            self.root_path,
        )
        self.environ_base = {**base, "asgi.scope": scope}
        self._client_gone = False
        self.head = head = _head_from_scope(scope)
        self.side = side = adapter.loop_side()
        self.channel = side.channel
        #: the asyncio loop, or None under another loop (trio), where anyio's primitives are used
        self._loop: asyncio.AbstractEventLoop | None = side.aio
        self.flow = WriteFlow(ASGI_HIGH_WATER)
        # HTTP/1.x: no Content-Length and no Transfer-Encoding means no body (RFC 9112 section 6.3); HTTP/2 and 3
        # carry bodies without saying so in a header.
        has_body = head.chunked or bool(head.content_length) or scope.get("http_version", "1.1") not in ("1.0", "1.1")
        self.input: InputStream | None = InputStream(self._from_worker, head.expect_continue) if has_body else None
        # What the worker posted (loop thread), in order, until deliver() takes it; deliver() waits on _wakeup
        # when there is nothing. Bounded by WriteFlow: at most about ASGI_HIGH_WATER of body, plus the end.
        self._pending: deque[tuple[str, Any]] = deque()
        self._wakeup: Any = None
        self._ended = False  # run() is over: what the worker still posts is dropped
        self._failure: Exception | None = None  # receive() failed: run() raises it
        self._more: Any = None
        self._continue: Any = None
        # asyncio: the pump task, once started (with no body to feed, only when the response streams: a response
        # that ends in one message has nothing to stop if the client leaves, and the task is a good part of the
        # cost of a small request); the receive() it uses. Under anyio the pump always runs.
        self._pump_task: asyncio.Task[None] | None = None
        self._receive: Receive | None = None

    # -- the two backends' primitives ----------------------------------------------------------------------------

    def _waiter(self) -> Any:
        """A one-shot waiter: an asyncio future, or an anyio Event (``_fire`` it, ``_wait`` for it)."""
        if self._loop is not None:
            return self._loop.create_future()
        import anyio

        return anyio.Event()

    def _fire(self, waiter: Any) -> None:
        if self._loop is None:
            waiter.set()
        elif not waiter.done():
            waiter.set_result(None)

    def _fired(self, waiter: Any) -> bool:
        return bool(waiter.is_set() if self._loop is None else waiter.done())

    async def _wait(self, waiter: Any, timeout: float | None = None) -> None:
        """Until ``waiter`` fires, or at most ``timeout`` seconds."""
        if self._loop is not None:
            if timeout is None:
                await waiter
                return
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)  # shielded: a timeout leaves it pending
            except asyncio.TimeoutError:
                pass
            return
        if timeout is None:
            await waiter.wait()
            return
        import anyio

        with anyio.move_on_after(timeout):
            await waiter.wait()

    async def run(self, receive: Receive, send: Send) -> None:
        call = ASGICall(self, self.head, self.input, self.adapter.app, self.channel, self.flow)
        # Made before the worker starts: its first read may ask for the body before pump() runs.
        self._continue = self._waiter() if self.head.expect_continue else None
        if self._loop is None:
            import anyio

            async with anyio.create_task_group() as tg:
                tg.start_soon(self.pump, receive)
                try:
                    await self.deliver(call, send)
                finally:
                    tg.cancel_scope.cancel()
            return
        self._receive = receive
        if self.input is not None or self._continue is not None:
            self._start_pump()
        try:
            await self.deliver(call, send)
        finally:
            pump, self._pump_task, self._receive = self._pump_task, None, None
            if pump is not None:
                # Cancelled, and let go of: the task refers to this exchange (through its coroutine), and a cycle
                # would keep the exchange and the request body it holds until the cyclic collector ran.
                pump.cancel()

    def _start_pump(self) -> None:
        """asyncio: start the pump (feeding the body, then watching for the client leaving), if not yet started."""
        if self._pump_task is None and self._loop is not None and self._receive is not None:
            self._pump_task = self._loop.create_task(self.pump(self._receive))

    async def deliver(self, call: ASGICall, send: Send) -> None:
        """Start the call on a worker, then ``send()`` what it posts, in order, until the end of the response. One
        coroutine, awaiting the waiter itself: each level of coroutines is made per request and passed through on
        every resumption."""
        self.side.pool.submit(call.context.run, call.run_in_context)  # as the server does: no frame of ours between
        pending = self._pending
        loop = self._loop
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if not pending:
                    if loop is not None:
                        self._wakeup = waiter = loop.create_future()
                        await waiter
                    else:
                        self._wakeup = waiter = self._waiter()
                        await waiter.wait()
                    continue
                kind, messages = pending.popleft()
                if kind == "data" and self._pump_task is None:
                    self._start_pump()  # the response streams: from now on a client that leaves must stop the app
                if kind == "abort":
                    if self._client_gone:
                        return  # the worker stopped because the client left: nothing to send, nobody to tell
                    # The app failed after its response started: only the server can still say so, by cutting it.
                    raise RuntimeError("the WSGI application failed after its response had started (see the log)")
                size = 0
                for message in messages:
                    await send(message)
                    size += len(message.get("body", b""))
                self.flow.wrote(size)
                if kind == "end":
                    return
        finally:
            self._gone("the response ended")
            self._ended = True
            pending.clear()
            # The stream calls back into this exchange (_from_worker): let go of it, so no cycle keeps the exchange
            # and the body until the cyclic collector runs (the worker keeps its own reference while it needs it).
            self.input = None

    # -- loop side: request body and disconnects -------------------------------------------------------------------

    def _from_worker(self, what: str) -> None:
        # Worker thread (InputStream asks for more body): forward to the loop.
        self.channel.post(self.on_input_request, what)

    def on_input_request(self, what: str) -> None:
        if what == InputStream.WANT_CONTINUE and self._continue is not None:
            self._fire(self._continue)
        elif what == InputStream.WANT_MORE and self._more is not None and self.input is not None:
            self.input.paused = False
            self._fire(self._more)

    async def pump(self, receive: Receive) -> None:
        """Feed the body into ``wsgi.input`` with flow control, then watch for the client leaving. Never raises:
        if ``receive()`` fails, the request ends as if the client had left, and ``run()`` raises the error."""
        try:
            await self._pump(receive)
        except Exception as exc:
            self._failure = exc
            self._gone(f"receive() failed: {exc!r}")
            self._wake()

    async def _pump(self, receive: Receive) -> None:
        stream = self.input
        if self._continue is not None:
            # Some servers (uvicorn) send "100 Continue" on the first receive(): not before the app reads.
            await self._wait(self._continue)
        while True:
            if stream is not None and not stream.complete and stream.buffered >= stream.high_water:
                # The app is behind: ask it to say when it has read (stream.pause). ASGI reports a disconnect only
                # through receive(), possibly queued behind body messages, so up to PEEK_CAP past the mark keep
                # receiving, and beyond it look once every PAUSED_PEEK seconds (one message each time).
                more = self._more = self._waiter()
                stream.pause()
                if stream.buffered >= stream.high_water + PEEK_CAP:
                    await self._wait(more, PAUSED_PEEK)
                    if self._fired(more):
                        continue
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                if stream is not None and not stream.complete:
                    body = message.get("body", b"")
                    if body:
                        # The stream keeps what it is fed, uncopied: a server's reused buffer must not be kept.
                        stream.feed(body if type(body) is bytes else bytes(body))
                    if not message.get("more_body", False):
                        stream.feed_eof()
            elif kind == "http.disconnect":
                self._client_gone = True
                self._gone("client disconnected")
                return

    def _gone(self, why: str) -> None:
        if self.input is not None:
            self.input.abort(ClientDisconnected(why))
        self.flow.close()

    # -- loop side: the response ---------------------------------------------------------------------------------

    def _push(self, item: tuple[str, Any]) -> None:
        if self._ended:
            return  # the response was cut (send() failed, the task was cancelled): nobody will take it
        self._pending.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None:
            self._wakeup = None
            self._fire(waiter)

    def on_response_data(self, msg: tuple[WSGICall, list[Message]]) -> None:
        self._push(("data", msg[1]))

    def on_response_end(self, msg: tuple[WSGICall, list[Message], bool]) -> None:
        self._push(("end", msg[1]))

    def on_response_abort(self, call: WSGICall) -> None:
        self._push(("abort", None))

    def on_sendfile(self, msg: Any) -> None:  # never called: can_sendfile is False
        raise NotImplementedError

    def on_call_closed(self, token: list[None]) -> None:  # never called: one call per exchange, nothing waits on it
        pass


#: ASGI header lists (lowercased names, latin-1 bytes) of the response header lists start_response has checked, by
#: the checked tuple (the same few, over and over: start_response hands out the same tuple for an equal list). Bounded
#: in count and in each list's size; emptied when full. Read and written by worker threads (single dict operations).
_ASGI_HEADERS: dict[tuple[tuple[str, str], ...], tuple[tuple[bytes, bytes], ...]] = {}
_ASGI_HEADERS_MAX = 2048


class ASGICall(WSGICall):
    """A ``WSGICall`` whose response goes out as ASGI messages instead of HTTP/1.1 bytes."""

    __slots__ = ()

    def _start_message(self, body_length: int | None) -> Message:
        status = self._status or "500 Internal Server Error"
        source = self._headers
        encoded = _ASGI_HEADERS.get(source) if type(source) is tuple else None
        if encoded is None:
            encoded = tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in source)
            if type(source) is tuple and sum(len(name) + len(value) for name, value in encoded) <= _ASGI_HEADERS_MAX:
                if len(_ASGI_HEADERS) >= 512:
                    _ASGI_HEADERS.clear()  # the app's responses changed (or never repeat): start over
                _ASGI_HEADERS[source] = encoded
        headers = list(encoded)  # a list of its own: an ASGI middleware may add to it
        head = self.head.method == "HEAD"
        if (
            self._content_length is None
            and body_length is not None
            and (not self._no_body or (head and body_length and self._status_has_content()))
        ):
            headers.append((b"content-length", str(body_length).encode("ascii")))
        if not self._keep_alive and self.head.keep_alive:
            headers.append((b"connection", b"close"))  # the app asked for it (start_response took it out)
        return {"type": "http.response.start", "status": int(status[:3]), "headers": headers}

    def _frame_data(self, data: bytes) -> tuple[Any, int]:
        messages = [] if self.headers_sent else [self._start_message(None)]
        if not self._no_body:
            messages.append({"type": "http.response.body", "body": data, "more_body": True})
        return messages, len(data)

    def _frame_end(self, body: bytes) -> Any:
        messages = []
        if not self.headers_sent:
            known = self._body_known or self._content_length is not None
            messages.append(self._start_message(len(body) if known else None))
        messages.append({"type": "http.response.body", "body": b"" if self._no_body else body, "more_body": False})
        return messages

    def _frame_error(self) -> Any:
        body = b"Internal Server Error\n"
        return [
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))],
            },
            {"type": "http.response.body", "body": body, "more_body": False},
        ]
