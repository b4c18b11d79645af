"""PEP 3333 on the response side: ``start_response`` ("The start_response() Callable"), status and header
validation, ``exc_info`` ("Error Handling"), headers held until the first non-empty body chunk ("Buffering and
Streaming"), ``write()`` ("The write() Callable"), Content-Length ("Handling the Content-Length Header"), the
iterable's ``close()`` ("Specification Details"), bad return values, error logging, ``wsgi.file_wrapper``
("Optional Platform-Specific File Handling") and context variables not leaking between requests.

Deliberately broken apps are not wrapped in ``wsgiref.validate``; conformant ones are.
"""

from __future__ import annotations

import contextvars
import io
import logging
import os
import sys
import threading
from typing import Any
from wsgiref.validate import validator

import pytest

from .support import WAIT, Closing, read_until_close, request_bytes, split_response

LOOPS = ["asyncio", "uvloop"]


def get(client, target: str = "/", method: str = "GET", headers=(), body: bytes = b"", version: str = "1.1"):
    """Send one request and read one complete response (raises if the server cuts it short)."""
    client.send(request_bytes(method, target, headers, body, version))
    return client.read_response(method)


def status_line(raw_response: bytes) -> bytes:
    return raw_response.split(b"\r\n", 1)[0]


def head_headers(head: bytes) -> dict[bytes, bytes]:
    """Header names (lower-cased) to values, from a raw head (names unique in these tests)."""
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.strip().lower()] = value.strip()
    return out


def ok_app(body: bytes = b"second response"):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def assert_internal_error(raw_response: bytes, *forbidden: bytes) -> None:
    """A 500 produced by the server: none of the app's output made it to the client."""
    assert status_line(raw_response).startswith(b"HTTP/1.1 500 "), raw_response[:300]
    for text in forbidden:
        assert text not in raw_response, raw_response[:300]


# -- status validation -----------------------------------------------------------------------------------------------

BAD_STATUSES = [
    pytest.param(b"200 OK", id="bytes"),
    pytest.param(200, id="int"),
    pytest.param(None, id="none"),
    pytest.param("200", id="no-reason-separator"),
    pytest.param("200OK", id="no-space"),
    pytest.param("OK", id="no-code"),
    pytest.param(" 200 OK", id="leading-space"),
    pytest.param("20 OK", id="two-digits"),
    pytest.param("2000 OK", id="four-digits"),
    pytest.param("200 OK\r\nX-Injected: yes", id="crlf"),
    pytest.param("200 OK\nX-Injected: yes", id="lf"),
    pytest.param("200 OK\rX-Injected: yes", id="cr"),
    pytest.param("200 OK\x00", id="nul"),
    pytest.param("200 caf\u20ac", id="not-latin-1"),
]


@pytest.mark.parametrize("status", BAD_STATUSES)
def test_invalid_status_is_rejected(server, raw, status):
    """The status must be a native str "200 OK"-style: a three-digit code, one space, a reason phrase, no control
    characters ("The start_response() Callable"). ``start_response`` raises at once (servers "should check for
    errors in the headers at the time start_response is called") and the client gets a 500."""
    raised: list[BaseException] = []

    def app(environ, start_response):
        try:
            start_response(status, [("Content-Type", "text/plain"), ("X-App", "yes")])
        except Exception as exc:
            raised.append(exc)
            raise
        return [b"app body"]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    data = read_until_close(client)
    assert len(raised) == 1, "start_response accepted the status"
    assert_internal_error(data, b"X-Injected", b"X-App", b"app body")


# -- header validation -----------------------------------------------------------------------------------------------

