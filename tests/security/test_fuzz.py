"""Property tests through a real server (one server per test, many examples, each on a fresh connection):

- well-formed requests (methods, targets, header fields, Content-Length and chunked bodies with extensions and
  trailers, pipelined) are each answered 200 by the app, which saw exactly what was sent;
- arbitrary bytes, and mutations of well-formed requests (bytes flipped, inserted, deleted; header lines duplicated;
  Content-Length changed; cut short), get syntactically valid HTTP/1.1 responses or a close, within a short time:
  200 only from the app, an error status only from the server, last on the connection, followed by a close;
- after each example, a well-formed request on a fresh connection is still answered.

The client half-closes after sending, so an unfinished request ends at once instead of at a server timeout.
The app is not wrapped in ``wsgiref.validate``: fuzzed requests legitimately carry methods and targets (``*``) that
the validator warns about.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import get

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Statuses the server itself answers malformed or refused requests with.
SERVER_ERRORS = {400, 408, 413, 414, 417, 431, 501, 505}
#: How long one exchange may take before the server counts as hung.
EXCHANGE_LIMIT = 3.0


class EchoApp:
    """Answers every request with a description of what it saw: method, PATH_INFO, QUERY_STRING, the HTTP_*
    environ keys in order and the body. Records, per client port, the calls answered and those that failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered: dict[str, list[bytes]] = {}
        self.failed: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        port = environ["REMOTE_PORT"]
        stream = environ["wsgi.input"]
        parts = []
        try:
            while True:
                piece = stream.read(65536)
                if not piece:
                    break
                parts.append(piece)
        except OSError:
            with self._lock:
                self.failed[port] = self.failed.get(port, 0) + 1
            raise
        body = describe(
            environ["REQUEST_METHOD"],
            environ["PATH_INFO"],
            environ["QUERY_STRING"],
            [(k, v) for k, v in environ.items() if k.startswith("HTTP_")],
            b"".join(parts),
        )
        with self._lock:
            self.answered.setdefault(port, []).append(body)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(len(body))),
                ("X-Method", environ["REQUEST_METHOD"]),
            ],
        )
        return [body]


def describe(method: str, path: str, query: str, fields: list[tuple[str, str]], body: bytes) -> bytes:
    head = f"{method} {path} ?{query}\n" + "".join(f"{k}={v}\n" for k, v in sorted(fields))
    return head.encode("latin-1") + b"\n" + body


