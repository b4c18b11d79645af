"""Hostile requests through a real server, as raw bytes: every rejection the server makes on its own (exact status,
small body, ``Connection: close``, the connection closed, the app never called, a fresh connection still served),
errors in a chunked body while the app reads it, the body size limit before and during the upload, request
smuggling attempts end to end (the smuggled request never reaches the app), trailer fields and header names with
``_`` kept out of the environ.
"""

from __future__ import annotations

import http
import ssl
import threading
from typing import Any

import pytest

from . import (
    Recorder,
    assert_refused,
    assert_served,
    get,
    no_data_within,
    send_while_refused,
)


def tls_client_hello() -> bytes:
    """The first bytes a real TLS client sends (its ClientHello), made by the ``ssl`` module without a socket."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "a TLS handshake record"
    return hello


def _post(headers: str, body: bytes = b"", version: str = "1.1") -> bytes:
    host = "Host: test\r\n" if version == "1.1" else ""
    return f"POST /p HTTP/{version}\r\n{host}{headers}\r\n".encode("latin-1") + body


# (options, request bytes, status): refused before the head reaches the app.
REFUSED = [
    # -- limits
    pytest.param({"limit_request_line": 64}, get("/" + "a" * 100), 414, id="request-line-too-long"),
    pytest.param({"limit_request_line": 1024}, b"GET /" + b"a" * 100_000, 414, id="request-line-never-ends"),
    pytest.param(
        {"limit_request_fields": 10},
        get("/", [(f"X-F{i}", "v") for i in range(10)]),  # + Host: 11 fields
        431,
        id="too-many-header-fields",
    ),
    pytest.param(
        {"limit_request_headers_size": 1024},
        get("/", [(f"X-F{i}", "v" * 100) for i in range(12)]),
        431,
        id="header-block-too-large",
    ),
    pytest.param(
        {"limit_request_headers_size": 1024},
        b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: " + b"v" * 200_000,
        431,
        id="header-line-never-ends",
    ),
    pytest.param(
        {"limit_request_headers_size": 1024},
        b"GET / HTTP/1.1\r\nHost: test\r\nX-" + b"n" * 200_000,
        431,
        id="header-name-never-ends",
    ),
    pytest.param(
        {"limit_request_body": 100},
        _post("Content-Length: 101\r\n", b"x" * 101),
        413,
        id="content-length-over-body-limit",
    ),
    pytest.param(
        {"limit_request_body": 100},
        _post("Content-Length: 5000000\r\n", b"x" * 300_000),
        413,
        id="large-body-over-body-limit",
    ),
    # -- framing: Content-Length and Transfer-Encoding
    pytest.param({}, _post("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400, id="cl-and-te"),
    pytest.param({}, _post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n"), 400, id="te-and-cl"),
    pytest.param({}, _post("Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400, id="repeated-cl"),
    pytest.param({}, _post("Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400, id="conflicting-cl"),
    pytest.param({}, _post("Content-Length: 3, 3\r\n", b"abc"), 400, id="cl-list"),
    pytest.param({}, _post("Content-Length: abc\r\n"), 400, id="cl-not-a-number"),
    pytest.param({}, _post("Content-Length: -1\r\n"), 400, id="cl-negative"),
    pytest.param({}, _post("Content-Length: +3\r\n", b"abc"), 400, id="cl-plus-sign"),
    pytest.param({}, _post("Content-Length: 0x10\r\n"), 400, id="cl-hex"),
    pytest.param({}, _post("Content-Length:\r\n"), 400, id="cl-empty"),
    pytest.param({}, _post("Content-Length: 99999999999999999999999\r\n"), 400, id="cl-overflow"),
    pytest.param({}, _post("Transfer-Encoding: gzip\r\n", b"xx"), 400, id="te-without-chunked"),
    pytest.param({}, _post("Transfer-Encoding: identity\r\n"), 400, id="te-identity"),
    pytest.param({}, _post("Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 400, id="te-xchunked"),
    pytest.param({}, _post("Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 400, id="te-chunked-not-last"),
    pytest.param(
        {},
        _post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
        id="te-chunked-twice",
    ),
    pytest.param({}, _post("Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501, id="te-coding-before-chunked"),
    pytest.param(
        {},
        _post("Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", version="1.0"),
        400,
        id="te-in-http10",
    ),
    # -- header syntax
    pytest.param({}, get("/", [("X-A", "a\r\n folded")]), 400, id="obs-fold"),
    pytest.param({}, get("/", [("X-A", "a\r\n\tfolded")]), 400, id="obs-fold-tab"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A : a\r\n\r\n", 400, id="space-before-colon"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A\t: a\r\n\r\n", 400, id="tab-before-colon"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\x00b\r\n\r\n", 400, id="nul-in-value"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\rb\r\n\r\n", 400, id="cr-in-value"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\nX-B: b\r\n\r\n", 400, id="bare-lf-in-value"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nX-A: a\x01b\r\n\r\n", 400, id="control-in-value"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\nNo-Colon\r\n\r\n", 400, id="header-without-colon"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: test\r\n: v\r\n\r\n", 400, id="empty-header-name"),
    pytest.param({}, b"GET / HTTP/1.1\nHost: test\n\n", 400, id="bare-lf-line-ends"),
    # -- request line
    pytest.param({}, b"G@T / HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="method-not-a-token"),
    pytest.param({}, b" GET / HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="leading-space"),
    pytest.param({}, b"GET /a b HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="space-in-target"),
    pytest.param({}, b"GET /\x01 HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="control-in-target"),
    pytest.param({}, b"GET /\xff HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="non-ascii-target"),
    pytest.param({}, b"GET  HTTP/1.1\r\nHost: test\r\n\r\n", 400, id="empty-target"),
    # -- Host
    pytest.param({}, b"GET / HTTP/1.1\r\n\r\n", 400, id="missing-host"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param({}, b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, id="two-identical-hosts"),
    pytest.param({}, b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, id="two-hosts-http10"),
    # -- versions and methods the server does not serve
    pytest.param({}, b"GET / HTTP/2.0\r\nHost: test\r\n\r\n", 505, id="http-2.0"),
    pytest.param({}, b"GET / HTTP/3.0\r\nHost: test\r\n\r\n", 505, id="http-3.0"),
    pytest.param({}, b"GET / HTTP/0.9\r\nHost: test\r\n\r\n", 505, id="http-0.9"),
    pytest.param({}, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, id="http2-preface"),
    pytest.param({}, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, id="connect"),
    pytest.param({}, tls_client_hello(), 400, id="tls-client-hello"),
    pytest.param({}, b"\x00\x01\x02\x03 garbage \xff\xfe\r\n\r\n", 400, id="binary-garbage"),
    # -- expectations
    pytest.param({}, _post("Expect: something-else\r\nContent-Length: 1\r\n", b"x"), 417, id="expect-other"),
    pytest.param({}, get("/", [("Expect", "100-continue-please")]), 417, id="expect-other-on-get"),
]


@pytest.mark.parametrize(("options", "data", "status"), REFUSED)
def test_refused_before_the_app(server, raw, options, data, status):
    app = Recorder()
    handle = server(app, **options)
    client = raw(handle)
    send_while_refused(client, data)
    assert_refused(client, status)
    assert app.calls == [], "the app must never see a refused request"
    assert_served(handle, raw)
    assert app.calls == [("GET", "/fresh")]


def test_refused_request_after_a_good_one_on_the_same_connection(server, raw):
    app = Recorder()
    handle = server(app)
    client = raw(handle)
    client.send(get("/ok") + b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + get("/never"))
    resp = client.read_response()
    assert (resp.status, resp.body, resp.header("Connection")) == (200, b"GET /ok\n", None)
    assert_refused(client, 400)
    assert app.paths == ["/ok"]


def test_pipelined_requests_do_not_count_against_the_next_head(server, raw):
    # limit_request_headers_size bounds one request head. A read that finishes a head begun in an earlier read,
    # carries complete pipelined requests and ends inside a new head must not charge the whole read to that new head.
    app = Recorder()
    handle = server(app, limit_request_headers_size=1024)
    client = raw(handle)
    client.send(b"GET /1 HTTP/1.1\r\nHost: test")
    assert no_data_within(client, 0.2)  # the server has read the unfinished head by now
    client.send(b"\r\n\r\n" + b"".join(get(f"/2/{i}") for i in range(40)) + b"GET /3 HTTP/1.1\r\nHo")  # ~1.3 KB
    for path in ["/1"] + [f"/2/{i}" for i in range(40)]:
        resp = client.read_response()
        assert (resp.status, resp.body) == (200, f"GET {path}\n".encode()), resp
    client.send(b"st: test\r\n\r\n")
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"GET /3\n"), resp


def test_body_over_the_limit_refused_without_100_continue(server, raw):
    # The client waits for "100 Continue" before sending the body: it must get the 413 at once instead.
    app = Recorder()
    handle = server(app, limit_request_body=1000)
    client = raw(handle)
    client.send(_post("Expect: 100-continue\r\nContent-Length: 1001\r\n"))
    head = client.read_head()  # the first response head, raw: http.client would skip a "100 Continue"
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"\r\nConnection: close\r\n" in head
    assert client.read_all().startswith(f"413 {http.HTTPStatus(413).phrase}".encode())
    assert app.calls == []


def test_body_at_the_limit_is_accepted(server, raw):
    app = Recorder()
    handle = server(app, limit_request_body=100)
    client = raw(handle)
    client.send(_post("Content-Length: 100\r\n", b"y" * 100))
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"POST /p\n" + b"y" * 100)
    client.send(
        _post("Transfer-Encoding: chunked\r\n", b"32\r\n" + b"z" * 50 + b"\r\n32\r\n" + b"z" * 50 + b"\r\n0\r\n\r\n")
    )
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"POST /p\n" + b"z" * 100)


# -- errors in a chunked body: the head has reached the app, which is reading the body ----------------------------

CHUNKED = "Transfer-Encoding: chunked\r\n"

BAD_BODIES = [
    pytest.param({}, b"zz\r\nabc\r\n0\r\n\r\n", 400, id="chunk-size-not-hex"),
    pytest.param({}, b"3\r\nabc\r\nzz\r\n", 400, id="second-chunk-size-not-hex"),
    pytest.param({}, b"fffffffffffffffffff\r\n", 400, id="chunk-size-overflow"),
    pytest.param({}, b"0x3\r\nabc\r\n0\r\n\r\n", 400, id="chunk-size-0x"),
    pytest.param({}, b"-3\r\nabc\r\n0\r\n\r\n", 400, id="chunk-size-negative"),
    pytest.param({}, b"3 ;x\r\nabc\r\n0\r\n\r\n", 400, id="space-before-extension"),
    pytest.param({}, b"3;\x01\r\nabc\r\n0\r\n\r\n", 400, id="control-in-extension"),
    pytest.param({}, b"3\nabc\r\n0\r\n\r\n", 400, id="bare-lf-after-chunk-size"),
    pytest.param({}, b"3\r\nabcdef\r\n0\r\n\r\n", 400, id="chunk-data-longer-than-declared"),
    pytest.param({}, b"3\r\nabc0\r\n\r\n", 400, id="missing-crlf-after-chunk-data"),
    pytest.param({}, b"3\r\nabc\r\n0\r\nContent-Length: 3\r\n\r\n", 400, id="content-length-in-trailer"),
    pytest.param({"limit_request_body": 10}, b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", 413, id="over-body-limit"),
]


@pytest.mark.parametrize(("options", "body", "status"), BAD_BODIES)
def test_bad_chunked_body_fails_the_apps_read_and_is_refused(server, raw, options, body, status):
    app = Recorder()
    handle = server(app, **options)
    client = raw(handle)
    client.send(_post(CHUNKED, body) + get("/smuggled"))
    assert app.failed.wait(5), "the app's read must fail, not wait for a body that can never be framed"
    assert isinstance(app.errors[0], OSError)
    assert_refused(client, status)  # the only response: the app's own never went out
    assert app.calls == [("POST", "/p")]
    assert app.bodies == []
    assert_served(handle, raw)


def _refused_while_sending(client, piece: bytes, status: int, times: int = 400) -> None:
    """Send ``piece`` up to ``times`` times from another thread, never reading meanwhile: the server must still
    answer ``status`` (and close)."""
    stop = threading.Event()

    def upload() -> None:
        try:
            for _ in range(times):
                if stop.is_set():
                    return
                client.sock.sendall(piece)
        except OSError:
            pass  # the server closed: expected

    sender = threading.Thread(target=upload)
    sender.start()
    try:
        assert_refused(client, status)
    finally:
        stop.set()
        sender.join(10)


def test_chunked_upload_cut_at_the_body_limit_while_the_client_keeps_sending(server, raw):
    # The client streams far more than the limit without reading: it must still get the 413.
    app = Recorder()
    handle = server(app, limit_request_body=100_000)
    client = raw(handle)
    client.send(_post(CHUNKED))
    _refused_while_sending(client, b"10000\r\n" + b"c" * 0x10000 + b"\r\n", 413)  # 25 MiB at most
    assert isinstance(app.errors[0], OSError)
    assert_served(handle, raw)


def test_endless_trailer_line_is_refused_while_the_client_keeps_sending(server, raw):
    # A chunked body whose trailer line never ends: the parser would keep the unfinished field in memory; the
    # bytes are bounded as they arrive (431), however long the client goes on.
    app = Recorder()
    handle = server(app, limit_request_headers_size=4096)
    client = raw(handle)
    client.send(_post(CHUNKED, b"3\r\nabc\r\n0\r\nX-Endless: "))
    _refused_while_sending(client, b"v" * 65536, 431)  # 25 MiB at most
    assert app.failed.wait(5)
    assert isinstance(app.errors[0], OSError)
    assert_served(handle, raw)


def test_content_length_upload_over_the_limit_while_the_client_keeps_sending(server, raw):
    app = Recorder()
    handle = server(app, limit_request_body=1000)
    client = raw(handle)
    client.send(_post("Content-Length: 30000000\r\n"))
    _refused_while_sending(client, b"u" * 65536, 413, times=450)
    assert app.calls == []


# -- request smuggling ------------------------------------------------------------------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n"

# Requests whose framing two HTTP implementations could read differently; each carries a second request that a
# lenient reading would find. All must be refused outright.
AMBIGUOUS = [
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        % (5 + len(SMUGGLED))
        + SMUGGLED,
        id="CL.TE",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n%x\r\n"
        % len(SMUGGLED)
        + SMUGGLED
        + b"\r\n0\r\n\r\n",
        id="TE.CL",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
        id="CL.CL",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n" + SMUGGLED,
        id="TE.TE-second-field",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        id="TE-space-before-colon",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        id="TE-folded-into-previous-field",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        id="TE-vertical-tab",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nX: y\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        id="TE-after-bare-lf",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nX: y\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
        + SMUGGLED,
        id="TE-after-bare-cr",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        id="TE-chunked-then-identity",
    ),
    pytest.param(
        b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n" + SMUGGLED,
        id="TE-in-http10",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length\x00: 5\r\n\r\nxxxxx" + SMUGGLED,
        id="nul-in-cl-name",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\tContent-Length: 0\r\n\r\nxxxxx" + SMUGGLED,
        id="cl-with-folded-continuation",
    ),
]


@pytest.mark.parametrize("data", AMBIGUOUS)
def test_ambiguous_framing_is_refused_and_nothing_is_smuggled(server, raw, data):
    app = Recorder()
    handle = server(app)
    client = raw(handle)
    send_while_refused(client, data)
    status = client.read_response().status
    assert status == 400
    assert client.is_closed(3)
    assert app.calls == [], f"the app was called: {app.calls}"
    assert_served(handle, raw)
    assert "/smuggled" not in app.paths


# Unambiguous framing that hides a request in a body or a chunk: the server must read it as body bytes.
HIDDEN_IN_BODY = [
    pytest.param(
        b"GET /a HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
        SMUGGLED,
        id="get-with-content-length-body",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED)
        + SMUGGLED
        + b"\r\n0\r\n\r\n",
        SMUGGLED,
        id="request-in-a-chunk",
    ),
    pytest.param(
        b'POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3;ext="GET /smuggled"\r\nabc\r\n'
        b"0\r\n\r\n",
        b"abc",
        id="request-in-a-chunk-extension",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Smuggled: GET /smuggled\r\n\r\n",
        b"",
        id="request-in-a-trailer",
    ),
    pytest.param(
        b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nabc",
        b"abc",
        id="upgrade-with-body",
    ),
]


@pytest.mark.parametrize(("data", "body"), HIDDEN_IN_BODY)
def test_request_hidden_in_a_body_stays_body(server, raw, data, body):
    app = Recorder()
    handle = server(app)
    client = raw(handle)
    client.send(data + get("/next"))
    method = data.split(b" ", 1)[0].decode()
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, f"{method} /a\n".encode() + body)
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"GET /next\n")
    assert app.calls == [(method, "/a"), ("GET", "/next")]
    assert no_data_within(client, 0.1), "a third response: a request was smuggled"


def test_unread_body_hiding_a_request_is_discarded_not_parsed(server, raw):
    # The app answers without reading the body: the server must skip the body by its declared length, not parse
    # the request inside it.
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = server(app)
    client = raw(handle)
    client.send(b"POST /a HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED + get("/b"))
    assert client.read_response().body == b"ok"
    assert client.read_response().body == b"ok"
    assert no_data_within(client, 0.1)
    assert calls == ["/a", "/b"]


# -- what reaches the environ -----------------------------------------------------------------------------------------


def test_trailer_fields_never_become_headers(server, raw):
    app = Recorder()
    handle = server(app)
    client = raw(handle)
    client.send(
        _post(CHUNKED + "X-Real: 1\r\n", b"3\r\nabc\r\n0\r\nX-Trailer: t\r\nHost: evil\r\nX-Real: 2\r\n\r\n")
        + get("/next")
    )
    resp = client.read_response()
    assert (resp.status, resp.body) == (200, b"POST /p\nabc")
    assert client.read_response().body == b"GET /next\n"
    env = app.environs[0]
    assert env == {"HTTP_HOST": "test", "HTTP_TRANSFER_ENCODING": "chunked", "HTTP_X_REAL": "1"}
    assert app.environs[1] == {"HTTP_HOST": "test"}


def test_header_names_with_underscores_are_dropped(server, raw):
    # "X_Forwarded_For" would land on the same environ key as "X-Forwarded-For": a proxy that strips only the dash
    # spelling could be bypassed. Both the spoof and the lone underscore spelling are dropped.
    app = Recorder()
    handle = server(app)
    client = raw(handle)
    client.send(
        get(
            "/",
            [
                ("X-Forwarded-For", "10.0.0.1"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("X_Only_Underscore", "u"),
                ("Content_Type", "text/evil"),
                ("Content_Length", "7"),
            ],
        )
    )
    assert client.read_response().status == 200
    assert app.environs[0] == {"HTTP_HOST": "test", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}