BAD_HEADERS = [
    pytest.param([("X-Bad", "a\r\nX-Injected: yes")], id="crlf-in-value"),
    pytest.param([("X-Bad", "a\nX-Injected: yes")], id="lf-in-value"),
    pytest.param([("X-Bad", "a\rX-Injected: yes")], id="cr-in-value"),
    pytest.param([("X-Bad", "a\x00b")], id="nul-in-value"),
    pytest.param([("X-Bad", "caf\u20ac")], id="value-not-latin-1"),
    pytest.param([("Bad Name", "v")], id="space-in-name"),
    pytest.param([("X-Bad:Name", "v")], id="colon-in-name"),
    pytest.param([("X-Bad\r\nX-Injected", "v")], id="crlf-in-name"),
    pytest.param([("", "v")], id="empty-name"),
    pytest.param([(b"X-Bytes", "v")], id="bytes-name"),
    pytest.param([("X-Bytes", b"v")], id="bytes-value"),
    pytest.param([("X-Int", 1)], id="int-value"),
    pytest.param([("X-Three", "v", "w")], id="three-tuple"),
    pytest.param([["X-List", "v"]], id="list-item"),
    pytest.param((("X-Tuple", "v"),), id="headers-not-a-list"),
    pytest.param([("Transfer-Encoding", "chunked")], id="hop-by-hop-transfer-encoding"),
    pytest.param([("Keep-Alive", "timeout=5")], id="hop-by-hop-keep-alive"),
    pytest.param([("Upgrade", "websocket")], id="hop-by-hop-upgrade"),
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_invalid_headers_are_rejected(server, raw, headers):
    """Headers must be a list of (str, str) tuples with valid names and values without control characters, and
    must not use hop-by-hop headers ("The start_response() Callable", "Other HTTP Features"). ``start_response``
    raises at once, so that the app can still handle it, and the client gets a 500 without the app's headers."""
    raised: list[BaseException] = []
    if isinstance(headers, list):
        headers = [("Content-Type", "text/plain"), ("X-App", "yes"), *headers]

    def app(environ, start_response):
        try:
            start_response("200 OK", headers)
        except Exception as exc:
            raised.append(exc)
            raise
        return [b"app body"]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    data = read_until_close(client)
    assert len(raised) == 1, "start_response accepted the headers"
    assert_internal_error(data, b"X-Injected", b"X-App", b"app body", b"websocket", b"timeout=5")


def test_connection_close_from_app_is_honoured(server, raw):
    """``Connection`` is hop-by-hop, but ``Connection: close`` from the app is a request the server honours: the
    response says so (once) and the connection is closed after it (RFC 9112 section 9.6)."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close")])
        return [b"bye"]

    client = raw(server(validator(app)))
    resp = get(client, "/")
    assert resp.status == 200
    assert resp.body == b"bye"
    assert resp.header("Connection") == "close"
    assert client.is_closed()


def test_a_header_list_seen_before_is_served_the_same(server, raw):
    """A checked header list is remembered (a framework sends the same few again and again): the same list gives
    the same head every time, and ``Connection: close`` in a remembered list still closes the connection."""
    plain = [("Content-Type", "text/plain"), ("X-Served", "yes"), ("Content-Length", "2")]
    closing = [*plain, ("Connection", "close")]

    def app(environ, start_response):
        start_response("200 OK", list(closing if environ["PATH_INFO"] == "/close" else plain))
        return [b"ok"]

    srv = server(validator(app))
    for _ in range(2):  # the second connection meets both lists remembered
        client = raw(srv)
        for _ in range(3):
            resp = get(client, "/")
            assert (resp.status, resp.body, resp.header("X-Served")) == (200, b"ok", "yes")
            assert resp.header("Connection") is None
            assert resp.header_names().count("content-length") == 1
        resp = get(client, "/close")
        assert (resp.status, resp.body, resp.header("Connection")) == (200, b"ok", "close")
        assert client.is_closed()


def test_remembered_header_lists_are_bounded(server, raw):
    """Header lists that never repeat (a value per response) and large ones do not grow the memory of checked lists
    without bound; every response still carries its own headers."""
    from asyncwsgi.wsgi import call

    big = "v" * (call._CHECKED_BLOCK_MAX + 1)

    def app(environ, start_response):
        n = environ["QUERY_STRING"]
        headers = [("Content-Type", "text/plain"), ("X-N", n), ("Content-Length", "2")]
        if n == "big":
            headers.append(("X-Big", big))
        start_response("200 OK", headers)
        return [b"ok"]

    client = raw(server(validator(app)))
    for n in range(call._CACHE_MAX + 20):
        resp = get(client, f"/?{n}")
        assert (resp.status, resp.header("X-N")) == (200, str(n))
        assert len(call._CHECKED_HEADERS) <= call._CACHE_MAX
    for _ in range(2):
        resp = get(client, "/?big")
        assert (resp.status, resp.header("X-Big")) == (200, big)
    assert not any(("X-Big", big) in key for key in call._CHECKED_HEADERS)


def test_a_header_list_is_remembered_only_as_what_was_checked(server, raw):
    """A list whose items change while ``start_response`` reads it (another thread changing a shared list; here a
    list whose iteration alternates) is read once: what is remembered under a list is what was checked for it, so
    no later response gets another response's headers. Items left out of what is sent (a padded ``Connection:
    close``) count towards the size of what is remembered."""
    mine = [("Content-Type", "text/plain"), ("Set-Cookie", "session=MINE"), ("Content-Length", "2")]
    other = [("Content-Type", "text/plain"), ("Set-Cookie", "session=OTHER"), ("Content-Length", "2")]

    class Alternating(list):
        turns = 0

        def __iter__(self):
            Alternating.turns += 1
            return iter(mine if Alternating.turns % 2 else other)

    padded = [("Content-Type", "text/plain"), ("Content-Length", "2"), ("Connection", "close" + " " * 4000)]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        start_response("200 OK", Alternating(mine) if path == "/shifty" else padded if path == "/padded" else mine)
        return [b"ok"]

    from asyncwsgi.wsgi import call

    client = raw(server(app))
    get(client, "/shifty")
    for _ in range(2):
        assert get(client, "/").header("Set-Cookie") == "session=MINE"
    for key, checked in list(call._CHECKED_HEADERS.items()):
        assert key == checked[0], "a list is remembered with the headers of another"
    resp = get(client, "/padded")
    assert (resp.status, resp.header("Connection")) == (200, "close")
    assert tuple(padded) not in call._CHECKED_HEADERS


def test_status_line_is_sent_as_given(server, raw):
    """The status string, reason phrase included, is what the client receives ("The start_response() Callable")."""

    def app(environ, start_response):
        start_response("299 Custom Reason Phrase", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    assert client.read_head().split(b"\r\n", 1)[0] == b"HTTP/1.1 299 Custom Reason Phrase"
    assert client.read_exactly(2) == b"ok"


def test_repeated_response_headers_are_sent_separately(server, raw):
    """Response headers are a list: several with the same name (Set-Cookie above all, RFC 6265 section 3) are sent
    as separate fields, in order, never folded into one."""

    def app(environ, start_response):
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "a=1; Path=/"),
                ("X-Between", "x"),
                ("Set-Cookie", "b=2, c=3; Expires=Wed, 21 Oct 2015 07:28:00 GMT"),
                ("Content-Length", "2"),
            ],
        )
        return [b"ok"]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    lines = client.read_head().split(b"\r\n")
    cookies = [line for line in lines if line.lower().startswith(b"set-cookie:")]
    assert cookies == [b"Set-Cookie: a=1; Path=/", b"Set-Cookie: b=2, c=3; Expires=Wed, 21 Oct 2015 07:28:00 GMT"]
    assert client.read_exactly(2) == b"ok"


def test_response_headers_are_sent_as_latin1(server, raw):
    """Header values are native strings sent one byte per code point (latin-1) ("Unicode Issues")."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "caf\xe9"), ("Content-Length", "2")])
        return [b"ok"]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    head = client.read_head()
    assert b"\r\nX-Name: caf\xe9\r\n" in head
    assert client.read_exactly(2) == b"ok"


