"""Unit tests of ``asyncwsgi.protocol.parser.RequestParser``, with a recording sink and no sockets.

Every case is fed three ways: in one ``feed``, one byte per ``feed``, and followed by more bytes (another request,
or junk). Covers heads (raw headers in order, keep-alive, Expect), Content-Length and chunked bodies, pipelining,
the line/field/size limits, every rejected input with its status, Upgrade/CONNECT, and a property test that nothing
but ``ProtocolError`` (with a 4xx/5xx status) ever escapes ``feed``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncwsgi.errors import ProtocolError
from asyncwsgi.protocol.parser import RequestHead, RequestParser

# -- recording sink and helpers ----------------------------------------------------------------------------------------


class RecordingSink:
    """Records parser events in order: ("head", RequestHead, snapshot), ("body", bytes), ("end",).

    The snapshot is the head's fields as they were when ``on_head`` was called (the connection hands the head to a
    worker thread at that moment)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_head(self, head: RequestHead) -> None:
        self.events.append(("head", head, head_dict(head)))

    def on_body(self, chunk: bytes) -> None:
        assert type(chunk) is bytes
        assert chunk, "the parser must not emit empty body chunks"
        self.events.append(("body", chunk))

    def on_end(self) -> None:
        self.events.append(("end",))


def head_dict(head: RequestHead) -> dict[str, Any]:
    return {
        "method": head.method,
        "target": head.target,
        "version": head.version,
        "headers": list(head.headers),
        "keep_alive": head.keep_alive,
        "content_length": head.content_length,
        "chunked": head.chunked,
        "expect_continue": head.expect_continue,
        "upgrade": head.upgrade,
    }


def H(
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    version: str = "1.1",
    keep_alive: bool = True,
    content_length: int | None = None,
    chunked: bool = False,
    expect_continue: bool = False,
    upgrade: bool = False,
) -> tuple[str, dict[str, Any]]:
    """An expected head event."""
    return (
        "head",
        {
            "method": method,
            "target": target,
            "version": version,
            "headers": headers,
            "keep_alive": keep_alive,
            "content_length": content_length,
            "chunked": chunked,
            "expect_continue": expect_continue,
            "upgrade": upgrade,
        },
    )


def B(data: bytes) -> tuple[str, bytes]:
    return ("body", data)


END = ("end",)


