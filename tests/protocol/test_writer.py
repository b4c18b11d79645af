"""Unit tests of ``asyncwsgi.protocol.writer``: chunk framing, the canned error responses and the cached Date."""

from __future__ import annotations

import email.utils
import http.client
import io
import re
import time
from types import SimpleNamespace

import pytest

from asyncwsgi.protocol import writer
from asyncwsgi.protocol.writer import CHUNK_END, CONTINUE, error_response, frame_chunk, http_date

IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-6][0-9] GMT\Z"
)


def parse_response(data: bytes) -> http.client.HTTPResponse:
    class FakeSock:
        def makefile(self, *args: object, **kwargs: object) -> io.BytesIO:
            return io.BytesIO(data)

    resp = http.client.HTTPResponse(FakeSock())  # type: ignore[arg-type]
    resp.begin()
    return resp


# -- constants ---------------------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert CHUNK_END == b"0\r\n\r\n"


# -- frame_chunk -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "framed"),
    [
        (b"a", b"1\r\na\r\n"),
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 10, b"a\r\n" + b"x" * 10 + b"\r\n"),
        (b"x" * 15, b"f\r\n" + b"x" * 15 + b"\r\n"),
        (b"x" * 16, b"10\r\n" + b"x" * 16 + b"\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"y" * 4096, b"1000\r\n" + b"y" * 4096 + b"\r\n"),
        (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),  # payload bytes are opaque
    ],
)
def test_frame_chunk(data: bytes, framed: bytes) -> None:
    assert frame_chunk(data) == framed


def test_frame_chunk_large_is_hex_without_padding() -> None:
    data = b"z" * (1024 * 1024 + 1)
    out = frame_chunk(data)
    assert out.startswith(b"100001\r\n")
    assert out.endswith(b"z\r\n")
    assert len(out) == len(b"100001\r\n") + len(data) + 2


def test_frame_chunk_round_trips_through_a_chunked_decoder() -> None:
    pieces = [b"first", b"x" * 300, b"\x00\xff binary", b"last"]
    body = b"".join(frame_chunk(p) for p in pieces) + CHUNK_END
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse_response(head + body).read() == b"".join(pieces)


# -- error_response ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 408, 413, 414, 417, 431, 500, 501, 503, 505])
def test_error_response_is_a_complete_closing_response(status: int) -> None:
    raw = error_response(status)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    lines = head.split(b"\r\n")
    phrase = http.HTTPStatus(status).phrase
    assert lines[0] == f"HTTP/1.1 {status} {phrase}".encode()
    fields = [line.split(b": ", 1) for line in lines[1:]]
    names = [f[0].lower() for f in fields]
    assert len(names) == len(set(names)), "no header twice"
    values = {f[0].lower(): f[1] for f in fields}
    assert body == f"{status} {phrase}\n".encode()
    assert values[b"content-length"] == str(len(body)).encode()
    assert values[b"content-type"] == b"text/plain; charset=utf-8"
    assert values[b"connection"] == b"close"
    assert IMF_FIXDATE.match(values[b"date"].decode())
    assert values[b"server"] == b"asyncwsgi"
    assert (b"retry-after" in values) == (status == 503)
    if status == 503:
        assert values[b"retry-after"] == b"1"
    assert b"transfer-encoding" not in values
    resp = parse_response(raw)
    assert resp.status == status
    assert resp.read() == body


def test_error_response_with_detail() -> None:
    raw = error_response(414, "request line too long")
    resp = parse_response(raw)
    assert resp.status == 414
    assert resp.reason == http.HTTPStatus(414).phrase
    assert resp.read() == f"414 {http.HTTPStatus(414).phrase}: request line too long\n".encode()


def test_error_response_detail_is_utf8_and_counted_in_bytes() -> None:
    detail = "caf\u00e9 \u2603"
    raw = error_response(400, detail)
    resp = parse_response(raw)
    body = resp.read()
    assert body == f"400 Bad Request: {detail}\n".encode()
    assert resp.getheader("Content-Length") == str(len(body))


def test_error_response_detail_cannot_inject_headers() -> None:
    raw = error_response(400, "x\r\nSet-Cookie: evil=1\r\n\r\n")
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert b"set-cookie" not in head.lower()
    resp = parse_response(raw)
    assert resp.getheader("Set-Cookie") is None
    assert resp.read().startswith(b"400 Bad Request: x\r\nSet-Cookie")


def test_error_response_without_server_header() -> None:
    raw = error_response(400, server_header=False)
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver:" not in head
    assert b"\r\ndate:" in head
    assert b"\r\nconnection: close" in head


# -- http_date ---------------------------------------------------------------------------------------------------------


def test_http_date_format_and_value() -> None:
    before = int(time.time())
    value = http_date()
    after = int(time.time())
    assert IMF_FIXDATE.match(value), value
    stamp = email.utils.parsedate_to_datetime(value).timestamp()
    assert before <= stamp <= after


def test_http_date_known_instant(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example of RFC 9110 section 5.6.7.
    monkeypatch.setattr(writer, "DATE", ["", 0.0, 0.0, ""])
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: 784111777.25))
    assert http_date() == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_http_date_is_cached_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.0]
    calls: list[float] = []
    real_formatdate = email.utils.formatdate

    def counting_formatdate(timeval: float, usegmt: bool = False) -> str:
        calls.append(timeval)
        return real_formatdate(timeval, usegmt=usegmt)

    monkeypatch.setattr(writer, "DATE", ["", 0.0, 0.0, ""])
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: now[0]))
    monkeypatch.setattr(writer, "formatdate", counting_formatdate)

    first = http_date()
    assert first == "Tue, 14 Nov 2023 22:13:20 GMT"
    for frac in (0.1, 0.5, 0.999):
        now[0] = 1_700_000_000 + frac
        assert http_date() == first
    assert len(calls) == 1, "recomputed within the same second"

    now[0] = 1_700_000_001.0
    second = http_date()
    assert second == "Tue, 14 Nov 2023 22:13:21 GMT"
    assert len(calls) == 2

    now[0] = 1_700_003_600.5  # an hour later
    assert http_date() == "Tue, 14 Nov 2023 23:13:20 GMT"
    assert len(calls) == 3


def test_http_date_recomputed_when_the_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_100.0]
    monkeypatch.setattr(writer, "DATE", ["", 0.0, 0.0, ""])
    monkeypatch.setattr(writer, "time", SimpleNamespace(time=lambda: now[0]))
    assert http_date() == "Tue, 14 Nov 2023 22:15:00 GMT"
    now[0] = 1_700_000_000.0
    assert http_date() == "Tue, 14 Nov 2023 22:13:20 GMT"