# -- start_response called twice, exc_info ---------------------------------------------------------------------------


def test_second_start_response_without_exc_info_is_an_error(server, raw):
    """ "It is a fatal error to call start_response without the exc_info argument if start_response has already been
    called within the current invocation" ("The start_response() Callable"): the call raises and, nothing having
    been sent, the client gets a 500."""
    raised: list[BaseException] = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            start_response("201 Created", [("Content-Type", "text/plain"), ("X-Second", "1")])
        except Exception as exc:
            raised.append(exc)
            raise
        return [b"app body"]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    data = read_until_close(client)
    assert len(raised) == 1
    assert_internal_error(data, b"X-First", b"X-Second", b"app body")


def test_exc_info_on_the_first_call(server, raw):
    """An error handler may pass ``exc_info`` to the first start_response call too ("Error Handling"): it is then an
    ordinary response."""

    def app(environ, start_response):
        try:
            raise ValueError("failed before start_response")
        except ValueError:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain"), ("Content-Length", "5")], sys.exc_info())
        return [b"error"]

    client = raw(server(validator(app)))
    resp = get(client, "/")
    assert (resp.status, resp.body) == (502, b"error")
    assert get(client, "/again").status == 502  # a normal response: the connection stays usable


def test_exc_info_before_body_replaces_status_and_headers(server, raw):
    """Called with ``exc_info`` before any output was sent, ``start_response`` replaces the status and headers: the
    client sees the error response only ("Error Handling")."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("failed after start_response")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain"), ("X-Error", "1")], sys.exc_info())
        return [b"error page"]

    client = raw(server(validator(app)))
    resp = get(client, "/")
    assert (resp.status, resp.reason) == (500, "Oops")
    assert resp.body == b"error page"
    assert resp.header("X-Error") == "1"
    assert resp.header("X-First") is None


def test_exc_info_after_empty_chunks_still_replaces(server, raw):
    """Empty chunks send nothing, so a later ``exc_info`` call can still replace the headers."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])

        def body():
            yield b""
            yield b""
            try:
                raise ValueError("late")
            except ValueError:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"try later"

        return body()

    client = raw(server(validator(app)))
    resp = get(client, "/")
    assert resp.status == 503
    assert resp.body == b"try later"
    assert resp.header("X-First") is None


