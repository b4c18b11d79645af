"""The httptools adapter: bytes in, request heads and body chunks out, no I/O.

``RequestParser.feed(data)`` runs llhttp over ``data`` and calls the sink's ``on_head(head)``,
``on_body(chunk)`` and ``on_end()`` for every request found, in order (pipelined requests come out one after
another). Every way the client can be wrong ends in ``ProtocolError`` with the status to answer with; nothing else
escapes ``feed``. Runs on the event-loop thread only.
"""

from __future__ import annotations

from typing import Any, Protocol

import httptools

from ..errors import ProtocolError

__all__ = ["RequestHead", "RequestParser", "RequestSink"]


class RequestHead:
    """One parsed request head. ``headers`` keeps the raw names and values in order."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.version}>"


class RequestSink(Protocol):
    def on_head(self, head: RequestHead) -> None: ...
    def on_body(self, chunk: bytes) -> None: ...
    def on_end(self) -> None: ...


_NO_HEADERS: list[tuple[bytes, bytes]] = []  # never appended to: on_header only runs after on_message_begin

# Header names the parser acts on, by kind; any other name is kind 0. Names are cached as they arrive, in whatever
# case the client writes them, up to a bound (hostile clients can send endless distinct names).
_KIND_HOST, _KIND_CONTENT_LENGTH, _KIND_TRANSFER_ENCODING, _KIND_EXPECT, _KIND_UPGRADE = 1, 2, 3, 4, 5
_KINDS_BY_LOWER_NAME = {
    b"host": _KIND_HOST,
    b"upgrade": _KIND_UPGRADE,
    b"content-length": _KIND_CONTENT_LENGTH,
    b"transfer-encoding": _KIND_TRANSFER_ENCODING,
    b"expect": _KIND_EXPECT,
}
_HEADER_KINDS: dict[bytes, int] = {}
_HEADER_KINDS_MAX = 1024


def _header_kind(name: bytes) -> int:
    kind = _KINDS_BY_LOWER_NAME.get(name.lower(), 0)
    if len(_HEADER_KINDS) < _HEADER_KINDS_MAX:
        _HEADER_KINDS[name] = kind
    return kind


#: Bytes a chunk may take besides its data (its size line: up to 16 hex digits, CRLF; a CRLF after the data; and
#: modest chunk extensions) before the framing of a chunked body counts as abuse.
_CHUNK_LINE_ALLOWANCE = 64

#: The usual methods' names, decoded once (llhttp accepts only methods it knows, so this needs no bound).
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}


def _new_llhttp(owner: object) -> Any:
    """llhttp in its strict default mode, except for the version number: it refuses HTTP/1.2 and HTTP/3.0 alike
    (400), where RFC 9112 section 2.3 wants 1.x served as 1.1 and RFC 9110 section 15.6.6 a 505 for other majors."""
    parser = httptools.HttpRequestParser(owner)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class RequestParser:
    """Wraps ``httptools.HttpRequestParser``; enforces the request-line and header limits as bytes arrive."""

    __slots__ = (
        "_body_bytes",
        "_chunked",
        "_chunks",
        "_content_length",
        "_ended_in_feed",
        "_expect",
        "_feed_size",
        "_field_cap",
        "_framing_seen",
        "_head",
        "_head_done",
        "_head_seen",
        "_header_bytes",
        "_headers",
        "_hosts",
        "_limit_body",
        "_limit_fields",
        "_limit_line",
        "_limit_size",
        "_ows_stripped",
        "_parser",
        "_partial_head",
        "_replaying",
        "_upgrade_asked",
        "_upgrading",
        "_url",
        "in_message",
        "sink",
    )

    def __init__(
        self,
        sink: RequestSink,
        limit_line: int = 8190,
        limit_fields: int = 100,
        limit_size: int = 65536,
        limit_body: int | None = None,
    ) -> None:
        #: where requests go: parsers are shared between connections (between messages only), and the connection
        #: that takes one sets this
        self.sink = sink
        self._limit_body = limit_body
        self._body_bytes = 0
        #: a request has begun and not ended (its head or body is partly received)
        self.in_message = False
        self._limit_line = limit_line
        self._limit_fields = limit_fields
        self._limit_size = limit_size
        self._parser = _new_llhttp(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0  # trailer fields' bytes (the head's are summed only if they may be over the limit)
        self._head_seen = 0  # bytes of the earlier reads that carried part of this head (whole reads: an over-count)
        self._ows_stripped = 0  # trailing whitespace taken off this head's values (counted in its size all the same)
        self._feed_size = 0  # bytes of the read being parsed
        self._chunks = 0  # chunks of this message's chunked body so far
        self._framing_seen = 0  # bytes of the reads that carried this chunked body (see _check_chunk_framing)
        self._field_cap = limit_fields  # fields on_header takes without a second look: 0 once the head is done
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._hosts = 0
        self._head_done = False
        self._partial_head = 0
        self._ended_in_feed = False
        self._head: RequestHead | None = None
        self._upgrading = False
        self._upgrade_asked = False
        self._replaying = False

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises ``ProtocolError`` (400/414/431/...) on anything malformed or over a limit."""
        self._ended_in_feed = False
        self._feed_size = size = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._resume_after_upgrade(data[exc.args[0] :])
            return  # what followed the upgrade request was fed, and counted, by a feed of its own
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(f"request rejected: {cause or exc}") from None
        except httptools.HttpParserInvalidMethodError:
            raise ProtocolError("invalid HTTP method") from None
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError("invalid request target") from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed request: {exc}") from None
        if self.in_message and not self._head_done:
            # llhttp keeps a header line it has not finished in its own buffer, out of on_header's sight: bound the
            # unfinished head here. When another request ended earlier in this same feed, where this head began is
            # unknown, so it is counted from the next feed on (at most one socket read of slack).
            if not self._ended_in_feed:
                self._partial_head += size
            self._head_seen += size
            if self._partial_head > self._limit_size + len(self._url) + 32:  # 32: method, version, separators
                raise ProtocolError("request header block too large", 431)
        elif self.in_message and self._chunked:
            self._check_chunk_framing(size)

    def _check_chunk_framing(self, size: int) -> None:
        """Bound what a chunked body carries besides its data: chunk-size lines (and their extensions), and the
        trailer section, which llhttp (like a header line) keeps in memory until each field ends. Counted after
        each read as the read's size less the body data it held; a read in which an earlier request ended is not
        counted (so at most one read of slack), and a read that held this head allows for it."""
        if not self._ended_in_feed:
            self._framing_seen += size
        allowed = 2 * self._limit_size + self._limit_line + _CHUNK_LINE_ALLOWANCE * self._chunks
        if self._framing_seen - self._body_bytes > allowed:
            raise ProtocolError("request trailer section or chunk framing too large", 431)

    def _resume_after_upgrade(self, rest: bytes) -> None:
        """llhttp stops at the end of a request that asks to switch protocols. A WSGI server never switches, so the
        request is an ordinary one (RFC 9110 section 7.8: the server may ignore Upgrade): its head is replayed into
        a fresh parser without the Upgrade field, and its body and any later requests are parsed as usual."""
        head = self._head
        if head is None:
            raise ProtocolError("upgrade without a request head")
        lines = [b"%s %s HTTP/%s\r\n" % (head.method.encode("ascii"), head.target, head.version.encode("ascii"))]
        lines += [b"%s: %s\r\n" % (n, v) for n, v in head.headers if n.lower() != b"upgrade"]
        lines.append(b"\r\n")
        self._parser = _new_llhttp(self)
        self._replaying = True
        try:
            self._parser.feed_data(b"".join(lines))
        finally:
            self._replaying = False
        if rest:
            self.feed(rest)

    # -- httptools callbacks (called from inside feed) ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self._partial_head = 0
        self._body_bytes = 0
        self._chunks = 0
        self._framing_seen = 0
        self._url = b""
        self._headers = []
        self._head_seen = 0
        self._ows_stripped = 0
        self._field_cap = self._limit_fields
        self._content_length = None
        self._chunked = False
        self._expect = False
        self._hosts = 0
        self._upgrade_asked = False
        self._head_done = False

    def on_url(self, url: bytes) -> None:
        url = self._url + url if self._url else url
        if len(url) > self._limit_line:
            raise ProtocolError("request line too long", 414)
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Per field only the count is bounded here; the head's size is checked once it is complete (one read holds
        # at most a read's worth of fields, and feed bounds a head that spans reads). The cap is 0 for trailers.
        headers = self._headers
        if len(headers) >= self._field_cap:
            self._field_over_limit_or_trailer(name, value)
            return
        if value and value[-1] in (32, 9):  # space, tab
            stripped = value.rstrip(b" \t")  # llhttp strips leading whitespace only (RFC 9110 section 5.5: OWS)
            self._ows_stripped += len(value) - len(stripped)
            value = stripped
        headers.append((name, value))
        kind = _HEADER_KINDS.get(name)
        if kind is None:
            kind = _header_kind(name)
        if kind:
            if kind == _KIND_HOST:
                self._hosts += 1
            else:
                self._framing_header(kind, value)

    def _field_over_limit_or_trailer(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            # A trailer field after a chunked body: counted against the size limit, never passed to the app as a
            # header (RFC 9110 section 6.5.1: trailers must not be merged into the header section by default).
            self._header_bytes += len(name) + len(value) + 4
            if self._header_bytes > self._limit_size:
                raise ProtocolError("request trailer section too large", 431)
            return
        raise ProtocolError("too many header fields", 431)

    def _framing_header(self, kind: int, value: bytes) -> None:
        """Content-Length, Transfer-Encoding, Expect, Upgrade: noted and checked as they arrive."""
        if kind == _KIND_CONTENT_LENGTH:
            if self._content_length is not None or not value.isdigit():
                raise ProtocolError("invalid or repeated Content-Length")
            self._content_length = int(value)
        elif kind == _KIND_TRANSFER_ENCODING:
            # llhttp already refuses codings after chunked and chunked with Content-Length; we implement no
            # coding but chunked, so anything else (gzip, chunked) is 501 (RFC 9112 section 6.1).
            codings = value.lower().split(b",")
            if codings[-1].strip(b" \t") != b"chunked":
                # RFC 9112 section 6.3: chunked not final -> the body length is unknowable: 400.
                raise ProtocolError("Transfer-Encoding without a final 'chunked'")
            if len(codings) > 1:
                raise ProtocolError(f"unsupported transfer coding {value.decode('latin-1')!r}", 501)
            self._chunked = True
        elif kind == _KIND_UPGRADE:
            self._upgrade_asked = True  # llhttp decides whether it is an upgrade (with Connection: upgrade)
        else:  # Expect
            if value.lower() != b"100-continue":
                raise ProtocolError(f"unsupported expectation {value!r}", 417)
            self._expect = True

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._partial_head = 0
        self._field_cap = 0  # further fields are trailers
        self._header_bytes = 0
        if self._replaying:
            return  # the head was delivered before the upgrade pause; only the parser's state is rebuilt
        if self._head_seen + self._feed_size + len(self._headers) > self._limit_size:
            # The reads that carried this head may hold more than the limit: sum the head itself (names, values,
            # and 4 for ": " and CRLF for each field: one more than a field written "name:value" takes, hence the
            # count added above).
            size = self._ows_stripped
            for name, value in self._headers:
                size += len(name) + len(value) + 4
            if size > self._limit_size:
                raise ProtocolError("request header block too large", 431)
        parser = self._parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            major = version.partition(".")[0]
            if major != "1":
                raise ProtocolError(f"HTTP/{version} is not supported", 505)
            version = "1.1"  # RFC 9112 section 2.3: a higher minor version is served as the highest we know
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = raw_method.decode("ascii")
            if method == "CONNECT":
                raise ProtocolError("CONNECT is not supported by a WSGI server", 501)
        if self._chunked and version == "1.0":
            # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message means the framing is faulty.
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        if self._hosts != 1:
            if self._hosts > 1:
                raise ProtocolError("several Host headers")
            if version == "1.1":
                raise ProtocolError("HTTP/1.1 requests need exactly one Host header")
        content_length = self._content_length
        if content_length is not None:
            limit = self._limit_body
            if limit is not None and content_length > limit:
                raise ProtocolError(f"request body larger than {limit} bytes", 413)
        self._upgrading = self._upgrade_asked and parser.should_upgrade()
        self._head = head = RequestHead(
            method,
            self._url,
            version,
            self._headers,
            parser.should_keep_alive(),
            content_length,
            self._chunked,
            self._expect and version == "1.1",
            self._upgrading,
        )
        self.sink.on_head(head)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        limit = self._limit_body
        if limit is not None and self._body_bytes > limit:
            raise ProtocolError(f"request body larger than {limit} bytes", 413)
        self.sink.on_body(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        if self._upgrading:
            # llhttp ends an upgrade request at its head; the replayed parser delivers its real end.
            self._upgrading = False
            return
        self.in_message = False
        self._head = None  # an idle keep-alive connection keeps nothing of its last request
        self._headers = _NO_HEADERS
        self._url = b""
        self._ended_in_feed = True
        self.sink.on_end()