def normalize(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Heads as dicts, adjacent body chunks joined (their split depends on how the bytes arrived)."""
    out: list[tuple[Any, ...]] = []
    for ev in events:
        if ev[0] == "head":
            out.append(("head", ev[2]))
        elif ev[0] == "body" and out and out[-1][0] == "body":
            out[-1] = ("body", out[-1][1] + ev[1])
        else:
            out.append(ev)
    return out


NEXT = b"GET /next HTTP/1.1\r\nHost: next.example\r\n\r\n"
NEXT_EVENTS = [H("GET", b"/next", [(b"Host", b"next.example")]), END]
JUNK = b"\x16\x03\x01\x00\xa5junk\r\n\r\n"

WAYS = ["whole", "bytewise", "then_request", "then_junk"]


def feed(data: bytes, way: str, **limits: Any) -> tuple[RecordingSink, RequestParser, ProtocolError | None]:
    """Feed ``data`` one of the ways; return the sink, the parser and the ProtocolError raised (if any)."""
    sink = RecordingSink()
    parser = RequestParser(sink, **limits)
    try:
        if way == "bytewise":
            for i in range(len(data)):
                parser.feed(data[i : i + 1])
        elif way == "then_request":
            parser.feed(data + NEXT)
        elif way == "then_junk":
            parser.feed(data + JUNK)
        else:
            parser.feed(data)
    except ProtocolError as exc:
        return sink, parser, exc
    return sink, parser, None


def check_valid(data: bytes, expected: list[tuple[Any, ...]], way: str, **limits: Any) -> RequestParser:
    """``data`` holds complete valid requests: the events are ``expected`` (plus the extra request, if fed)."""
    sink, parser, err = feed(data, way, **limits)
    if way == "then_junk":
        assert err is not None, "junk after a complete request must be rejected"
        assert err.status == 400
        assert normalize(sink.events) == expected
        return parser
    last_head = [ev[1] for ev in expected if ev[0] == "head"][-1]
    if way == "then_request" and not last_head["keep_alive"]:
        # Nothing after a request that ends the connection is delivered (the connection reads no further anyway).
        assert err is None or err.status == 400
        assert normalize(sink.events) == expected
        return parser
    assert err is None, f"unexpected ProtocolError {err} ({err.status})"
    want = expected + NEXT_EVENTS if way == "then_request" else expected
    assert normalize(sink.events) == want
    return parser


# -- valid requests ----------------------------------------------------------------------------------------------------

VALID = [
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        [H("GET", b"/", [(b"Host", b"example.com")]), END],
        id="simple-get",
    ),
    pytest.param(
        b"GET /a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: h\r\n\r\n",
        [H("GET", b"/a/b%20c?x=1&y=%2F", [(b"Host", b"h")]), END],
        id="target-kept-raw",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nhOsT: h\r\nX-Custom-NAME: One\r\naccept: */*\r\nX-Dup: 1\r\nx-dup: 2\r\n"
        b"Cookie: a=1\r\nCookie: b=2\r\n\r\n",
        [
            H(
                "GET",
                b"/",
                [
                    (b"hOsT", b"h"),
                    (b"X-Custom-NAME", b"One"),
                    (b"accept", b"*/*"),
                    (b"X-Dup", b"1"),
                    (b"x-dup", b"2"),
                    (b"Cookie", b"a=1"),
                    (b"Cookie", b"b=2"),
                ],
            ),
            END,
        ],
        id="headers-raw-and-in-order",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xe9\r\nX-Empty:\r\n\r\n",
        [H("GET", b"/", [(b"Host", b"h"), (b"X-Latin", b"caf\xe9"), (b"X-Empty", b"")]), END],
        id="obs-text-and-empty-values",
    ),
    pytest.param(
        b"POST /submit HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
        [
            H("POST", b"/submit", [(b"Host", b"h"), (b"Content-Length", b"11")], content_length=11),
            B(b"hello world"),
            END,
        ],
        id="content-length-body",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        [H("POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"0")], content_length=0), END],
        id="content-length-zero",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n\r\n\r\n",
        [H("POST", b"/", [(b"Host", b"h"), (b"Content-Length", b"4")], content_length=4), B(b"\r\n\r\n"), END],
        id="body-that-looks-like-a-blank-line",
    ),
    pytest.param(
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\nhello\r\n1;name=value;flag\r\n \r\nA;q="quoted; \\"str"\r\n0123456789\r\n0\r\n\r\n',
        [
            H("POST", b"/up", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True),
            B(b"hello 0123456789"),
            END,
        ],
        id="chunked-with-extensions",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
        [
            H("POST", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True),
            B(b"abc"),
            END,
        ],
        id="chunked-with-trailer",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        [H("POST", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True), END],
        id="chunked-empty",
    ),
    pytest.param(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
        b"DELETE /4 HTTP/1.1\r\nHost: h\r\n\r\n",
        [
            H("GET", b"/1", [(b"Host", b"h")]),
            END,
            H("POST", b"/2", [(b"Host", b"h"), (b"Content-Length", b"3")], content_length=3),
            B(b"abc"),
            END,
            H("PUT", b"/3", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True),
            B(b"xy"),
            END,
            H("DELETE", b"/4", [(b"Host", b"h")]),
            END,
        ],
        id="pipelined",
    ),
    pytest.param(
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
        [H("OPTIONS", b"*", [(b"Host", b"h")]), END],
        id="asterisk-form",
    ),
    pytest.param(
        b"GET http://other.example:8080/p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n",
        [H("GET", b"http://other.example:8080/p?q=1", [(b"Host", b"h")]), END],
        id="absolute-form",
    ),
    pytest.param(
        b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        [H("GET", b"/", [(b"Host", b"h")]), END],
        id="leading-empty-line-ignored",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\n\r\n",
        [H("GET", b"/", [], version="1.0", keep_alive=False), END],
        id="http10-without-host",
    ),
    pytest.param(
        b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        [H("HEAD", b"/", [(b"Host", b"h")]), END],
        id="head",
    ),
]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("data", "expected"), VALID)
def test_valid_requests(data: bytes, expected: list[tuple[Any, ...]], way: str) -> None:
    check_valid(data, expected, way)


def test_has_body() -> None:
    heads = []

    class Sink(RecordingSink):
        def on_head(self, head: RequestHead) -> None:
            heads.append(head)

    parser = RequestParser(Sink())
    parser.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert [h.has_body for h in heads] == [False, False, True, True]


# -- keep-alive --------------------------------------------------------------------------------------------------------

KEEP_ALIVE = [
    pytest.param("1.1", [], True, id="1.1-default"),
    pytest.param("1.1", [(b"Connection", b"close")], False, id="1.1-close"),
    pytest.param("1.1", [(b"Connection", b"Close")], False, id="1.1-Close"),
    pytest.param("1.1", [(b"Connection", b"keep-alive, close")], False, id="1.1-list-with-close"),
    pytest.param("1.1", [(b"Connection", b"keep-alive")], True, id="1.1-keep-alive"),
    pytest.param("1.0", [], False, id="1.0-default"),
    pytest.param("1.0", [(b"Connection", b"keep-alive")], True, id="1.0-keep-alive"),
    pytest.param("1.0", [(b"Connection", b"Keep-Alive")], True, id="1.0-Keep-Alive"),
    pytest.param("1.0", [(b"Connection", b"close")], False, id="1.0-close"),
]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("version", "conn_headers", "keep_alive"), KEEP_ALIVE)
def test_keep_alive(version: str, conn_headers: list[tuple[bytes, bytes]], keep_alive: bool, way: str) -> None:
    headers = [(b"Host", b"h"), *conn_headers]
    data = b"GET / HTTP/%s\r\n%s\r\n" % (version.encode(), b"".join(b"%s: %s\r\n" % h for h in headers))
    expected = [H("GET", b"/", headers, version=version, keep_alive=keep_alive), END]
    check_valid(data, expected, way)


# -- Expect: 100-continue ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
def test_expect_continue_on_http11(value: bytes, way: str) -> None:
    data = b"PUT /f HTTP/1.1\r\nHost: h\r\nExpect: %s\r\nContent-Length: 3\r\n\r\nabc" % value
    headers = [(b"Host", b"h"), (b"Expect", value), (b"Content-Length", b"3")]
    expected = [H("PUT", b"/f", headers, content_length=3, expect_continue=True), B(b"abc"), END]
    check_valid(data, expected, way)


@pytest.mark.parametrize("way", WAYS)
def test_expect_continue_ignored_on_http10(way: str) -> None:
    # RFC 9110 section 10.1.1: a server that receives 100-continue in an HTTP/1.0 request MUST ignore it.
    data = b"PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    headers = [(b"Expect", b"100-continue"), (b"Content-Length", b"3")]
    expected = [H("PUT", b"/f", headers, version="1.0", keep_alive=False, content_length=3), B(b"abc"), END]
    check_valid(data, expected, way)


@pytest.mark.parametrize("way", WAYS)
def test_no_expect_continue_without_header(way: str) -> None:
    data = b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    expected = [
        H("PUT", b"/f", [(b"Host", b"h"), (b"Content-Length", b"3")], content_length=3, expect_continue=False),
        B(b"abc"),
        END,
    ]
    check_valid(data, expected, way)


# -- rejected requests -------------------------------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100c8010000c40303"  # record header, handshake header, client version
    "5f1b3c2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"  # random
    "00"  # session id length
    "0004130113020100"  # cipher suites, compression
    "0097000000110000" + "00" * 40
)

# (data, status): each is rejected before any head reaches the sink.
INVALID_HEAD = [
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="1.1-missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="1.1-two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, id="1.1-two-identical-hosts"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="1.0-two-hosts"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
        id="repeated-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        id="conflicting-content-length",
    ),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", 400, id="content-length-list"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400, id="content-length-alpha"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, id="content-length-negative"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", 400, id="content-length-plus"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", 400, id="content-length-hex"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400, id="content-length-empty"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        400,
        id="content-length-overflow",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
        id="content-length-then-transfer-encoding",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
        id="transfer-encoding-then-content-length",
    ),
    pytest.param(b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="method-not-a-token"),
    pytest.param(b"GET\x00 / HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="method-with-nul"),
    pytest.param(b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="leading-space"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="space-in-target"),
    pytest.param(b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="control-in-target"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX : y\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400, id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", 400, id="header-without-colon"),
    pytest.param(b"GET / HTTP/1.x\r\nHost: h\r\n\r\n", 400, id="bad-version"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: h\r\n\r\n", 505, id="unsupported-major-version"),
    pytest.param(b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400, id="bad-protocol-name"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, id="http2-preface"),
    pytest.param(b"\x00\x01\x02\x03 garbage \xff\xfe\r\n\r\n", 400, id="binary-garbage"),
    pytest.param(b"hello there\r\n\r\n", 400, id="text-garbage"),
    pytest.param(TLS_CLIENT_HELLO, 400, id="tls-client-hello"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
        id="transfer-encoding-not-ending-in-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
        id="transfer-encoding-chunked-not-last",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
        400,
        id="transfer-encoding-identity",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
        id="transfer-coding-not-implemented",
    ),
    pytest.param(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
        id="transfer-encoding-in-http10",
    ),
    pytest.param(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, id="http-2.0-request-line"),
    pytest.param(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01tunnel",
        501,
        id="connect",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\nContent-Length: 1\r\n\r\nx",
        417,
        id="unsupported-expectation",
    ),
]


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
@pytest.mark.parametrize(("data", "status"), INVALID_HEAD)
def test_rejected_before_head(data: bytes, status: int, way: str) -> None:
    sink, _, err = feed(data, way)
    assert err is not None, "the request must be rejected"
    assert err.status == status
    assert isinstance(err.reason, str) and err.reason
    # The head of a rejected request must never reach the sink: the connection would start the app for it.
    assert normalize(sink.events) == []


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_bad_request_after_a_good_one(way: str) -> None:
    # The first request is delivered whole; the second is rejected.
    first = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"
    sink, _, err = feed(first + b"GET / HTTP/1.1\r\n\r\n", way)
    assert err is not None and err.status == 400
    assert normalize(sink.events) == [H("GET", b"/ok", [(b"Host", b"h")]), END]


@pytest.mark.parametrize(
    ("body", "delivered"),
    [
        pytest.param(b"3\r\nabc\r\nzz\r\n", b"abc", id="bad-chunk-size"),
        pytest.param(b"3\r\nabcX\r\n0\r\n\r\n", b"abc", id="missing-crlf-after-chunk-data"),
        pytest.param(b"3 ;x\r\nabc\r\n0\r\n\r\n", b"", id="space-before-extension"),
        pytest.param(b"fffffffffffffffffff\r\n", b"", id="chunk-size-overflow"),
    ],
)
@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_bad_chunked_body(body: bytes, delivered: bytes, way: str) -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    sink, _, err = feed(head + body, way)
    assert err is not None and err.status == 400
    events = normalize(sink.events)
    assert events[0] == H("POST", b"/", [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")], chunked=True)
    assert events[1:] == ([B(delivered)] if delivered else [])


@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_trailer_fields_do_not_change_the_delivered_head(way: str) -> None:
    # The head goes to a worker thread as soon as on_head returns; trailer fields arrive later. They must not be
    # appended to the head's header list (a data race with the worker building the environ, and RFC 9112 section
    # 7.1.2: a recipient MUST NOT merge a trailer field into the header section unless it knows it is safe).
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    sink, _, err = feed(data, way)
    assert err is None
    head, snapshot = sink.events[0][1], sink.events[0][2]
    assert snapshot["headers"] == [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    assert head_dict(head) == snapshot


CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("where", ["trailer-line", "chunk-extension"])
@pytest.mark.parametrize("piece", [1, 4096], ids=["small-reads", "large-reads"])
def test_endless_chunk_framing_is_431_after_a_bounded_amount(where: str, piece: int) -> None:
    # A trailer line (or a chunk-size line's extensions) that never ends: llhttp keeps a field it has not finished
    # in memory, like a header line, so the bytes must be bounded as they arrive, not when the line ends.
    start = CHUNKED_HEAD + (b"1\r\nx\r\n0\r\nX-T: " if where == "trailer-line" else b"1;ext=")
    parser = RequestParser(RecordingSink(), limit_line=64, limit_size=256)
    parser.feed(start)
    fed = 0
    with pytest.raises(ProtocolError) as info:
        while fed < 64 * 1024:
            parser.feed(b"v" * piece)
            fed += piece
    assert info.value.status == 431
    assert fed <= 2 * 256 + 64 + 2 * 64 + piece


@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_many_small_chunks_and_trailers_within_the_limits_are_accepted(way: str) -> None:
    chunks = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(400))
    trailers = b"X-T1: %s\r\nX-T2: %s\r\n" % (b"t" * 100, b"u" * 100)
    data = CHUNKED_HEAD + chunks + b"0\r\n" + trailers + b"\r\n"
    sink, _, err = feed(data, way, limit_line=64, limit_size=256)
    assert err is None
    assert b"".join(e[1] for e in sink.events if e[0] == "body") == bytes(97 + i % 26 for i in range(400))
    assert sink.events[-1][0] == "end"


def test_chunk_framing_bound_ignores_a_large_request_before_it_in_the_same_read() -> None:
    # A read holding the whole of a large request and the start of a chunked one: the large one is not the chunked
    # body's framing.
    big = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100000
    sink = RecordingSink()
    parser = RequestParser(sink, limit_line=64, limit_size=256)
    parser.feed(big + CHUNKED_HEAD + b"3\r\nab")
    parser.feed(b"c\r\n0\r\n\r\n")
    assert [e[0] for e in sink.events].count("end") == 2


# -- OWS around field values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
def test_whitespace_around_field_values_is_not_part_of_the_value(way: str) -> None:
    # RFC 9112 section 5: OWS before and after a field line value "is excluded by parsers when extracting the
    # field line value"; a Content-Length of "3" followed by a space is a valid Content-Length of 3.
    data = b"POST / HTTP/1.1\r\nHost:  h \r\nX-A:\t b c\t \r\nContent-Length: 3 \r\n\r\nabc"
    expected = [
        H(
            "POST",
            b"/",
            [(b"Host", b"h"), (b"X-A", b"b c"), (b"Content-Length", b"3")],
            content_length=3,
        ),
        B(b"abc"),
        END,
    ]
    check_valid(data, expected, way)


# -- limits ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("way", WAYS)
def test_request_target_at_the_limit_is_accepted(way: str) -> None:
    target = b"/" + b"a" * 31
    data = b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % target
    check_valid(data, [H("GET", target, [(b"Host", b"h")]), END], way, limit_line=32)


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_request_target_over_the_limit_is_414(way: str) -> None:
    data = b"GET /%s HTTP/1.1\r\nHost: h\r\n\r\n" % (b"a" * 32)
    sink, _, err = feed(data, way, limit_line=32)
    assert err is not None and err.status == 414
    assert sink.events == []


def test_request_target_limit_enforced_before_the_line_ends() -> None:
    sink = RecordingSink()
    parser = RequestParser(sink, limit_line=32)
    parser.feed(b"GET /" + b"a" * 20)
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"a" * 20)  # no CRLF yet: the client could go on forever
    assert info.value.status == 414
    assert sink.events == []


@pytest.mark.parametrize("way", WAYS)
def test_head_at_every_limit_at_once_is_accepted(way: str) -> None:
    # Target at limit_line, exactly limit_fields fields, header block (name + value + 4 per field) at limit_size.
    target = b"/" + b"a" * 31
    headers = [(b"Host", b"h"), (b"X-A", b"1"), (b"X-Pad", b"v" * 230)]
    assert sum(len(n) + len(v) + 4 for n, v in headers) == 256
    data = b"GET %s HTTP/1.1\r\n%s\r\n" % (target, b"".join(b"%s: %s\r\n" % h for h in headers))
    check_valid(data, [H("GET", target, headers), END], way, limit_line=32, limit_fields=3, limit_size=256)


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_head_one_byte_over_the_size_limit_is_431(way: str) -> None:
    headers = [(b"Host", b"h"), (b"X-A", b"1"), (b"X-Pad", b"v" * 231)]
    data = b"GET / HTTP/1.1\r\n%s\r\n" % b"".join(b"%s: %s\r\n" % h for h in headers)
    sink, _, err = feed(data, way, limit_line=32, limit_fields=3, limit_size=256)
    assert err is not None and err.status == 431
    assert sink.events == []


def _fields(n: int) -> bytes:
    return b"".join(b"X-F%d: v\r\n" % i for i in range(n))


@pytest.mark.parametrize("way", WAYS)
def test_fields_at_the_limit_are_accepted(way: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + _fields(4) + b"\r\n"
    headers = [(b"Host", b"h")] + [(b"X-F%d" % i, b"v") for i in range(4)]
    check_valid(data, [H("GET", b"/", headers), END], way, limit_fields=5)


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_too_many_fields_is_431(way: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + _fields(5) + b"\r\n"
    sink, _, err = feed(data, way, limit_fields=5)
    assert err is not None and err.status == 431
    assert sink.events == []


def test_field_limit_counts_per_request() -> None:
    # Two pipelined requests of 5 fields each, limit 5: the count starts again for each request.
    one = b"GET / HTTP/1.1\r\nHost: h\r\n" + _fields(4) + b"\r\n"
    sink, _, err = feed(one * 3, "whole", limit_fields=5)
    assert err is None
    assert [e[0] for e in sink.events] == ["head", "end"] * 3


@pytest.mark.parametrize("way", WAYS)
def test_header_block_under_the_size_limit_is_accepted(way: str) -> None:
    value = b"v" * 150
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: %s\r\n\r\n" % value
    check_valid(data, [H("GET", b"/", [(b"Host", b"h"), (b"X-Big", value)]), END], way, limit_size=256)


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_header_block_over_the_size_limit_is_431(way: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(6)) + b"\r\n"
    sink, _, err = feed(data, way, limit_size=256)
    assert err is not None and err.status == 431
    assert sink.events == []


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
def test_header_size_limit_is_the_same_for_fields_written_without_spaces(way: str) -> None:
    # The limit counts name + value + 4 (": " and CRLF) per field: a client writing "name:value" sends one byte less
    # per field than that counts, so many short fields fit the limit in raw bytes and are still over it.
    fields = [(b"X-%d" % i, b"v") for i in range(60)]
    head = b"GET / HTTP/1.1\r\nHost:h\r\n" + b"".join(b"%s:%s\r\n" % f for f in fields) + b"\r\n"
    counted = sum(len(n) + len(v) + 4 for n, v in [(b"Host", b"h"), *fields])
    limit = len(head) + 10
    assert counted > limit
    sink, _, err = feed(head, way, limit_size=limit)
    assert err is not None and err.status == 431
    assert sink.events == []
    sink, _, err = feed(head, way, limit_size=counted)
    assert err is None and [e[0] for e in sink.events][:2] == ["head", "end"]


@pytest.mark.parametrize("way", ["whole", "bytewise", "then_request"])
@pytest.mark.parametrize("padding", [b" ", b"\t"], ids=["spaces", "tabs"])
def test_trailing_whitespace_counts_towards_the_header_size_limit(way: str, padding: bytes) -> None:
    # Values reach the app without their trailing whitespace, but the client sent it: it counts.
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a" + padding * 3000 + b"\r\n\r\n"
    sink, _, err = feed(head, way, limit_size=1000)
    assert err is not None and err.status == 431
    assert sink.events == []


@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_header_size_limit_enforced_before_the_line_ends(way: str) -> None:
    # One endless header line: the limit must bite as the bytes arrive, not when (if ever) the line ends, or the
    # parser buffers whatever the client sends.
    sink = RecordingSink()
    parser = RequestParser(sink, limit_size=256)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
    with pytest.raises(ProtocolError) as info:
        if way == "whole":
            parser.feed(b"v" * 4096)
        else:
            for _ in range(4096):
                parser.feed(b"v")
    assert info.value.status == 431
    assert sink.events == []


def test_header_name_size_limit_enforced_before_the_line_ends() -> None:
    sink = RecordingSink()
    parser = RequestParser(sink, limit_size=256)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-")
    with pytest.raises(ProtocolError) as info:
        parser.feed(b"n" * 4096)
    assert info.value.status == 431


# -- Upgrade ----------------------------------------------------------------------------------------------------------
# A WSGI server cannot switch protocols, so it ignores Upgrade (RFC 9110 section 7.8: a server MAY ignore it): the
# request is an ordinary HTTP/1.1 request, body included (an h2c upgrade on a POST carries its whole body first), and
# what follows is the next request. CONNECT is refused with 501 (see INVALID_HEAD).

UPGRADE_HEADERS = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")]


@pytest.mark.parametrize("way", WAYS)
def test_upgrade_request_is_an_ordinary_request(way: str) -> None:
    data = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    check_valid(data, [H("GET", b"/ws", UPGRADE_HEADERS, upgrade=True), END], way)


@pytest.mark.parametrize("way", WAYS)
def test_upgrade_request_body_is_delivered(way: str) -> None:
    data = b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello"
    headers = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"h2c"), (b"Content-Length", b"5")]
    check_valid(data, [H("POST", b"/p", headers, content_length=5, upgrade=True), B(b"hello"), END], way)


@pytest.mark.parametrize("way", WAYS)
def test_upgrade_request_with_chunked_body(way: str) -> None:
    data = (
        b"POST /p HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    headers = [(b"Host", b"h"), (b"Connection", b"Upgrade"), (b"Upgrade", b"h2c"), (b"Transfer-Encoding", b"chunked")]
    check_valid(data, [H("POST", b"/p", headers, chunked=True, upgrade=True), B(b"abc"), END], way)


def test_pipelined_upgrade_requests() -> None:
    one = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    sink, _, err = feed(one * 3, "whole")
    assert err is None
    assert normalize(sink.events) == [H("GET", b"/ws", UPGRADE_HEADERS, upgrade=True), END] * 3


def test_partial_head_after_an_upgrade_request_is_counted_once() -> None:
    # An upgrade request and most of the next head in one read: the part of the next head is counted against the
    # size limit once (it was counted twice: by the feed resumed after the upgrade, then by the outer one).
    upgrade = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    partial = b"GET /next HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 600 + b"\r\n"
    sink = RecordingSink()
    parser = RequestParser(sink, limit_size=1000)
    parser.feed(upgrade + partial)
    parser.feed(b"\r\n")
    assert [e[0] for e in sink.events] == ["head", "end", "head", "end"]


@pytest.mark.parametrize("way", WAYS)
def test_upgrade_header_without_connection_upgrade(way: str) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
    check_valid(data, [H("GET", b"/", [(b"Host", b"h"), (b"Upgrade", b"websocket")]), END], way)


# -- property test -----------------------------------------------------------------------------------------------------

SEEDS = [
    b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxyz",
]


def _check_feed(chunks: list[bytes]) -> None:
    sink = RecordingSink()
    parser = RequestParser(sink, limit_line=64, limit_fields=8, limit_size=512)
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except ProtocolError as exc:
        assert isinstance(exc.status, int)
        assert 400 <= exc.status <= 599
        assert exc.reason  # a known HTTPStatus
    # Whatever came out is well-formed: head, body*, end, in order; a body never longer than its Content-Length.
    in_message = False
    got = 0
    length: int | None = None
    for ev in sink.events:
        if ev[0] == "head":
            assert not in_message, f"head inside a message: {sink.events}"
            in_message, got, length = True, 0, ev[1].content_length
            assert ev[1].version in ("1.0", "1.1", "0.9", "2.0")
            assert type(ev[1].method) is str and type(ev[1].target) is bytes
        elif ev[0] == "body":
            assert in_message, f"body outside a message: {sink.events}"
            got += len(ev[1])
            if length is not None:
                assert got <= length
        else:
            assert in_message, f"end without head: {sink.events}"
            if length is not None:
                assert got in (0, length)  # 0: an upgrade request ends at its head
            in_message = False


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b" ", b":", b"\x00", b"\r", b"\n", b";", b"0", b"\xff"]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = data[:pos]
    return bytes(data)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


PROPERTY_SETTINGS = settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_property_arbitrary_bytes_parse_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    _check_feed([data])
    _check_feed(_split(data, cuts))


@PROPERTY_SETTINGS
@given(data=mutated_request(), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_property_mutated_requests_parse_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    _check_feed([data])
    _check_feed(_split(data, cuts))


def test_higher_minor_version_is_served_as_1_1() -> None:
    """RFC 9112 section 2.3: a message with a higher minor version is processed as the highest we implement."""
    sink = RecordingSink()
    RequestParser(sink).feed(b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")
    assert sink.events[0][0] == "head" and sink.events[0][1].version == "1.1"
