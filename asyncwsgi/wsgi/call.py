"""One WSGI call: ``start_response``, ``write``, iterating the response, and framing it for HTTP/1.1.

Threads: a ``WSGICall`` is created on the event-loop thread (``__init__`` only copies references) and everything
else in this module runs on the worker thread that the pool hands it to. The worker never touches the transport:
response bytes go to the loop through ``LoopChannel.post`` to the connection's ``on_response_*`` methods, and the
worker waits on ``WriteFlow`` for backpressure.

Rules kept here (PEP 3333, RFC 9112):
- the response head is sent with the first non-empty body chunk (or at the end), so an error before it can still
  become a 500, and ``exc_info`` can replace the headers until then;
- a declared Content-Length is enforced: extra bytes are dropped, a short body closes the connection;
- without Content-Length the body is chunked on HTTP/1.1, close-delimited on HTTP/1.0, unless the whole body is
  known before the head goes out, in which case Content-Length is added;
- HEAD, 1xx, 204 and 304 responses carry no body;
- the iterable's ``close()`` is called on every path, including client disconnect.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ClientDisconnected
from ..protocol.writer import CHUNK_END, DATE, error_response, frame_chunk, refresh_date
from ..proxy import apply_forwarded
from .bridge import LoopChannel, WriteFlow
from .environ import request_environ
from .files import FileWrapper
from .input import EmptyInput, InputStream

if TYPE_CHECKING:
    from ..accesslog import AccessLogFormat
    from ..protocol.parser import RequestHead
    from ..proxy import ProxyTrust


class ResponseTarget(Protocol):
    """What a ``WSGICall`` needs from the loop side: ``HTTPConnection`` in the server, the ASGI adapter's exchange.
    The worker only reads these."""

    @property
    def environ_base(self) -> dict[str, Any]: ...
    @property
    def remote(self) -> tuple[str, str] | None: ...
    @property
    def root_path(self) -> str: ...
    @property
    def access_log(self) -> bool: ...
    @property
    def server_header(self) -> bool: ...
    @property
    def closing(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def can_sendfile(self) -> bool: ...
    @property
    def proxy_trust(self) -> ProxyTrust | None: ...
    @property
    def access_format(self) -> AccessLogFormat: ...

    def on_response_data(self, msg: Any) -> None: ...
    def on_response_end(self, msg: Any) -> None: ...
    def on_response_abort(self, call: Any) -> None: ...
    def on_sendfile(self, msg: Any) -> None: ...
    def on_call_closed(self, token: list[None]) -> None: ...


__all__ = ["WSGICall"]

error_log = logging.getLogger("asyncwsgi.error")
access_log = logging.getLogger("asyncwsgi.access")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_STATUS_RE = re.compile(r"[1-5][0-9][0-9] [^\x00-\x08\x0a-\x1f\x7f]*\Z")
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_SMALL = 16 * 1024  # join head and body into one bytes object below this body size
_EMPTY_INPUT = EmptyInput()
_time = time.time


# Statuses and header names already validated (the same few, over and over), bounded against hostile apps.
# A status maps to whether its response has no body (1xx, 204, 304).
_GOOD_STATUSES: dict[str, bool] = {}
_CACHE_MAX = 512

# What start_response does with a header, by name: keep it, note it (Content-Length, Date, Server), or look at its
# value (Connection). Hop-by-hop names other than Connection are refused and never cached.
_PLAIN, _CONTENT_LENGTH, _DATE, _SERVER, _CONNECTION = range(5)
_SPECIAL_NAMES = {"content-length": _CONTENT_LENGTH, "date": _DATE, "server": _SERVER, "connection": _CONNECTION}
_NAME_KINDS: dict[str, int] = {}

# Whole response header lists already checked (a framework answers with the same few lists over and over), by the
# list's items: (headers kept, their serialized block, Content-Length, has Date, has Server, Connection: close).
# An item equal to a checked one is taken as checked (a str or tuple subclass with the same value included: the
# bytes sent are the checked ones). Bounded in count and in each list's size (its block and the items left out of
# it, such as Connection: close); emptied when full. A list is read once (one tuple of its items), so a list that
# another thread changes meanwhile is remembered as what was checked.
_Checked = tuple[tuple[tuple[str, str], ...], str, "int | None", bool, bool, bool]
_CHECKED_HEADERS: dict[tuple[Any, ...], _Checked] = {}
_CHECKED_BLOCK_MAX = 2048


def _check_status(status: str) -> bool:
    """Validate a status not seen before; returns whether its response has no body."""
    if type(status) is not str:
        raise TypeError(f"status must be a str, not {type(status).__name__}")
    if not _STATUS_RE.match(status):
        raise ValueError(f"invalid status line {status!r}: expected e.g. '200 OK', without control characters")
    if not status.isascii():
        _check_latin1("status", status)
    no_body = status[0] == "1" or status[:3] in ("204", "304")
    if len(_GOOD_STATUSES) < _CACHE_MAX:
        _GOOD_STATUSES[status] = no_body
    return no_body


def _name_kind(name: str) -> int:
    """Validate a header name not seen before; returns its kind (``_PLAIN``...)."""
    if type(name) is not str:
        raise TypeError(f"response header names and values must be str, not {type(name).__name__}: {name!r}")
    if not _TOKEN_RE.match(name):
        raise ValueError(f"invalid response header name {name!r}")
    lname = name.lower()
    kind = _SPECIAL_NAMES.get(lname, _PLAIN)
    if kind != _CONNECTION and lname in _HOP_BY_HOP:
        raise ValueError(f"hop-by-hop header {name!r} is not allowed from a WSGI application (PEP 3333)")
    if len(_NAME_KINDS) < _CACHE_MAX:
        _NAME_KINDS[name] = kind
    return kind


def _check_headers(items: tuple[Any, ...]) -> _Checked:
    """Validate a response header list not seen before, given as a tuple of its items (worker thread); remember
    what it says if it is small (what is sent, and what is left out of it, both count)."""
    content_length = None
    has_date = has_server = close = False
    clean: list[tuple[str, str]] = []
    dropped = 0
    for item in items:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"each response header must be a (name, value) tuple, not {item!r}")
        name, value = item
        kind = _NAME_KINDS.get(name) if type(name) is str else None
        if kind is None:
            kind = _name_kind(name)
        if type(value) is not str:
            raise TypeError(f"response header names and values must be str: {item!r}")
        if not (value.isascii() and value.isprintable()):  # the common case needs no regex
            if _BAD_VALUE_RE.search(value):
                raise ValueError(f"response header {name!r} has a control character (CR, LF, NUL...) in its value")
            _check_latin1(f"header {name!r}", value)
        if kind:
            if kind == _CONTENT_LENGTH:
                v = value.strip()
                if not v.isdigit() or (content_length is not None and int(v) != content_length):
                    raise ValueError(f"invalid Content-Length {value!r}")
                if content_length is not None:
                    dropped += len(name) + len(value)
                    continue
                content_length = int(v)
            elif kind == _DATE:
                has_date = True
            elif kind == _SERVER:
                has_server = True
            else:  # Connection
                if value.strip().lower() == "close":
                    close = True  # the app asks us to close after this response: honoured, not forwarded
                    dropped += len(name) + len(value)
                    continue
                raise ValueError(f"hop-by-hop header {name!r} is not allowed from a WSGI application (PEP 3333)")
        clean.append(item)
    block = "".join([f"{name}: {value}\r\n" for name, value in clean])
    checked = (tuple(clean), block, content_length, has_date, has_server, close)
    if len(block) + dropped <= _CHECKED_BLOCK_MAX:
        if len(_CHECKED_HEADERS) >= _CACHE_MAX:
            _CHECKED_HEADERS.clear()  # the app's responses changed (or never repeat): start over
        _CHECKED_HEADERS[items] = checked
    return checked


def _check_latin1(what: str, text: str) -> None:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"the response {what} has characters outside latin-1 (PEP 3333): {text!r}") from None


class SendfileDone:
    """Completion of a loop-side sendfile, waited for by the worker."""

    __slots__ = ("error", "event", "sent")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None


class WSGICall:
    __slots__ = (
        "_app",
        "_body_known",
        "_chunked",
        "_content_length",
        "_finished",
        "_flow",
        "_has_date",
        "_has_server",
        "_header_block",
        "_headers",
        "_held",
        "_keep_alive",
        "_no_body",
        "_post",
        "_sent",
        "_started",
        "_status",
        "conn",
        "context",
        "head",
        "headers_sent",
        "input",
        "open_after_end",
    )

    def __init__(
        self,
        conn: ResponseTarget,
        head: RequestHead,
        wsgi_input: InputStream | None,
        app: Callable[..., Iterable[bytes]],
        channel: LoopChannel,
        flow: WriteFlow,
    ) -> None:
        # Loop thread: references only.
        self.conn = conn
        self.head = head
        self.input = wsgi_input
        self._app = app
        self._post = channel.post
        self._flow = flow
        self.context = contextvars.copy_context()
        self._status: str | None = None
        self._headers: Sequence[tuple[str, str]] = ()
        self._header_block = ""  # self._headers serialized, "Name: value\r\n" each
        self._content_length: int | None = None
        self._has_date = False
        self._has_server = False
        self._keep_alive = head.keep_alive
        self._chunked = False
        self._no_body = head.method == "HEAD"
        self._held: list[bytes] = []
        self._finished = False
        self._body_known = False
        self._sent = 0
        self._started = 0.0
        #: set (worker thread) once the response head has been posted; read by the loop for 100-continue.
        self.headers_sent = False
        #: ``[None]`` once the end of the response was posted before the app's iterable was exhausted and closed
        #: (later chunks are dropped): the worker and the loop each pop it once, and whichever finds it empty knows
        #: the other passed first (the worker then posts ``on_call_closed`` with it; the loop starts the connection's
        #: next call at once). Else None.
        self.open_after_end: list[None] | None = None

    # == worker thread ==============================================================================================

    def run(self, _: object = None) -> None:
        """Run the call in its own copy of the loop's context (the server submits ``context.run`` with
        ``run_in_context`` instead: the same, one frame less)."""
        self.context.run(self.run_in_context)

    def run_in_context(self) -> None:
        conn = self.conn
        access_log = conn.access_log
        if access_log:
            self._started = time.monotonic()
        environ: dict[str, Any] = {}
        result: Any = None
        try:
            environ = request_environ(
                conn.environ_base,
                self.head,
                conn.root_path,
                self.input if self.input is not None else _EMPTY_INPUT,
                conn.remote,
            )
            if conn.proxy_trust is not None:
                apply_forwarded(environ, conn.proxy_trust)
            if self._flow.closed:
                raise ClientDisconnected("client disconnected before the application was called")
            try:
                result = self._app(environ, self.start_response)
                self._consume(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if self.open_after_end is None:
                self._finish()
        except ClientDisconnected as exc:
            error_log.debug("client went away during %s %s: %s", self.head.method, environ.get("RAW_URI"), exc)
            if self.open_after_end is None:
                self._post(conn.on_response_abort, self)
        except BaseException as exc:  # SystemExit from an app is an app error too; the server goes on
            self._fail(exc)
        finally:
            self._finished = True  # a write() kept by the app after this must not reach the connection
            if self.open_after_end is not None:
                self._closed_after_end()
        if access_log:
            self._log_access(environ)

    def _closed_after_end(self) -> None:
        """The iterable of a response that ended early is closed: the connection may start its next call."""
        token = self.open_after_end
        assert token is not None
        if token:
            try:
                token.pop()
                return  # first: the loop will find the token gone when it looks
            except IndexError:
                pass
        self._post(self.conn.on_call_closed, token)  # the loop looked first and waits for this

    # -- start_response / write --------------------------------------------------------------------------------------

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
            # Nothing went out yet: the new status and headers replace the old, and so does the body.
            self._held = []
            self._body_known = False
        elif self._status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")

        no_body = _GOOD_STATUSES.get(status) if type(status) is str else None
        if no_body is None:
            no_body = _check_status(status)
        if not isinstance(headers, list):
            raise TypeError(f"response headers must be a list, not {type(headers).__name__}")
        items = tuple(headers)  # one snapshot: looked up, checked and remembered as the same items
        try:
            checked = _CHECKED_HEADERS.get(items)
        except TypeError:  # an unhashable item (a list, say): the full check says what is wrong with it
            checked = None
        if checked is None:
            checked = _check_headers(items)
        self._status = status
        self._headers, self._header_block, self._content_length, self._has_date, self._has_server, close = checked
        self._keep_alive = self.head.keep_alive and not close  # Connection: close from the app is honoured
        self._no_body = no_body or self.head.method == "HEAD"
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's imperative write: data is handed to the loop before this returns."""
        if self._status is None:
            raise RuntimeError("write() called before start_response()")
        if self._finished:
            raise RuntimeError("write() called after the response ended")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self._send(data)

    # -- iterating the response --------------------------------------------------------------------------------------

    def _consume(self, result: Any) -> None:
        t = type(result)
        if t is list or t is tuple:
            # The whole body is known: hold it so the head can carry Content-Length and go out in one write.
            for chunk in result:
                if type(chunk) is not bytes:
                    raise TypeError(f"the response iterable yielded {type(chunk).__name__}, not bytes")
            if self._status is None:
                raise RuntimeError("the application returned without calling start_response()")
            if not self.headers_sent:
                self._body_known = True
                if len(result) == 1:
                    if result[0]:
                        self._held.append(result[0])
                else:
                    self._held.extend([c for c in result if c])
                return
            for chunk in result:
                if chunk:
                    self._send(chunk)
            return
        if t is FileWrapper:
            if self._try_sendfile(result):
                return
            self._declare_file_length(result)
        if result is None or isinstance(result, (str, bytes, bytearray)):
            raise TypeError(
                f"the application returned {type(result).__name__}; it must return an iterable of bytes "
                "(wrap a single body in a list)"
            )
        flow = self._flow
        for chunk in result:
            if type(chunk) is not bytes:
                raise TypeError(f"the response iterable yielded {type(chunk).__name__}, not bytes")
            if self.open_after_end is not None:
                if chunk:
                    self._warn_extra()  # past the declared length, which already went out: dropped
            elif chunk:
                cl = self._content_length
                if cl is not None and len(chunk) == cl - self._sent and not self._no_body:
                    # The chunk that completes the declared length (a framework's one-chunk response, a file's last
                    # block) goes out as the end of the response, at once and in one hand-off; the iterable is still
                    # run to its end and closed, but nothing it does can touch this response or the connection.
                    self._held.append(chunk)
                    self.open_after_end = [None]  # before the post: the loop must see it with the end
                    try:
                        self._finish()
                    except BaseException:
                        self.open_after_end = None  # nothing was posted: the failure is answered as usual
                        raise
                else:
                    self._send(chunk)
            elif flow.closed:
                raise ClientDisconnected("client disconnected")
        if self._status is None:
            raise RuntimeError("the application returned without calling start_response()")
        self._body_known = not self.headers_sent

    def _declare_file_length(self, wrapper: FileWrapper) -> None:
        """A regular file's length is known: send Content-Length rather than chunked framing."""
        if self._content_length is None and not self.headers_sent and self._status is not None and not self._no_body:
            span = wrapper.sendfile_span()
            if span is not None:
                self._content_length = span[1]
                self._headers = [*self._headers, ("Content-Length", str(span[1]))]
                self._header_block += f"Content-Length: {span[1]}\r\n"

    def _try_sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a regular file with the loop's ``sendfile`` (zero-copy where the transport allows); False to fall
        back to iterating the wrapper (uvloop and TLS transports have no sendfile; chunked framing needs copies)."""
        if not self.conn.can_sendfile or self._no_body or self._chunked or self._status is None:
            return False
        span = wrapper.sendfile_span()
        if span is None:
            return False
        offset, count = span
        cl = self._content_length
        if cl is not None:
            count = max(0, min(count, cl - self._sent))
        head = b""
        if not self.headers_sent:
            head = self._head(count if cl is None else None)  # the length is known: never chunked
            self.headers_sent = True
        done = SendfileDone()
        self._flow.queued += len(head)
        self._post(self.conn.on_sendfile, (self, head, wrapper.filelike, offset, count, done))
        done.event.wait()
        if done.error is not None:
            raise ClientDisconnected(f"sendfile failed: {done.error}")
        self._sent += done.sent
        return True

    # -- framing -----------------------------------------------------------------------------------------------------

    def _head(self, body_length: int | None) -> bytes:
        """Serialize the response head. ``body_length`` is the whole body's size when known before the head goes."""
        head = self.head
        conn = self.conn
        parts = ["HTTP/1.1 ", self._status or "500 Internal Server Error", "\r\n", self._header_block]
        keep_alive = self._keep_alive and not conn.closing and not conn.draining
        body = self.input
        if body is not None and ((head.expect_continue and not body.received) or body.failed):
            keep_alive = False  # we never asked for the body (the client may or may not send it), or it broke off
        no_body = self._no_body
        if self._content_length is None and not (no_body and head.method != "HEAD"):
            if body_length is not None and (not no_body or (body_length and self._status_has_content())):
                parts.append(f"Content-Length: {body_length}\r\n")
            elif no_body:
                pass  # HEAD of a streamed body: the GET would be chunked; say nothing about the length
            elif head.version == "1.1":
                parts.append("Transfer-Encoding: chunked\r\n")
                self._chunked = True
            else:
                keep_alive = False  # HTTP/1.0, unknown length: the body ends when we close
        if not self._has_date:
            if not DATE[1] <= _time() < DATE[2]:  # writer.http_date(), inline
                refresh_date()
            parts.append(DATE[3])
        if not self._has_server and conn.server_header:
            parts.append("Server: asyncwsgi\r\n")
        if not keep_alive:
            parts.append("Connection: close\r\n\r\n")
        elif head.version == "1.0":
            parts.append("Connection: keep-alive\r\n\r\n")
        else:
            parts.append("\r\n")
        self._keep_alive = keep_alive
        return "".join(parts).encode("latin-1")

    def _send(self, data: bytes) -> None:
        """Post one non-final body chunk (sending the head first if needed), then wait for backpressure."""
        flow = self._flow
        if flow.closed:
            raise ClientDisconnected("client disconnected")
        if self._status is None:
            raise RuntimeError("the application produced body data before calling start_response()")
        if self.open_after_end is not None:
            self._warn_extra()  # the declared length already went out: this is past it
            return
        cl = self._content_length
        if cl is not None and len(data) > cl - self._sent:
            self._warn_extra()
            if self._sent >= cl:
                return
            data = data[: cl - self._sent]
        if self._no_body and self.headers_sent:
            self._sent += len(data)  # HEAD, 204, 304: counted, never sent
            return
        payload, size = self._frame_data(data)
        self.headers_sent = True
        self._sent += len(data)
        flow.queued += size
        self._post(self.conn.on_response_data, (self, payload))
        flow.wait()

    # -- framing: HTTP/1.1 bytes here; the ASGI adapter overrides these three to produce ASGI messages ---------------

    def _frame_data(self, data: bytes) -> tuple[Any, int]:
        """The payload carrying one non-final body chunk (and the head before the first), with its size in bytes."""
        if self._no_body:
            head = self._head(None)
            return head, len(head)
        size = len(data)
        if size >= _SMALL:
            # Large chunks are never copied: the pieces go to the transport as they are (one writev).
            pieces = [self._head(None)] if not self.headers_sent else []
            if self._chunked:
                pieces += (b"%x\r\n" % size, data, b"\r\n")
            else:
                pieces.append(data)
            return pieces, sum(map(len, pieces))
        if not self.headers_sent:
            head = self._head(None)
            payload = head + (frame_chunk(data) if self._chunked else data)
            return payload, len(payload)
        payload = frame_chunk(data) if self._chunked else data
        return payload, len(payload)

    def _frame_end(self, body: bytes) -> Any:
        """The payload ending the response: the rest of the body (the whole body, with the head, if the head has not
        gone yet, so it can carry Content-Length)."""
        head = b""
        if not self.headers_sent:
            head = self._head(len(body) if self._body_known or self._content_length is not None else None)
        if self._chunked:  # (never for a response without a body)
            rest = frame_chunk(body) + CHUNK_END if body else CHUNK_END  # the last chunk, then the end
        elif self._no_body:
            return head
        else:
            rest = body
        if not head:
            return rest
        if len(rest) < _SMALL:
            return head + rest
        return [head, rest]

    def _status_has_content(self) -> bool:
        """Whether the response's status allows content, hence a length: not 1xx, 204 or 304 (RFC 9110 section 8.6;
        a HEAD's Content-Length is the one its GET would have). Asked only for HEAD, with a body length to give."""
        status = self._status
        if status is None:
            return True  # the 500 of a failed app
        no_body = _GOOD_STATUSES.get(status)
        return not (_check_status(status) if no_body is None else no_body)

    def _frame_error(self) -> Any:
        """The payload of the 500 answered when the app failed before its head went out."""
        return error_response(500, server_header=self.conn.server_header)

    def _warn_extra(self) -> None:
        error_log.warning(
            "%s %s: the app sent more than its Content-Length (%s); extra bytes dropped",
            self.head.method,
            self.head.target.decode("latin-1"),
            self._content_length,
        )

    def _finish(self) -> None:
        """Post the end of the response: the held body (and the head, if not sent yet) in one write."""
        held = self._held
        body = b"".join(held) if len(held) != 1 else held[0]
        cl = self._content_length
        if cl is not None and self._sent + len(body) > cl:
            self._warn_extra()
            body = body[: max(0, cl - self._sent)]
        payload = self._frame_end(body)  # for HEAD it still tells the length a GET would have, and sends none
        self.headers_sent = True
        if not self._no_body:
            self._sent += len(body)
        keep_alive = self._keep_alive
        if cl is not None and self._sent < cl and not self._no_body:
            error_log.error(
                "%s %s: the app declared Content-Length %d but sent %d bytes; closing the connection",
                self.head.method,
                self.head.target.decode("latin-1"),
                cl,
                self._sent,
            )
            keep_alive = False
        self._post(self.conn.on_response_end, (self, payload, keep_alive))

    def _fail(self, exc: BaseException) -> None:
        error_log.error(
            "error in the application for %s %s",
            self.head.method,
            self.head.target.decode("latin-1"),
            exc_info=exc,
        )
        if self.open_after_end is not None:
            return  # the whole response went out already; the connection may be serving the next request
        if self.headers_sent:
            self._post(self.conn.on_response_abort, self)
        else:
            self.headers_sent = True
            self._status = "500 Internal Server Error"
            self._post(self.conn.on_response_end, (self, self._frame_error(), False))

    def _log_access(self, environ: dict[str, Any]) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        duration = time.monotonic() - self._started
        record = {
            "environ": environ,
            "method": self.head.method,
            "target": self.head.target.decode("latin-1"),
            "status": (self._status or "-")[:3],
            "bytes": self._sent,
            "duration": duration,
            "start_wall": time.time() - duration,
            "headers": self._headers,
        }
        access_log.info("%s", self.conn.access_format.line(record))