def test_exc_info_after_body_started_reraises_and_closes(server, raw):
    """Once output was sent, ``start_response(..., exc_info)`` re-raises the exception ("Error Handling": "if
    exc_info is provided, and the HTTP headers have already been sent, start_response must raise an error"); the
    server cannot fix the response, so it closes the connection and the client sees a truncated body."""
    reraised: list[BaseException] = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"part1"
            try:
                raise KeyError("late failure")
            except KeyError:
                try:
                    start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
                except KeyError as exc:
                    reraised.append(exc)
                    raise
            yield b"never sent"

        return body()

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    head, body = split_response(read_until_close(client))
    assert status_line(head) == b"HTTP/1.1 200 OK"
    assert head_headers(head)[b"transfer-encoding"] == b"chunked"
    assert body == b"5\r\npart1\r\n"  # no last-chunk: the client can tell the body is incomplete
    assert len(reraised) == 1 and reraised[0].args == ("late failure",)


# -- headers held until the first non-empty chunk --------------------------------------------------------------------


def test_error_before_first_chunk_is_500(server, raw):
    """Headers are not sent before the first non-empty body chunk ("Buffering and Streaming"): an app that calls
    start_response then fails still produces a 500."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        raise RuntimeError("boom")

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-App")


def test_empty_chunks_do_not_send_headers(server, raw):
    """Empty chunks before a failure send nothing: the failure still becomes a 500."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])

        def body():
            yield b""
            yield b""
            raise RuntimeError("boom after empty chunks")

        return body()

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-App")


def test_body_yielded_before_start_response_is_an_error(server, raw):
    """ "The application must invoke the start_response() callable before the iterable yields its first body
    bytestring" ("Buffering and Streaming"): such an app gets a 500, and its early bytes are not sent."""

    def app(environ, start_response):
        def body():
            yield b"early-secret"
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"rest"

        return body()

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"early-secret", b"rest")


def test_block_is_sent_before_the_next_one_is_produced(server, raw):
    """ "WSGI servers ... must not delay the transmission of any block" ("Buffering and Streaming"): the first block
    reaches the client while the app is still producing the next."""
    received = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"first block"
            received.wait(WAIT)
            yield b"second block"

        return body()

    client = raw(server(validator(app)), timeout=2)
    client.send(request_bytes("GET", "/"))
    head = client.read_head()
    assert b"transfer-encoding: chunked" in head.lower()
    assert client.read_exactly(len(b"b\r\nfirst block\r\n")) == b"b\r\nfirst block\r\n"
    received.set()
    assert client.read_exactly(len(b"c\r\nsecond block\r\n0\r\n\r\n")) == b"c\r\nsecond block\r\n0\r\n\r\n"


@pytest.mark.parametrize("style", ["generator", "write"])
def test_last_block_with_content_length_is_not_delayed(server, raw, style):
    """The rule holds for a block that completes a declared Content-Length too: the client gets it without waiting
    for the app to finish ("Buffering and Streaming"; for write(), "The write() Callable")."""
    received = threading.Event()

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        if style == "write":
            write(b"0123456789")
            received.wait(WAIT)  # the app goes on working after its last write
            return []

        def body():
            yield b"0123456789"
            received.wait(WAIT)  # e.g. a generator's clean-up after its last yield

        return body()

    client = raw(server(validator(app)), timeout=2)
    client.send(request_bytes("GET", "/"))
    try:
        client.read_head()
        assert client.read_exactly(10) == b"0123456789"
    finally:
        received.set()


