"""``HTTPConnection``: the asyncio protocol for one client connection.

Threads: every method here runs on the event-loop thread. Methods named ``on_response_*`` and ``on_input_request``
are called by the loop when it drains the ``LoopChannel``, on behalf of a worker thread; they are the only way a
worker affects the connection, and only this class touches the transport.

Lifecycle of a request: the parser calls ``on_head`` -> a ``WSGICall`` is made and submitted to the pool (or queued
behind the one in flight: pipelined requests are answered in order, one app call at a time); body bytes go to the
call's ``InputStream``; the worker posts response bytes; ``on_response_end`` writes the last bytes, then closes the
connection or starts the next queued call or sets the keep-alive deadline (deadlines are fired by the server's
periodic sweep, not by a timer per connection).

Reading is paused while any of these holds: a request body's buffer is above its high-water mark, too many requests
are queued behind the one in flight, or the connection is finishing (a close was asked, an error is pending, or the
body in progress timed out). Errors in the client's bytes become one canned response and a close, here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from typing import TYPE_CHECKING, Any

from ..errors import ClientDisconnected, ProtocolError
from ..protocol.writer import CONTINUE, error_response
from ..wsgi.bridge import WriteFlow
from ..wsgi.call import SendfileDone, WSGICall
from ..wsgi.environ import remote_of
from ..wsgi.input import InputStream
from .parser import RequestHead, RequestParser

if TYPE_CHECKING:
    from ..accesslog import AccessLogFormat
    from ..config import Config
    from ..proxy import ProxyTrust
    from ..server import Server

__all__ = ["HTTPConnection"]

logger = logging.getLogger("asyncwsgi.error")

#: Requests parsed but not yet started, beyond which reading pauses.
MAX_PIPELINE = 16
_NO_PIPELINE: list[WSGICall] = []  # shared and never appended to

#: Parsers kept between messages for the next connection that needs one (the rest are freed).
IDLE_PARSERS = 256

#: The transport's write-buffer high-water mark (the worker-side limit is ``bridge.HIGH_WATER``).
TRANSPORT_HIGH_WATER = 256 * 1024


class HTTPConnection(asyncio.Protocol):
    # Slots: thousands of idle keep-alive connections must stay small (benchmarks/ measures bytes per connection).
    __slots__ = (
        "_after_end",
        "_after_end_asked",
        "_current",
        "_flow",
        "_idle",
        "_lost",
        "_parser",
        "_parsing",
        "_pending_error",
        "_pipeline",
        "_read_done",
        "_read_paused",
        "_sendfile_task",
        "_server",
        "_transport",
        "_wbuf",
        "access_log",
        "can_sendfile",
        "closing",
        "deadline",
        "draining",
        "environ_base",
        "proxy_trust",
        "remote",
        "root_path",
        "server_header",
        "stalled_since",
    )

    def __init__(self, server: Server) -> None:
        self._server = server
        # Settings read by workers once per request: plain attributes, not properties (a call each).
        config = server.config
        self.root_path = config.root_path
        self.access_log = config.access_log
        self.server_header = config.server_header
        self.environ_base: dict[str, Any] = {}
        self.remote: tuple[str, str] | None = None
        self.closing = False  # read by workers when building a response head
        #: the server is draining: the next response head says Connection: close (read by workers)
        self.draining = False
        self._transport: asyncio.Transport | None = None
        self._parser: RequestParser | None = None  # taken from the server's pool when bytes arrive
        self._flow = WriteFlow()
        self._current: WSGICall | None = None
        self._parsing: WSGICall | None = None
        self._pipeline: list[WSGICall] = _NO_PIPELINE  # a list of its own once a request waits behind another
        #: the last call's ``open_after_end`` token, if its response ended before its iterable was closed: the next
        #: call waits until the worker is done with it; ``_after_end_asked`` once the loop is waiting for that. The
        #: token, not the call: an idle keep-alive connection must not keep its last request's objects alive.
        self._after_end: list[None] | None = None
        self._after_end_asked = False
        self._pending_error: ProtocolError | None = None
        self._read_paused = False
        self._read_done = False  # no more requests will be read (close asked, protocol switched, client EOF)
        self._lost = False
        #: ``loop.time()`` after which the server's reaper calls ``on_deadline``; 0 for none. While ``_idle`` it is the
        #: keep-alive deadline, otherwise the deadline for the request head being received.
        self.deadline = 0.0
        self._idle = False
        #: ``loop.time()`` when the transport last paused writing (the client stopped reading); 0 when it is not
        self.stalled_since = 0.0
        #: response bytes taken from the channel in this drain, written once at its end (one writev for a streamed
        #: body's several chunks)
        self._wbuf: list[bytes] | None = None
        #: the sendfile in progress: held here because asyncio keeps only a weak reference to running tasks
        self._sendfile_task: asyncio.Task[None] | None = None
        #: set when the peer is a trusted proxy whose forwarding headers are applied to each request's environ
        self.proxy_trust: ProxyTrust | None = None
        #: the loop and transport can send files zero-copy (stdlib loop, plain TCP/unix; not uvloop, not TLS)
        self.can_sendfile = False

    @property
    def _config(self) -> Config:
        return self._server.config

    @property
    def access_format(self) -> AccessLogFormat:
        return self._server.access_format

    # -- asyncio.Protocol --------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self._transport = transport
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        server = self._server
        tls = transport.get_extra_info("sslcontext") is not None
        self.environ_base = server.environ_base(transport.get_extra_info("sockname"), tls)
        self.remote = remote_of(transport.get_extra_info("peername"))
        self.can_sendfile = type(server.loop).sendfile is not asyncio.AbstractEventLoop.sendfile and not tls
        trust = server.proxy_trust
        if trust is not None:
            peer = self.remote
            self.proxy_trust = trust if peer is None or trust.trusts(peer[0]) else None  # no peer: a unix socket
        server.connection_opened(self)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        idle = self._idle
        if idle:
            self._idle = False
        if self._read_done and self._parsing is None:
            return  # no more requests are read; only the body of one being received still is
        parser = self._parser
        if parser is None:
            idle_parsers = self._server.idle_parsers
            if idle_parsers:
                parser = idle_parsers.pop()
                parser.sink = self
            else:
                parser = self._server.new_parser(self)
            self._parser = parser
        try:
            parser.feed(data)
        except ProtocolError as exc:
            self._reject(exc)
            return
        if idle and self.deadline:
            # The next request began and its head is not complete yet (on_head clears the keep-alive deadline): it
            # has timeout_request_header to arrive whole. Armed after the feed, so a whole request reads no clock.
            self._arm_head_deadline()
        elif self._idle and parser.in_message:
            # An unread body ended in this feed (on_end made the connection idle) and the next head began.
            self._idle = False
            self._arm_head_deadline()
        # Fast path: a whole request without a body, nothing queued behind it: no reason to pause, none to resume.
        # These fields cover every reason in _must_stop and _body_full: a new reason there must be added here.
        if (
            self._read_paused
            or self._parsing is not None
            or self._pipeline
            or self._read_done
            or self._pending_error is not None
        ) and self._read_paused is not self._should_pause():
            self._update_reading()

    def eof_received(self) -> bool:
        # The client half-closed. Keep the transport open to answer the complete requests it sent, then close.
        # Between two pipelined requests (the next waits for the worker to close the last one's iterable) there is
        # no current call, yet requests are owed their responses.
        current = self._current
        partial = self._parsing
        if partial is not None:
            if partial is current:
                return False  # the request in flight lost the rest of its body: close
            # A pipelined request whose body never came: it will never be answered.
            if partial.input is not None:
                partial.input.abort(ClientDisconnected("client closed before the request body was complete"))
            if partial in self._pipeline:
                self._pipeline.remove(partial)
            self._parsing = None
        if current is None and not self._pipeline:
            return False  # nothing to answer: close
        self._read_done = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._flow.close()
        self.deadline = 0.0
        gone = ClientDisconnected("client disconnected")
        for call in (self._current, *self._pipeline):
            if call is not None and call.input is not None:
                call.input.abort(gone)
        self._pipeline.clear()
        had_request = self._current is not None
        self._current = None
        self._parser = None  # not pooled: its state may be an error or a closed message
        self._server.connection_closed(self, had_request)

    def pause_writing(self) -> None:
        self._flow.pause()
        if self._config.timeout_write:
            self.stalled_since = self._server.loop.time()

    def resume_writing(self) -> None:
        self._flow.resume()
        self.stalled_since = 0.0

    # -- parser sink -------------------------------------------------------------------------------------------------

    def on_head(self, head: RequestHead) -> None:
        if self._read_done:
            return  # a request after the last one we meant to read (its body, if any, goes nowhere)
        self.deadline = 0.0
        self._idle = False
        server = self._server
        config = server.config
        stream = None
        if head.chunked or head.content_length:
            stream = InputStream(
                self._on_input_request_from_worker, head.expect_continue, config.timeout_request_body or None
            )
        call = WSGICall(self, head, stream, server.app, server.channel, self._flow)
        self._parsing = call
        if not config.timeout_keep_alive:
            head.keep_alive = False  # --timeout-keep-alive 0: one request per connection
        if not head.keep_alive:
            self._read_done = True
        if self._current is None and (self._after_end is None or self._previous_closed()):
            self._start(call)
        else:
            if self._pipeline is _NO_PIPELINE:
                self._pipeline = []
            self._pipeline.append(call)

    def on_body(self, chunk: bytes) -> None:
        call = self._parsing
        if call is not None and call.input is not None:
            call.input.feed(chunk)

    def on_end(self) -> None:
        call = self._parsing
        if call is None:
            return
        if call.input is not None:
            call.input.feed_eof()
        self._parsing = None
        if self._current is None and not self._pipeline and not self.closing:
            # Neither in flight nor queued: the call was answered before the rest of its body, which the app left
            # unread, came. All of it is here now: the connection is idle, as at the end of a response.
            if self._read_done:
                self._close()
            else:
                self._idle = True
                self.deadline = self._server.loop.time() + self._config.timeout_keep_alive

    # -- flow control ------------------------------------------------------------------------------------------------

    def _body_full(self) -> InputStream | None:
        """The body being received, if its buffer is at the high-water mark."""
        call = self._parsing
        stream = call.input if call is not None else None
        return stream if stream is not None and stream.buffered >= stream.high_water else None

    def _must_stop(self) -> bool:
        """Reasons to stop reading other than a full body buffer."""
        return (
            (self._read_done and self._parsing is None)
            or self._pending_error is not None
            or len(self._pipeline) >= MAX_PIPELINE
        )

    def _should_pause(self) -> bool:
        return self._must_stop() or self._body_full() is not None

    def _update_reading(self) -> None:
        transport = self._transport
        if self._lost or transport is None:
            return
        # Decide once: a worker may drain the body concurrently, and the stream must learn it caused the pause.
        full = self._body_full()
        pause = full is not None or self._must_stop()
        if pause and not self._read_paused:
            self._read_paused = True
            transport.pause_reading()
        elif not pause and self._read_paused:
            self._read_paused = False
            call = self._parsing
            if call is not None and call.input is not None:
                call.input.paused = False
            transport.resume_reading()
        if full is not None:
            full.pause()

    def _stop_reading(self) -> None:
        self._read_done = True
        self._update_reading()

    # -- running calls -----------------------------------------------------------------------------------------------

    def _start(self, call: WSGICall) -> None:
        server = self._server
        limit = server.limit_concurrency
        if limit is not None and server.in_flight >= limit:
            # Shed load rather than queue without bound; the body (if any) is unread, so the connection closes.
            logger.warning(
                "concurrency limit reached: answering 503 to %s %s",
                call.head.method,
                call.head.target.decode("latin-1"),
            )
            self._pipeline.clear()
            self._read_done = True
            self._send_error(ProtocolError("the server is at its concurrency limit", 503))
            return
        self._current = call
        server.in_flight += 1
        server.submit(call.context.run, call.run_in_context)  # fn(arg): no frame of ours in between

    def _on_input_request_from_worker(self, what: str) -> None:
        # Worker thread: forward to the loop.
        self._server.channel.post(self.on_input_request, what)

    def on_input_request(self, what: str) -> None:
        """Loop side of ``InputStream``'s requests: send 100 Continue, or read more body."""
        if self._lost:
            return
        call = self._current
        if what == InputStream.WANT_CONTINUE:
            if call is not None and not call.headers_sent and self._transport is not None:
                self._transport.write(CONTINUE)
        elif what == InputStream.WANT_CLOSE:
            # The body timed out: read no more of it; the connection closes once the app's response is done.
            if call is not None and self._parsing is call:
                self._parsing = None
            self._stop_reading()
        else:
            self._update_reading()

    def on_response_data(self, msg: tuple[WSGICall, bytes | list[bytes]]) -> None:
        call, payload = msg
        transport = self._transport
        if self._lost or transport is None or transport.is_closing() or call is not self._current:
            return  # gone, closing (writing would only log errors), or a call that already ended
        self._queue(payload)

    def _queue(self, payload: bytes | list[bytes]) -> None:
        """Hold response bytes until the end of this drain (``_flush``), so that several messages' bytes for this
        connection leave in one write."""
        buf = self._wbuf
        if buf is None:
            self._wbuf = buf = []
            self._server.channel.after_drain(self._flush)
        if isinstance(payload, bytes):
            buf.append(payload)
        else:
            buf.extend(payload)

    def _flush(self) -> None:
        buf = self._wbuf
        self._wbuf = None
        transport = self._transport
        if buf and not self._lost and transport is not None and not transport.is_closing():
            self._write(buf if len(buf) > 1 else buf[0])

    def on_response_end(self, msg: tuple[WSGICall, bytes | list[bytes], bool]) -> None:
        call, payload, keep_alive = msg
        transport = self._transport
        # connection_lost clears _current: a call that is not current is one of a lost connection, or ended already
        if call is not self._current or transport is None or transport.is_closing():
            return  # (closing: connection_lost follows and settles the books)
        # The last bytes are written, but not counted in the WriteFlow: the worker never waits on them, so it never
        # counted them as queued, and counting them as written would give the connection's next streamed response
        # that much credit past its bound.
        buf = self._wbuf
        if buf is not None:  # earlier chunks of this response are waiting for the end of the drain: one write
            self._wbuf = None
            counted = sum(map(len, buf))
            if isinstance(payload, bytes):
                buf.append(payload)
            else:
                buf.extend(payload)
            transport.writelines(buf)
            self._flow.wrote(counted)
        elif isinstance(payload, bytes):
            if payload:
                transport.write(payload)
        else:
            transport.writelines(payload)
        self._current = None
        token = call.open_after_end
        if token:  # the worker is still closing the iterable (an empty token: it is done, nothing to wait for)
            self._after_end = token
            self._after_end_asked = False
        server = self._server
        server.in_flight -= 1  # server.request_done(), inline
        server.requests_done += 1
        if server.requests_done == server.max_requests:
            server.retiring.set()
        if call.input is not None and not call.input.complete:
            if (call.head.expect_continue and not call.input.received) or call.input.failed:
                keep_alive = False  # the client may not send the body, or its body timed out: framing is lost
            call.input.discard()
        if not keep_alive or self.closing:
            self._close()
            return
        if self._pipeline:
            if self._after_end is None or self._previous_closed():
                self._start(self._pipeline.pop(0))
        elif self._pending_error is not None:
            self._send_error(self._pending_error)
            return
        elif self._read_done:
            self._close()
            return
        elif self._parser is not None and self._parser.in_message:
            # Part of the next request's head is already here, or the rest of this one's unread body is still to
            # come (``_parsing`` is set, see on_deadline): either has timeout_request_header to arrive.
            self._arm_head_deadline()
        else:
            self._idle = True
            self.deadline = server.loop.time() + server.config.timeout_keep_alive
            parser = self._parser
            if parser is not None:
                # Between requests a connection needs no parser: back to the server's idle ones, so thousands of idle
                # keep-alive connections hold none (llhttp's state is about 1 KiB).
                self._parser = None
                idle_parsers = server.idle_parsers
                if len(idle_parsers) < IDLE_PARSERS:
                    parser.sink = None  # type: ignore[assignment]  # keeps no connection alive
                    idle_parsers.append(parser)
        if self._read_paused:
            self._update_reading()

    def _previous_closed(self) -> bool:
        """Whether the worker is done with the call whose response ended early (see ``WSGICall.open_after_end``);
        if not, it posts ``on_call_closed`` when it is."""
        if self._after_end_asked:
            return False
        token = self._after_end
        assert token is not None
        if token:
            try:
                token.pop()
                self._after_end_asked = True  # the worker will find the token gone and post on_call_closed
                return False
            except IndexError:
                pass
        self._after_end = None
        return True

    def on_call_closed(self, token: list[None]) -> None:
        """The worker closed the iterable of the call the next one waits for (``token`` is its ``open_after_end``):
        start that one."""
        if self._after_end is not token:
            return
        self._after_end = None
        self._after_end_asked = False
        if self._lost or self._current is not None or self.closing:
            return
        if self._pipeline:
            self._start(self._pipeline.pop(0))
            if self._read_paused:
                self._update_reading()

    def on_response_abort(self, call: WSGICall) -> None:
        if self._current is call:
            self._flush()  # what was sent of the response goes out before the close
            self._current = None
            self._server.request_done()
        if self._pending_error is not None and not self._lost and not call.headers_sent:
            self._send_error(self._pending_error)  # the app failed reading a body we rejected: say why
            return
        self._close()

    def on_sendfile(self, msg: tuple[WSGICall, bytes, Any, int, int, SendfileDone]) -> None:
        _, head, file, offset, count, done = msg
        if self._lost or self._transport is None:
            done.error = ClientDisconnected("client disconnected")
            done.event.set()
            return
        self._flush()
        if head:
            self._write(head)
        # The worker waits on ``done``, which the task sets however it ends.
        self._sendfile_task = self._server.loop.create_task(self._sendfile(file, offset, count, done))

    async def _sendfile(self, file: Any, offset: int, count: int, done: SendfileDone) -> None:
        transport = self._transport
        try:
            if count > 0 and transport is not None:
                done.sent = await self._server.loop.sendfile(transport, file, offset, count, fallback=True)
        except BaseException as exc:  # reported to the worker, which decides; CancelledError included
            done.error = exc
        finally:
            self._sendfile_task = None
            done.event.set()

    def _write(self, payload: bytes | list[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        if isinstance(payload, bytes):
            transport.write(payload)
            self._flow.wrote(len(payload))
        else:
            transport.writelines(payload)
            self._flow.wrote(sum(len(p) for p in payload))

    # -- errors, timers, closing -------------------------------------------------------------------------------------

    def _reject(self, exc: ProtocolError) -> None:
        self._parser = None  # llhttp stays in its error state: never reuse it
        if self._read_done and self._parsing is None:
            return  # bytes after the last request we meant to read (it asked to close): ignored, not an error
        logger.info(
            "bad request from %s: %s (%d)",
            self.remote[0] if self.remote else "client",
            exc,
            exc.status,
        )
        self._read_done = True
        parsing = self._parsing
        if parsing is not None and self._current is None and not self._pipeline:
            self._close()  # the rest of a body its app left unread after the response: that was the answer
            return
        if parsing is not None:
            if parsing.input is not None:
                parsing.input.abort(ClientDisconnected(f"malformed request body: {exc}"))
            if parsing is not self._current and parsing in self._pipeline:
                self._pipeline.remove(parsing)  # a queued request whose body is malformed: the error answers it
        if self._current is None and not self._pipeline:
            self._send_error(exc)
        else:
            # Answer the request in flight and the complete ones queued behind it first, then the error, in order:
            # a client matches responses to requests by their order.
            self._pending_error = exc
            self._update_reading()

    def _send_error(self, exc: ProtocolError) -> None:
        if self._transport is not None and not self._lost:
            self._transport.write(error_response(exc.status, str(exc), server_header=self._config.server_header))
        self._close()

    def _arm_head_deadline(self) -> None:
        server = self._server
        timeout = server.config.timeout_request_header
        self.deadline = server.loop.time() + timeout if timeout > 0 else 0.0

    def on_deadline(self) -> None:
        """Called by the server's reaper when ``deadline`` has passed."""
        self.deadline = 0.0
        if self._idle:
            self._close()  # keep-alive timeout: no answer owed
        elif self.idle:  # no request in flight or queued
            if self._parsing is not None:
                # The rest of a body its app left unread, read and dropped after the response so the connection
                # could serve another request, did not all come within timeout_request_header: that response was
                # the answer.
                self._close()
            else:
                logger.info("request head not received in time from %s", self.remote[0] if self.remote else "client")
                self._read_done = True
                self._send_error(ProtocolError("the request head was not received in time", 408))

    def _close(self) -> None:
        self.closing = True
        self.deadline = 0.0
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- server-side control -----------------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request is in flight or queued (a partial request head may be arriving)."""
        return self._current is None and not self._pipeline

    def shutdown(self) -> None:
        """Graceful: close now if idle, else after the response in flight (queued requests are never answered)."""
        self.closing = True
        self._pipeline.clear()
        self._read_done = True
        if self._parsing is not self._current:
            self._parsing = None  # a queued request's body: not needed any more
        if self._current is None:
            self._close()
        else:
            self._update_reading()

    def on_write_timeout(self) -> None:
        """The client took none of its response for ``timeout_write`` seconds: drop it, freeing the worker thread."""
        self.stalled_since = 0.0
        logger.info("client %s stopped reading its response: connection closed", self.remote[0] if self.remote else "")
        self.abort()

    def abort(self) -> None:
        """Forceful: drop the connection now."""
        if self._transport is not None:
            self._transport.abort()