# -- a strict reader of the server's responses -----------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([\x20-\x7e]+)")
FIELD_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+): ([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")


class Reply:
    def __init__(self, status: int, fields: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.fields = fields
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k.lower() == name]
        assert len(values) <= 1, f"repeated {name}: {self.fields}"
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.fields} {self.body[:60]!r}>"


def parse_replies(data: bytes) -> list[Reply]:
    """Every response in ``data``, which must be nothing but complete, well-framed HTTP/1.1 responses."""
    replies: list[Reply] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"truncated response head: {data[pos:]!r}"
        lines = data[pos:end].split(b"\r\n")
        m = STATUS_LINE.fullmatch(lines[0])
        assert m, f"bad status line {lines[0]!r}"
        status = int(m.group(1))
        fields = []
        for line in lines[1:]:
            f = FIELD_LINE.fullmatch(line)
            assert f, f"bad header line {line!r}"
            fields.append((f.group(1).decode("latin-1"), (f.group(2) or b"").decode("latin-1")))
        pos = end + 4
        reply = Reply(status, fields, b"")
        if status < 200:
            assert status == 100 and not fields, reply
            replies.append(reply)
            continue
        te, cl = reply.header("transfer-encoding"), reply.header("content-length")
        assert te is None, f"unexpected Transfer-Encoding: {reply}"
        assert cl is not None and cl.isdigit(), f"no Content-Length: {reply}"
        if reply.header("x-method") == "HEAD":
            replies.append(reply)
            continue
        n = int(cl)
        reply.body = data[pos : pos + n]
        assert len(reply.body) == n, f"truncated body: {reply}"
        pos += n
        replies.append(reply)
    return replies


def exchange(host: str, port: int, data: bytes) -> tuple[str, bytes]:
    """Send ``data`` on a fresh connection, half-close, read until the server closes. Returns (our port, bytes)."""
    deadline = time.monotonic() + EXCHANGE_LIMIT
    with socket.create_connection((host, port), timeout=EXCHANGE_LIMIT) as sock:
        me = str(sock.getsockname()[1])
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we were done
        chunks = []
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # closed with our unread bytes still queued: a close all the same
            except TimeoutError:
                raise AssertionError(
                    f"no close within {EXCHANGE_LIMIT}s for {data!r}; got {b''.join(chunks)!r}"
                ) from None
            if not chunk:
                break
            chunks.append(chunk)
    return me, b"".join(chunks)


def check_still_served(host: str, port: int) -> None:
    _, data = exchange(host, port, get("/still"))
    replies = parse_replies(data)
    assert [r.status for r in replies] == [200], replies
    assert replies[0].body.startswith(b"GET /still ?\n"), replies


def check_replies(app: EchoApp, me: str, data: bytes, sent: bytes) -> list[Reply]:
    """The reply stream is well-formed; 200s are the app's, in order; an error status is the server's and last."""
    replies = parse_replies(data)
    finals = [r for r in replies if r.status >= 200]
    answered = app.answered.get(me, [])
    ok = [r for r in finals if r.status == 200]
    # Every 200 is the app's answer, in order. (The app may have answered more: a response can be lost when the
    # connection closes, e.g. after the client half-closed in the middle of a later request.)
    assert len(ok) <= len(answered), f"{len(ok)} 200s but {len(answered)} app answers for {sent!r}: {replies}"
    for r, body in zip(ok, answered, strict=False):
        assert r.body == (b"" if r.header("x-method") == "HEAD" else body), f"not the app's answer for {sent!r}"
    for i, r in enumerate(finals):
        if r.status == 200:
            continue
        assert r.status in SERVER_ERRORS, f"status {r.status} for {sent!r}"
        assert i == len(finals) - 1, f"a response after the {r.status} for {sent!r}: {finals}"
        assert r.header("connection") == "close", r
        assert r.body.startswith(b"%d " % r.status), r
    return replies


# -- well-formed requests ---------------------------------------------------------------------------------------------

TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
RESERVED = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te", "trailer",
            "keep-alive", "cookie", "content-type", "proxy-connection", "http2-settings"}  # fmt: skip

names = st.text(TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in RESERVED)
values = st.text("".join(chr(c) for c in range(0x21, 0x7F)) + " \t\x80\xe9\xff", max_size=24).map(
    lambda v: v.strip(" \t")
)
paths = st.text("abcXYZ019-._~!$&'()*+,;=:@/", max_size=20).map(lambda p: "/" + p)
queries = st.none() | st.text("abc019-._~=&/?%+", max_size=12)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One request and the description the app must answer it with."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    path = draw(paths)
    query = draw(queries)
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from(["length", "chunked"] if body else ["none", "length", "chunked"]))
    lines = [f"{method} {path}{'' if query is None else '?' + query} HTTP/1.1", "Host: fuzz"]
    lines += [f"{n}: {v}" for n, v in fields]
    payload = b""
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body) - 1)), max_size=4))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True) if body[a:b]]
        for piece in pieces:
            ext = draw(st.sampled_from(["", ";a", ";a=b", ';n="q v"']))
            payload += b"%x%s\r\n%s\r\n" % (len(piece), ext.encode(), piece)
        payload += b"0\r\n"
        for n, v in draw(st.lists(st.tuples(names, values), max_size=2)):
            payload += f"X-T-{n}: {v}\r\n".encode("latin-1")
        payload += b"\r\n"
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload

    environ: dict[str, str] = {"HTTP_HOST": "fuzz"}
    for n, v in fields:
        key = "HTTP_" + n.upper().replace("-", "_")
        environ[key] = environ[key] + ", " + v if key in environ else v
    if framing == "chunked":
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    expected = describe(method, path, query or "", list(environ.items()), body)
    return data, expected