# -- write() ---------------------------------------------------------------------------------------------------------


def test_write_imperative_body(server, raw):
    """The ``write`` callable returned by start_response sends body bytes ("The write() Callable")."""

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one,")
        write(b"")
        write(b"two")
        return []

    client = raw(server(validator(app)))
    resp = get(client, "/")
    assert resp.body == b"one,two"
    assert get(client, "/again").body == b"one,two"  # the connection is still usable


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_write_then_returned_iterable(server, raw, kind):
    """Bytes written with write() come first, then the returned iterable's ("The write() Callable")."""

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"head-")
        if kind == "list":
            return [b"mid-", b"tail"]
        return iter([b"mid-", b"tail"])

    client = raw(server(validator(app)))
    assert get(client, "/").body == b"head-mid-tail"


def test_write_reaches_client_before_app_returns(server, raw):
    """write() "must" transmit or buffer for transmission "while the application proceeds": the client gets the
    bytes while the app is still running ("The write() Callable")."""
    received = threading.Event()

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"early")
        received.wait(WAIT)
        return [b"late"]

    client = raw(server(validator(app)), timeout=2)
    client.send(request_bytes("GET", "/"))
    client.read_head()
    assert client.read_exactly(len(b"5\r\nearly\r\n")) == b"5\r\nearly\r\n"
    received.set()
    assert client.read_exactly(len(b"4\r\nlate\r\n0\r\n\r\n")) == b"4\r\nlate\r\n0\r\n\r\n"


def test_write_before_start_response_is_an_error(server, raw):
    """The write callable is only valid after start_response ("The write() Callable"); using it before is an error
    and the client gets a 500. (The server's write callable is reached through the bound start_response.)"""
    raised: list[BaseException] = []

    def app(environ, start_response):
        owner = getattr(start_response, "__self__", None)
        if owner is None or not callable(getattr(owner, "write", None)):
            pytest.skip("no way to reach write() before start_response() on this server")
        try:
            owner.write(b"too early")
        except Exception as exc:
            raised.append(exc)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app body"]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    data = read_until_close(client)
    assert len(raised) == 1
    assert_internal_error(data, b"too early", b"app body")


def test_write_rejects_str(server, raw):
    """write() takes bytestrings only ("A Note On String Types"): a str is an error, and nothing sent means 500."""

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write("str-not-bytes")
        return []

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"str-not-bytes")


# -- Content-Length --------------------------------------------------------------------------------------------------


def short_app(style: str, declared: int, chunks: list[bytes]):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/second":
            return ok_app()(environ, start_response)
        write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(declared))])
        if style == "list":
            return list(chunks)
        if style == "generator":
            return (c for c in chunks)
        for c in chunks:
            write(c)
        return []

    return app


@pytest.mark.parametrize("style", ["list", "generator", "write"])
def test_short_body_closes_the_connection(server, raw, style):
    """A body shorter than its declared Content-Length: the server sends what it has and closes the connection, so
    the client sees EOF instead of waiting forever ("Handling the Content-Length Header"; RFC 9112 section 6.3)."""
    client = raw(server(short_app(style, 10, [b"123", b"45"])))
    client.send(request_bytes("GET", "/"))
    head = client.read_head()
    assert head_headers(head.rstrip(b"\r\n"))[b"content-length"] == b"10"
    assert read_until_close(client, timeout=3) == b"12345"


@pytest.mark.parametrize("style", ["list", "generator", "write"])
def test_extra_bytes_are_not_sent(server, raw, style):
    """ "The server should not transmit more bytes to the client than the header allows" ("Handling the
    Content-Length Header"): extra bytes are dropped and the connection stays usable for the next request."""
    client = raw(server(short_app(style, 5, [b"123", b"4567", b"890"])))
    resp = get(client, "/")
    assert resp.status == 200
    assert resp.header("Content-Length") == "5"
    assert resp.body == b"12345"
    second = get(client, "/second")  # would be garbled if "67890" had been sent
    assert (second.status, second.body) == (200, b"second response")


