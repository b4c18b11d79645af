"""Streaming both ways.

- Backpressure: a client that stops reading stalls the app after a bounded amount of response, and the stream then
  resumes intact; a worker stalled that way is released when the client leaves or the server shuts down; an app that
  does not read its request body stops the upload after a bounded amount, and then gets it whole.
- Client disconnects: mid-response (the iterable is closed, iteration stops, ``write()`` raises an ``OSError``) and
  mid-upload (``wsgi.input.read()`` raises an ``OSError`` subclass, never a silent short body).
- 50 MiB uploads and downloads streamed in flat memory (RSS).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import http.client
import select
import socket
import struct
import threading
from wsgiref.validate import validator

import httpx
import pytest

from ..apps.streaming import (
    CHUNK,
    BigDownload,
    HashingUpload,
    Producer,
    RSSPeak,
    TickingStream,
    UploadProbe,
    Writer,
    numbered_chunk,
    read_rss,
)
from ..helpers import wait_until

MiB = 1024 * 1024

#: What the server itself may hold for a client that stops reading: README promises "about a megabyte" (the worker
#: waits once 512 KiB are posted but unwritten or the transport's 256 KiB high-water mark is passed), plus the chunk
#: that crossed each limit.
SERVER_ALLOWANCE = 1 * MiB + 2 * CHUNK

#: Requested receive buffer of the client that stops reading. Setting SO_RCVBUF locks it (no autotuning); the
#: kernel doubles the value for bookkeeping overhead, and we read back the real one.
CLIENT_RCVBUF = 64 * 1024


def _tcp_mem_max(name: str, default: int) -> int:
    """The most a TCP buffer may grow to by autotuning: the third field of net.ipv4.tcp_wmem / tcp_rmem."""
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return default


def _tcp_wmem_max() -> int:
    return _tcp_mem_max("tcp_wmem", 4 * MiB)  # default: the Linux default


def _tcp_rmem_max() -> int:
    return _tcp_mem_max("tcp_rmem", 6 * MiB)


GET_STREAM = b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n"


def _connect(
    handle: object, rcvbuf: int | None = None, sndbuf: int | None = None, timeout: float = 10.0
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(timeout)
        sock.connect((handle.host, handle.port))  # type: ignore[attr-defined]
    except BaseException:
        sock.close()
        raise
    return sock


def _read_response(sock: socket.socket) -> tuple[http.client.HTTPResponse, bytes]:
    resp = http.client.HTTPResponse(sock, method="GET")
    try:
        resp.begin()
        return resp, resp.read()
    finally:
        resp.close()


# -- backpressure -----------------------------------------------------------------------------------------------------


def test_client_that_stops_reading_stalls_the_app_then_the_stream_resumes_intact(server):
    producer = Producer(cap=2000)
    h = server(producer.app)
    with contextlib.closing(_connect(h, rcvbuf=CLIENT_RCVBUF)) as sock:
        sock.sendall(GET_STREAM)
        # Not a single byte is read: the app must stall once the server's and the kernel's buffers are full.
        stalled = producer.wait_stalled(quiet=0.3)

        # Where the produced bytes can be while nobody reads: the server's own buffers (SERVER_ALLOWANCE), the server
        # socket's send buffer (autotuned, at most tcp_wmem[2]: 4 MiB by default) and the client's receive buffer
        # (locked: what getsockopt reports, the doubled request). Both kernel figures count skb overhead too, so the
        # payload they hold is smaller: this is an upper bound. With Linux defaults it is about 84 chunks of 64 KiB;
        # a server that buffers without limit runs the producer to its cap of 2000 chunks (125 MiB).
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        bound = SERVER_ALLOWANCE + _tcp_wmem_max() + rcvbuf
        assert bound // CHUNK < producer.cap // 4, "the bound is too loose to tell buffering from backpressure"
        assert stalled * CHUNK <= bound, f"{stalled} chunks of 64 KiB produced for a client that reads nothing"
        assert stalled > 0

        # Reading again resumes the producer; stop it at the next chunk and check every byte arrived in order.
        producer.stop.set()
        resp, body = _read_response(sock)
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    final = producer.count
    assert final >= stalled
    assert len(body) == final * CHUNK
    indexes = [struct.unpack_from(">I", body, i * CHUNK)[0] for i in range(final)]
    assert indexes == list(range(final))
    assert body == b"".join(numbered_chunk(i) for i in range(final))


def test_backpressure_stays_bounded_after_many_whole_body_responses_on_one_connection(server):
    """Responses that end in one message (a list body with Content-Length) are written without the worker waiting on
    them; they must not count as written-ahead credit that a later streamed response on the same keep-alive
    connection could use to run past its bound."""
    producer = Producer(cap=2000)
    whole = validator(_whole_body_app)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/whole":
            return whole(environ, start_response)
        return producer.app(environ, start_response)

    h = server(app)
    with contextlib.closing(_connect(h, rcvbuf=CLIENT_RCVBUF)) as sock:
        for _ in range(WHOLE_RESPONSES):
            sock.sendall(b"GET /whole HTTP/1.1\r\nHost: test\r\n\r\n")
            resp, body = _read_response(sock)
            assert resp.status == 200 and len(body) == MiB
        sock.sendall(GET_STREAM)
        stalled = producer.wait_stalled(quiet=0.3)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        bound = SERVER_ALLOWANCE + _tcp_wmem_max() + rcvbuf
        # The earlier responses total WHOLE_RESPONSES MiB: credit from them would show as that much more produced.
        assert bound < WHOLE_RESPONSES * MiB, "the earlier responses are too small to show credit"
        assert 0 < stalled * CHUNK <= bound, f"{stalled} chunks of 64 KiB produced for a client that reads nothing"
        producer.stop.set()
        resp, body = _read_response(sock)
    assert resp.status == 200
    assert len(body) == producer.count * CHUNK


WHOLE_RESPONSES = 24


def _whole_body_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(MiB))])
    return [b"w" * MiB]


def test_worker_waiting_on_backpressure_is_released_when_the_client_leaves(server):
    producer = Producer(cap=2000)
    h = server(producer.app)
    with contextlib.closing(_connect(h, rcvbuf=CLIENT_RCVBUF)) as sock:
        sock.sendall(GET_STREAM)
        stalled = producer.wait_stalled(quiet=0.3)
        assert not producer.closed.is_set()
    # The worker is blocked waiting for the client to catch up; the client leaving must end that wait.
    assert producer.closed.wait(1.0), "the app's iterable was not closed within 1 s of the client leaving"
    assert producer.count < producer.cap
    assert producer.count <= stalled + 1


def test_shutdown_cuts_a_response_stuck_on_backpressure(server):
    producer = Producer(cap=2000)
    h = server(producer.app)
    with contextlib.closing(_connect(h, rcvbuf=CLIENT_RCVBUF)) as sock:
        sock.sendall(GET_STREAM)
        producer.wait_stalled(quiet=0.3)
        assert h.stop(0.2) == 1
        assert producer.closed.wait(1.0), "the iterable of a cut response was not closed"
    assert producer.count < producer.cap


def test_app_that_does_not_read_pauses_the_upload_then_gets_it_intact(server):
    hold = threading.Event()
    upload = HashingUpload(hold=hold)
    h = server(upload.app)
    total = 64 * MiB
    n_chunks = total // CHUNK
    expected = hashlib.sha256()
    for i in range(n_chunks):
        expected.update(numbered_chunk(i))

    def pieces():
        for i in range(n_chunks):
            yield numbered_chunk(i)

    source = pieces()
    pending = memoryview(b"")
    sent = 0
    with contextlib.closing(_connect(h, sndbuf=64 * 1024)) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % total)
        assert upload.entered.wait(5.0)
        # The app holds without reading: send without blocking until the socket stays unwritable for 0.3 s.
        sock.setblocking(False)
        stalled = False
        for _ in range(n_chunks * 4):
            if not pending:
                piece = next(source, None)
                if piece is None:
                    break  # everything went out: the server kept reading
                pending = memoryview(piece)
            _, writable, _ = select.select([], [sock], [], 0.3)
            if not writable:
                stalled = True
                break
            try:
                n = sock.send(pending)
            except BlockingIOError:
                continue
            sent += n
            pending = pending[n:]
        assert stalled, f"the server read all {sent} bytes of the upload while the app read none"
        # Where the sent bytes can be: the server's body buffer (256 KiB high-water mark, README: "an app that reads
        # slowly pauses the socket") plus the socket read that crossed it (at most 256 KiB), the server socket's
        # receive buffer (autotuned, at most tcp_rmem[2]) and the client's locked send buffer (what getsockopt says).
        # The kernel figures include skb overhead, so this is an upper bound; a server that buffers without limit
        # takes all 64 MiB.
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        bound = 512 * 1024 + _tcp_rmem_max() + sndbuf
        if bound >= total:
            pytest.skip(f"net.ipv4.tcp_rmem allows {bound} bytes in flight: not below the {total}-byte upload")
        assert sent <= bound, f"{sent} bytes of the upload accepted while the app read nothing"

        # Let the app read: the upload resumes and arrives whole.
        hold.set()
        sock.settimeout(30.0)
        sock.sendall(pending)
        for piece in source:
            sock.sendall(piece)
        resp, body = _read_response(sock)
    assert resp.status == 200
    assert body == f"{expected.hexdigest()} {total}".encode()


# -- client disconnects -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_gone_mid_response_closes_the_iterable_and_stops_iterating(server, how):
    stream = TickingStream(interval=0.01)
    h = server(stream.app)
    sock = _connect(h, timeout=5.0)
    try:
        sock.sendall(b"GET /ticks HTTP/1.1\r\nHost: test\r\n\r\n")
        data = b""
        for _ in range(100):
            if data.count(b"tick ") >= 3:
                break
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection before the client did"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"tick 000001\n" in data and b"tick 000003\n" in data
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()

    assert stream.closed.wait(1.0), "the iterable's close() was not called within 1 s of the client leaving"
    with stream.cond:
        seen = stream.count
        grew = stream.cond.wait_for(lambda: stream.count > seen, timeout=0.2)
    assert not grew, f"the app kept iterating after close(): {seen} -> {stream.count} chunks"
    assert seen < stream.cap
    assert wait_until(lambda: h.call(lambda: (h.server.in_flight, h.server.connections)) == (0, 0), timeout=2.0)


def test_write_raises_oserror_once_the_client_is_gone(server):
    writer = Writer(interval=0.01)
    h = server(writer.app)
    with contextlib.closing(_connect(h, timeout=5.0)) as sock:
        sock.sendall(b"GET /write HTTP/1.1\r\nHost: test\r\n\r\n")
        data = b""
        for _ in range(100):
            if b"line 000002\n" in data:
                break
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection before the client did"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert writer.done.wait(1.0), "write() kept succeeding for 1 s after the client left"
    assert writer.error is not None
    assert isinstance(writer.error, OSError), f"write() raised {type(writer.error).__name__}, not an OSError subclass"
    assert writer.count < writer.cap


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_gone_mid_upload_makes_read_raise_oserror(server, framing):
    probe = UploadProbe()
    h = server(probe.app)
    sent = 100_000
    if framing == "content-length":
        head = b"Content-Length: 1000000\r\n"
        payload = b"u" * sent
    else:
        head = b"Transfer-Encoding: chunked\r\n"
        # One chunk announced as 1 MB (0xF4240), of which only 100 KB arrive.
        payload = b"f4240\r\n" + b"u" * sent
    with contextlib.closing(_connect(h, timeout=5.0)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n" + head + b"\r\n"
        )
        sock.sendall(payload)
        assert probe.entered.wait(5.0), "the app was not called"
    assert probe.done.wait(2.0), "wsgi.input.read() still blocks after the client left"
    assert probe.error is not None, f"read() returned a short body ({probe.received} of 1000000 bytes) silently"
    assert isinstance(probe.error, OSError), f"read() raised {type(probe.error).__name__}, not an OSError subclass"
    assert probe.received <= sent
    assert wait_until(lambda: h.call(lambda: (h.server.in_flight, h.server.connections)) == (0, 0), timeout=2.0)


def test_client_gone_while_the_upload_is_paused_makes_read_raise_oserror(server):
    # The app holds without reading, so the server stops reading the socket with the body incomplete; the client
    # then leaves. Once the app reads, it must get an OSError, not the bytes that arrived followed by b"".
    hold = threading.Event()
    upload = HashingUpload(hold=hold)
    h = server(upload.app)
    declared = 16 * MiB
    sent = 0
    with contextlib.closing(_connect(h, sndbuf=64 * 1024, timeout=5.0)) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % declared)
        assert upload.entered.wait(5.0)
        sock.setblocking(False)
        piece = b"p" * CHUNK
        for _ in range(declared // CHUNK - 1):
            _, writable, _ = select.select([], [sock], [], 0.2)
            if not writable:
                break
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                continue
    assert 0 < sent < declared
    hold.set()
    assert upload.done.wait(2.0), "wsgi.input.read() still blocks after the client left"
    assert upload.error is not None, f"read() returned a short body ({upload.received} of {declared}) silently"
    assert isinstance(upload.error, OSError), f"read() raised {type(upload.error).__name__}, not an OSError"
    assert upload.received <= sent


# -- big transfers in flat memory -------------------------------------------------------------------------------------

BIG = 50 * MiB
#: RSS may grow by less than this while 50 MiB go through. Buffering the body whole would add at least 50 MiB.
RSS_SLACK = 30 * MiB

# Memory is measured as VmRSS (/proc/self/status), sampled every 8 chunks on both sides (the client and the app) while
# the transfer runs, against a baseline taken after a warm-up request. Peak VmRSS is what matters: a server that
# buffers the whole body frees it after the response, so the RSS after the transfer could look flat.
# getrusage's ru_maxrss is a lifetime high-water mark: it cannot go down, so any earlier peak of this process (another
# test) would hide growth here.


@pytest.mark.slow
def test_50mb_upload_streams_in_flat_memory(server):
    peak = RSSPeak()
    upload = HashingUpload(on_piece=peak.sample)
    h = server(upload.app)
    n_chunks = BIG // CHUNK
    expected = hashlib.sha256()
    for i in range(n_chunks):
        expected.update(numbered_chunk(i))

    def body():
        for i in range(n_chunks):
            peak.sample()
            yield numbered_chunk(i)

    with httpx.Client(timeout=30.0) as client:
        warm = client.post(h.url + "/upload", content=b"warm-up")
        assert warm.text == f"{hashlib.sha256(b'warm-up').hexdigest()} 7"
        upload.pieces = upload.largest = 0
        gc.collect()
        base = read_rss()
        peak.peak = base
        resp = client.post(h.url + "/upload", content=body())
    assert resp.status_code == 200
    assert resp.text == f"{expected.hexdigest()} {BIG}"
    assert upload.largest <= CHUNK, "read(65536) returned more than asked"
    assert upload.pieces >= n_chunks
    growth = peak.peak - base
    assert growth < RSS_SLACK, f"RSS grew by {growth / MiB:.1f} MiB during a {BIG // MiB} MiB upload"


@pytest.mark.slow
def test_50mb_download_streams_chunked_in_flat_memory(server):
    peak = RSSPeak()
    download = BigDownload(BIG, on_chunk=peak.sample)
    h = server(download.app)
    expected = download.expected_sha256()
    got = hashlib.sha256()
    received = 0
    with httpx.Client(timeout=30.0) as client:
        with client.stream("GET", h.url + "/warm-up") as warm:
            assert warm.status_code == 200
            for _ in warm.iter_bytes():
                break
        gc.collect()
        base = read_rss()
        peak.peak = base
        with client.stream("GET", h.url + "/download") as resp:
            assert resp.status_code == 200
            assert resp.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in resp.headers
            for data in resp.iter_bytes(CHUNK):
                got.update(data)
                received += len(data)
                peak.sample()
    assert received == BIG
    assert got.hexdigest() == expected
    growth = peak.peak - base
    assert growth < RSS_SLACK, f"RSS grew by {growth / MiB:.1f} MiB during a {BIG // MiB} MiB download"