def test_well_formed_requests_reach_the_app_exactly(server):
    app = EchoApp()
    handle = server(app, timeout_request_header=1.0, timeout_request_body=1.0)
    host, port = handle.host, handle.port

    @SETTINGS
    @given(requests=st.lists(well_formed(), min_size=1, max_size=3))
    def check(requests: list[tuple[bytes, bytes]]) -> None:
        sent = b"".join(data for data, _ in requests)
        me, data = exchange(host, port, sent)
        replies = check_replies(app, me, data, sent)
        assert [r.status for r in replies] == [200] * len(requests), replies
        assert app.answered[me] == [expected for _, expected in requests]
        for reply, (req, expected) in zip(replies, requests, strict=True):
            if req.startswith(b"HEAD "):
                assert reply.body == b""
            else:
                assert reply.body == expected
        assert me not in app.failed

    check()
    check_still_served(host, port)


# -- mutated and arbitrary bytes --------------------------------------------------------------------------------------

INSERTS = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b"\x00", b";", b"0", b"\xff", b"\r\n\r\n", b"chunked", b"-1"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    requests = draw(st.lists(well_formed(), min_size=1, max_size=2))
    data = bytearray(b"".join(r for r, _ in requests))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate-line", "content-length", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(INSERTS))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 6))]
        elif op == "duplicate-line":
            start = data.rfind(b"\r\n", 0, pos) + 2 if data.rfind(b"\r\n", 0, pos) >= 0 else 0
            end = data.find(b"\r\n", pos)
            if end >= 0:
                data[start:start] = data[start : end + 2]
        elif op == "content-length":
            m = re.search(rb"Content-Length: [^\r]*", bytes(data))
            new = draw(st.sampled_from([b"0", b"1", b"5", b"400", b"99999", b"", b"-1", b"1 1", b"0x5"]))
            if m:
                data[m.start() : m.end()] = b"Content-Length: " + new
            else:
                at = data.find(b"\r\n") + 2
                data[at:at] = b"Content-Length: " + new + b"\r\n"
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def test_mutated_requests_get_valid_responses_or_a_close(server):
    app = EchoApp()
    handle = server(app, timeout_request_header=1.0, timeout_request_body=1.0, limit_request_body=10_000)
    host, port = handle.host, handle.port

    @SETTINGS
    @given(data=mutated())
    def check(data: bytes) -> None:
        me, reply_bytes = exchange(host, port, data)
        check_replies(app, me, reply_bytes, data)
        check_still_served(host, port)

    check()


def test_arbitrary_bytes_get_valid_responses_or_a_close(server):
    app = EchoApp()
    handle = server(app, timeout_request_header=1.0, timeout_request_body=1.0)
    host, port = handle.host, handle.port

    @SETTINGS
    @given(data=st.binary(min_size=1, max_size=300) | st.binary(max_size=200).map(lambda b: b"GET / HTTP/1.1\r\n" + b))
    def check(data: bytes) -> None:
        me, reply_bytes = exchange(host, port, data)
        check_replies(app, me, reply_bytes, data)
        check_still_served(host, port)

    check()


def test_half_close_inside_a_pipelined_body_still_answers_the_complete_request(server):
    # Found by the mutation property: a complete request, then the head of another whose body is cut short by the
    # client's half-close. The app answers the first; its response must reach the client before the server closes
    # (the client can still read: it only stopped sending). The unfinished request may get a 400 or nothing.
    app = EchoApp()

    def slow_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(0.2)  # slow work: the half-close arrives while the first request is in the app
        return app(environ, start_response)

    handle = server(slow_app)
    data = get("/a") + b"PUT /b HTTP/1.1\r\nHost: fuzz\r\nContent-Length: 400\r\n\r\n" + b"only twelve."
    me, reply_bytes = exchange(handle.host, handle.port, data)
    replies = parse_replies(reply_bytes)
    assert len(app.answered[me]) == 1
    assert [r.status for r in replies][:1] == [200], f"the answer to GET /a was dropped: {replies}"
    assert replies[0].body == app.answered[me][0]
    assert [r.status for r in replies][1:] in ([], [400])