def test_failure_after_the_declared_body_leaves_response_and_connection_whole(server, raw, error_log):
    """The chunk that completes a declared Content-Length ends the response at once; the iterable still runs to its
    end and is closed. An error it raises then is logged, and neither cuts the (complete) response nor the
    keep-alive connection, which goes on to serve the next request."""
    logged = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and "failed after the whole body" in str(record.exc_info[1]):
                logged.set()

    spy = Spy()
    logging.getLogger("asyncwsgi.error").addHandler(spy)
    results: list[Closing] = []

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/second":
            return ok_app()(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        results.append(Closing([b"12", b"345", RuntimeError("failed after the whole body")]))
        return results[-1]

    client = raw(server(app))
    resp = get(client, "/")
    assert (resp.status, resp.body) == (200, b"12345")
    assert results[0].closed.wait(WAIT)
    assert results[0].close_calls == 1
    second = get(client, "/second")
    assert (second.status, second.body) == (200, b"second response")
    try:
        assert logged.wait(WAIT), "the error after the body was not logged"
    finally:
        logging.getLogger("asyncwsgi.error").removeHandler(spy)


def test_pipelined_requests_stay_in_order_when_bodies_end_early(server, raw):
    """Each response ends with the chunk that completes its Content-Length, while its iterable is still running;
    pipelined requests on the connection are answered in order, each whole, and each starts only once the one
    before it closed its iterable (tests/protocol/test_framing.py holds a close() open to check that part)."""
    events: list[str] = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        events.append(f"call {path}")
        body = path.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])

        def chunks():
            try:
                yield body
            finally:
                events.append(f"closed {path}")

        return chunks()

    client = raw(server(validator(app)))
    client.send(b"".join(request_bytes("GET", f"/{i}") for i in range(4)))
    for i in range(4):
        assert client.read_response().body == f"/{i}".encode()
    assert events[:7] == [e for i in range(4) for e in (f"call /{i}", f"closed /{i}")][:7]


# -- close() ---------------------------------------------------------------------------------------------------------


def test_close_called_on_success(server, raw):
    """ "If the iterable returned by the application has a close() method, the server or gateway must call that
    method upon completion of the current request" ("Specification Details"); once."""
    results: list[Closing] = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        results.append(Closing([b"a", b"", b"b"]))
        return results[-1]

    client = raw(server(validator(app)))
    assert get(client, "/").body == b"ab"
    assert results[0].closed.wait(WAIT)
    assert get(client, "/again").body == b"ab"  # a second request proves the first one is over
    assert results[1].closed.wait(WAIT)
    assert [r.close_calls for r in results] == [1, 1]


def test_close_called_when_iteration_raises(server, raw):
    """close() is called "whether the request was completed normally, or terminated early due to an application
    error during iteration" ("Specification Details")."""
    result = Closing([b"partial", RuntimeError("failed mid-body"), b"never"])

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return result

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    head, body = split_response(read_until_close(client))
    assert status_line(head) == b"HTTP/1.1 200 OK"
    assert body == b"7\r\npartial\r\n"
    assert result.closed.wait(WAIT)
    assert result.close_calls == 1


def test_close_called_when_first_next_raises(server, raw):
    """close() is called when the very first ``next()`` fails; the client gets a 500."""
    result = Closing([RuntimeError("failed at once")])

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        return result

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-App")
    assert result.closed.wait(WAIT)
    assert result.close_calls == 1


def test_close_called_when_start_response_rejects_headers(server, raw):
    """An iterable that calls start_response lazily with invalid headers: the validation error is an application
    error during iteration, so close() is still called; the client gets a 500."""

    results: list[Closing] = []

    def app(environ, start_response):
        def bad_start():
            start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\r\nX-Injected: 1")])
            return b"body"

        results.append(Closing([bad_start, b"more"]))
        return results[-1]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-Injected", b"body")
    assert len(results) == 1
    assert results[0].closed.wait(WAIT)
    assert results[0].close_calls == 1


def test_close_called_when_iterable_yields_str(server, raw):
    """close() is called when the server rejects what the iterable yielded."""
    result = Closing(["text, not bytes"])

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return result

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"text, not bytes")
    assert result.closed.wait(WAIT)
    assert result.close_calls == 1


def test_close_called_when_client_goes_away(server, raw):
    """A client that disconnects mid-response ends the iteration early, and close() is still called
    ("Specification Details": "terminated early ... or an early disconnect of the browser")."""
    chunk = b"x" * 65536
    limit = 4000  # 256 MiB: far more than the server may buffer for a client that stopped reading
    yielded = [0]
    closed = threading.Event()

    def body():
        try:
            for _ in range(limit):
                yielded[0] += 1
                yield chunk
        finally:
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body()

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    client.read_head()
    client.read_exactly(65536)
    client.close()
    assert closed.wait(WAIT)
    assert yielded[0] < limit


# -- bad return values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [pytest.param(None, id="none"), pytest.param("a str body", id="str"), pytest.param(b"a bytes body", id="bytes")],
)
def test_app_returning_a_non_iterable_of_bytes_is_500(server, raw, result):
    """The app must return an iterable yielding bytestrings ("Specification Details"); None, a str (an iterable of
    str) and a bare bytes object (an iterable of ints) are application errors: 500."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        return result

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-App", b"body")


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_iterable_yielding_str_first_is_500(server, raw, kind):
    """Body chunks must be bytes ("A Note On String Types"): a str before anything was sent gives a 500."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "1")])
        items = [b"bytes first", "then a str"] if kind == "list" else ["a str first"]
        return items if kind == "list" else iter(items)

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"X-App", b"then a str", b"a str first")


def test_iterable_yielding_str_after_body_started_closes(server, raw):
    """A str after body bytes went out cannot become a 500: the connection is closed, the body left incomplete."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"sent", "not bytes"])

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    head, body = split_response(read_until_close(client))
    assert status_line(head) == b"HTTP/1.1 200 OK"
    assert body == b"4\r\nsent\r\n"


def test_app_that_never_calls_start_response_is_500(server, raw):
    """An app that returns a body without calling start_response is broken: 500."""

    def app(environ, start_response):
        return [b"no status"]

    client = raw(server(app))
    client.send(request_bytes("GET", "/"))
    assert_internal_error(read_until_close(client), b"no status")


# -- error logging ---------------------------------------------------------------------------------------------------


def test_app_exception_logged_with_traceback_not_sent(server, raw, error_log):
    """An app exception is logged with its traceback on ``asyncwsgi.error``; the client gets a plain 500 that reveals
    nothing of it ("Error Handling": the server handles the error; details are for the log)."""
    secret = f"secret-{os.getpid()}-{id(error_log)}"

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise LookupError(secret)

    client = raw(server(app))
    client.send(request_bytes("GET", "/logged?x=1"))
    data = read_until_close(client)
    assert_internal_error(data, secret.encode(), b"Traceback", b"LookupError", b"test_response")
    records = [r for r in error_log.records if r.name == "asyncwsgi.error" and r.exc_info]
    assert len(records) == 1
    exc_type, exc, tb = records[0].exc_info
    assert exc_type is LookupError and exc.args == (secret,)
    assert tb is not None
    assert secret in error_log.text
    assert "Traceback (most recent call last)" in error_log.text


# -- wsgi.file_wrapper -----------------------------------------------------------------------------------------------
# These apps are not wrapped in wsgiref.validate: it would hide the wrapper object from the server behind its own
# iterator, and the server's file path (sendfile on the stdlib loop) would never run.


class TrackedFile(io.FileIO):
    """A real file on disk that reports when it is closed."""

    def __init__(self, path: Any) -> None:
        super().__init__(path, "rb")
        self.closed_event = threading.Event()

    def close(self) -> None:
        super().close()
        self.closed_event.set()


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(300_000 + 17)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


def file_app(path: Any, opened: list[TrackedFile], length: int | None = None, seek: int = 0, blksize: int = 8192):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/second":
            return ok_app()(environ, start_response)
        f = TrackedFile(path)
        opened.append(f)
        f.seek(seek)
        headers = [("Content-Type", "application/octet-stream")]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, blksize)

    return app


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_file_wrapper_sends_the_file(server, raw, data_file, loop, with_length):
    """A file returned through ``wsgi.file_wrapper`` arrives byte for byte, with or without a declared length, and
    the file is closed ("Optional Platform-Specific File Handling"); the connection stays usable."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened, len(data) if with_length else None), loop=loop))
    resp = get(client, "/file")
    assert resp.status == 200
    assert resp.body == data
    assert len(opened) == 1
    assert opened[0].closed_event.wait(WAIT)
    assert get(client, "/second").body == b"second response"


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_starts_at_current_position(server, raw, data_file, loop):
    """ "Transmission should begin at the current position within the file at the time of transmission"
    ("Optional Platform-Specific File Handling")."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened, seek=1000), loop=loop))
    resp = get(client, "/file")
    assert resp.body == data[1000:]
    assert opened[0].closed_event.wait(WAIT)


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_respects_shorter_content_length(server, raw, data_file, loop):
    """A declared Content-Length shorter than the file limits what is sent ("Handling the Content-Length Header");
    the connection stays usable."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened, length=5000), loop=loop))
    resp = get(client, "/file")
    assert resp.header("Content-Length") == "5000"
    assert resp.body == data[:5000]
    assert opened[0].closed_event.wait(WAIT)
    assert get(client, "/second").body == b"second response"


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_on_http10(server, raw, data_file, loop):
    """HTTP/1.0 has no chunked framing: the file still arrives whole."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened), loop=loop))
    client.send(request_bytes("GET", "/file", version="1.0"))
    head, body = split_response(read_until_close(client))
    assert status_line(head) == b"HTTP/1.1 200 OK"
    assert body == data
    assert opened[0].closed_event.wait(WAIT)


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_head_sends_no_body(server, raw, data_file, loop):
    """A HEAD response carries no body, even from a file wrapper; the file is still closed."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened, len(data)), loop=loop))
    resp = get(client, "/file", method="HEAD")
    assert resp.header("Content-Length") == str(len(data))
    assert resp.body == b""
    assert opened[0].closed_event.wait(WAIT)
    assert get(client, "/second").body == b"second response"


@pytest.mark.parametrize("loop", LOOPS)
def test_file_wrapper_shorter_than_content_length_closes(server, raw, data_file, loop):
    """A file shorter than the declared Content-Length: the file is sent, then the connection is closed so the
    client is not left waiting ("Handling the Content-Length Header")."""
    path, data = data_file
    opened: list[TrackedFile] = []
    client = raw(server(file_app(path, opened, length=len(data) + 100), loop=loop))
    client.send(request_bytes("GET", "/file"))
    head = client.read_head()
    assert head_headers(head.rstrip(b"\r\n"))[b"content-length"] == str(len(data) + 100).encode()
    assert read_until_close(client, timeout=3) == data
    assert opened[0].closed_event.wait(WAIT)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_file_wrapper_after_write(server, raw, data_file, loop, with_length):
    """Bytes sent with write() come first, then the file ("The write() Callable", "Optional Platform-Specific File
    Handling")."""
    path, data = data_file
    prefix = b"prefix written first|"

    def app(environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if with_length:
            headers.append(("Content-Length", str(len(prefix) + len(data))))
        write = start_response("200 OK", headers)
        write(prefix)
        return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)

    client = raw(server(app, loop=loop))
    assert get(client, "/").body == prefix + data
    assert get(client, "/").body == prefix + data


def test_file_wrapper_with_file_like_object(server, raw):
    """Any object with ``read(size)`` works with ``wsgi.file_wrapper``; its close() is called
    ("Optional Platform-Specific File Handling")."""
    data = os.urandom(70_001)
    objects: list[io.BytesIO] = []

    def app(environ, start_response):
        f = io.BytesIO(data)
        objects.append(f)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)

    client = raw(server(validator(app)))
    assert get(client, "/").body == data
    assert get(client, "/").body == data  # the first response is complete when the second starts
    assert objects[0].closed


# -- context variables -----------------------------------------------------------------------------------------------

REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_VAR")


@pytest.mark.parametrize("loop", LOOPS)
def test_context_var_does_not_leak_between_requests(server, raw, loop):
    """A ContextVar set by the app during one request is not visible to the next request, on another connection or
    the same one, even when both run on the same worker thread."""
    seen: list[tuple[str, int]] = []

    def app(environ, start_response):
        seen.append((REQUEST_VAR.get("unset"), threading.get_ident()))
        REQUEST_VAR.set(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = server(validator(app), loop=loop, threads=1)
    first = raw(handle)
    assert get(first, "/first").status == 200
    second = raw(handle)
    assert get(second, "/second").status == 200
    assert get(first, "/third").status == 200
    assert [value for value, _ in seen] == ["unset", "unset", "unset"]
    assert len({ident for _, ident in seen}) == 1  # the same worker thread ran all three
