"""PEP 3333 "Input and Error Streams": ``wsgi.input``.

Unit tests drive ``asyncwsgi.wsgi.input.InputStream`` from two threads, as the server does: the test thread plays
the event loop (``feed``, ``feed_eof``, ``pause``, ``abort``) and a reader thread plays the application. They are
deterministic: the stream's condition variable is replaced by one that reports when the reader blocks, so the test
feeds only once the reader is known to be waiting. Expected results come from ``io.BytesIO`` holding the same bytes
(the file protocol PEP 3333 refers to).

Functional tests read request bodies through a real server, framed by Content-Length and chunked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.validate import validator

import pytest

from asyncwsgi import ClientDisconnected
from asyncwsgi.errors import RequestBodyTimeout
from asyncwsgi.wsgi.input import BODY_HIGH_WATER, InputStream

from .support import WAIT, chunked, request_bytes

# -- unit: helpers ---------------------------------------------------------------------------------------------------


class WatchedStream(InputStream):
    """An InputStream that sets ``blocked`` and counts ``parks`` each time its reader starts waiting for the loop."""

    __slots__ = ("blocked", "parks")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.blocked = threading.Event()
        self.parks = 0

    def _park(self, timeout: float | None) -> bool:
        self.parks += 1
        self.blocked.set()
        return super()._park(timeout)


class Reader:
    """Runs ``fn()`` in a thread (the application's side); ``result()`` returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-input-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:
            self._error = exc
        finally:
            self.done.set()

    def result(self, timeout: float = WAIT) -> Any:
        assert self.done.wait(timeout), "the read did not return"
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self._value


class Harness:
    def __init__(self, expect_continue: bool = False, timeout: float | None = None) -> None:
        self.requests: list[str] = []
        self.on_request: Callable[[str], None] | None = None
        self.stream = WatchedStream(self._request_loop, expect_continue, timeout)
        self.readers: list[Reader] = []

    def _request_loop(self, what: str) -> None:
        # Called on the reader's thread; the loop side would post it to the event loop.
        self.requests.append(what)
        if self.on_request is not None:
            self.on_request(what)

    def read_in_thread(self, fn: Callable[[InputStream], Any]) -> Reader:
        self.stream.blocked.clear()
        reader = Reader(lambda: fn(self.stream))
        self.readers.append(reader)
        return reader

    def wait_blocked(self, reader: Reader) -> None:
        """Wait until the reader blocks waiting for the loop (it has not returned), then re-arm for the next wait."""
        assert self.stream.blocked.wait(WAIT), "the reader never blocked"
        assert not reader.done.is_set(), "the read returned instead of waiting"
        self.stream.blocked.clear()

    def still_parked(self, reader: Reader) -> None:
        """The feed just made did not complete what the reader waits for: the loop did not wake it (it is still
        parked on the same wait; ``feed`` decides that under the stream's lock before it returns)."""
        assert self.stream._waiter is not None, "the feed woke the reader"
        assert not reader.done.is_set()


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(expect_continue: bool = False, timeout: float | None = None) -> Harness:
        h = Harness(expect_continue, timeout)
        made.append(h)
        return h

    yield make
    for h in made:  # release any reader a failed test left blocked
        h.stream.abort(ClientDisconnected("test teardown"))
        for r in h.readers:
            r.done.wait(WAIT)


BODY = b"first line\nsecond line\r\n\n\x00\xff binary \xfe\nno newline at the end"


def bytesio_lines(data: bytes) -> list[bytes]:
    return list(io.BytesIO(data))


# -- unit: read ------------------------------------------------------------------------------------------------------


def test_read_n_waits_for_n_bytes(harness):
    """``read(n)`` returns n bytes, waiting for more as needed; the rest stays for the next read. The reader is woken
    once, when the n bytes are there, not for each piece of the body."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.read(10))
    h.wait_blocked(reader)
    h.stream.feed(b"0123")
    h.still_parked(reader)
    h.stream.feed(b"456789AB")
    assert reader.result() == b"0123456789"
    assert h.stream.parks == 1
    assert h.read_in_thread(lambda s: s.read(2)).result() == b"AB"


def test_read_n_returns_what_is_left_at_eof(harness):
    """At the end of the body ``read(n)`` returns fewer bytes, then ``b""`` on every later call."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.read(10))
    h.wait_blocked(reader)
    h.stream.feed(b"abc")
    h.still_parked(reader)
    h.stream.feed_eof()
    assert reader.result() == b"abc"
    assert h.read_in_thread(lambda s: [s.read(10), s.read(1), s.read(10)]).result() == [b"", b"", b""]


@pytest.mark.parametrize("args", [(), (-1,), (None,)], ids=["no-arg", "minus-one", "none"])
def test_read_all_waits_for_eof(harness, args):
    """``read()`` (or a negative / None size) returns the whole rest of the body, however it arrives."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.read(*args))
    h.wait_blocked(reader)
    h.stream.feed(b"part one, ")
    h.still_parked(reader)
    h.stream.feed(b"part two")
    h.still_parked(reader)
    h.stream.feed_eof()
    assert reader.result() == b"part one, part two"
    assert h.stream.parks == 1
    assert h.read_in_thread(lambda s: s.read()).result() == b""


def test_read_zero_does_not_block(harness):
    """``read(0)`` returns ``b""`` at once, even with nothing received and no EOF, and consumes nothing."""
    h = harness()
    assert h.read_in_thread(lambda s: s.read(0)).result() == b""
    h.stream.feed(b"xyz")
    assert h.read_in_thread(lambda s: (s.read(0), s.read(3))).result() == (b"", b"xyz")


def test_read_n_sequence_matches_a_file(harness):
    """Successive ``read(n)`` calls over a complete body split it exactly as a file would."""
    h = harness()
    h.stream.feed(BODY[:7])
    h.stream.feed(BODY[7:])
    h.stream.feed_eof()
    ref = io.BytesIO(BODY)
    sizes = [1, 5, 0, 13, 2, 100, 3]
    assert h.read_in_thread(lambda s: [s.read(n) for n in sizes]).result() == [ref.read(n) for n in sizes]


@pytest.mark.parametrize("seed", range(20))
def test_mixed_reads_over_random_pieces_match_a_file(harness, seed):
    """However the body was cut into pieces on the way in, any sequence of ``read(n)``, ``readline()`` and
    ``readline(n)`` returns exactly what a file holding the body returns (20 seeded cases)."""
    rng = random.Random(seed)
    data = bytes(rng.choice(b"ab\n") for _ in range(rng.randrange(1, 3000)))
    h = harness()
    at = 0
    while at < len(data):
        step = rng.choice([1, 2, 7, 64, 500])
        h.stream.feed(data[at : at + step])
        at += step
    h.stream.feed_eof()
    ops = [(rng.choice(["read", "readline", "readline-n"]), rng.choice([0, 1, 3, 64, 700])) for _ in range(400)]

    def run(f: Any) -> list[bytes]:
        calls = {"read": f.read, "readline": lambda n: f.readline(), "readline-n": f.readline}
        return [calls[op](n) for op, n in ops]

    assert h.read_in_thread(run).result() == run(io.BytesIO(data))


def test_a_read_of_a_whole_piece_is_not_copied(harness):
    """A read that takes exactly one piece as the loop fed it returns that object (a 64 KiB upload read at once
    costs no copy); a read that spans pieces joins them."""
    h = harness()
    piece, second = os.urandom(65536), os.urandom(100)
    h.stream.feed(piece)
    h.stream.feed(second)
    h.stream.feed_eof()
    got = h.read_in_thread(lambda s: s.read(65536)).result()
    assert got is piece
    assert h.read_in_thread(lambda s: s.read(200)).result() == second


# -- unit: readline / readlines / iteration --------------------------------------------------------------------------


def test_readline_waits_for_a_newline(harness):
    """``readline()`` returns one line including its ``\\n``, waiting across pieces of the body; the last line may
    lack the newline; then ``b""``."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.readline())
    h.wait_blocked(reader)
    h.stream.feed(b"partial")
    h.still_parked(reader)
    h.stream.feed(b" line\nnext")
    assert reader.result() == b"partial line\n"
    reader = h.read_in_thread(lambda s: s.readline())
    h.wait_blocked(reader)
    h.stream.feed_eof()
    assert reader.result() == b"next"
    assert h.read_in_thread(lambda s: s.readline()).result() == b""


def test_readline_with_size(harness):
    """``readline(size)`` returns at most ``size`` bytes (PEP 3333 note on readline's size argument), stopping at a
    newline before that, exactly as a file does."""
    data = b"abcdefgh\nij\n\nklmnop"
    h = harness()
    h.stream.feed(data)
    h.stream.feed_eof()
    ref = io.BytesIO(data)
    sizes = [3, 100, 2, 5, 1, 4, 0, 10, 10]
    assert h.read_in_thread(lambda s: [s.readline(n) for n in sizes]).result() == [ref.readline(n) for n in sizes]


def test_readline_with_size_returns_when_size_reached(harness):
    """``readline(size)`` does not wait for a newline once it has ``size`` bytes."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.readline(4))
    h.wait_blocked(reader)
    h.stream.feed(b"ab")
    h.still_parked(reader)
    h.stream.feed(b"cdef")  # no newline, and no EOF
    assert reader.result() == b"abcd"


def test_readline_zero(harness):
    """``readline(0)`` returns ``b""`` without waiting."""
    h = harness()
    assert h.read_in_thread(lambda s: s.readline(0)).result() == b""


def test_readlines(harness):
    """``readlines()`` returns every line up to EOF, as a file does; it waits for the end."""
    h = harness()
    reader = h.read_in_thread(lambda s: s.readlines())
    h.wait_blocked(reader)
    h.stream.feed(BODY[:5])
    h.still_parked(reader)
    h.stream.feed(BODY[5:])
    h.wait_blocked(reader)  # took the whole lines, waits for the end of the last one
    h.stream.feed_eof()
    assert reader.result() == bytesio_lines(BODY)


@pytest.mark.parametrize("hint", [-1, 0, 1, 11, 12, 30, 1000])
def test_readlines_with_hint(harness, hint):
    """``readlines(hint)`` stops after the line that makes the total reach ``hint``, as a file does (PEP 3333 note:
    the server may also ignore it); the rest stays readable."""
    h = harness()
    h.stream.feed(BODY)
    h.stream.feed_eof()
    ref = io.BytesIO(BODY)
    expected = (ref.readlines(hint), ref.read())
    assert h.read_in_thread(lambda s: (s.readlines(hint), s.read())).result() == expected


def test_iteration_yields_lines(harness):
    """Iterating wsgi.input yields its lines ("Input and Error Streams": ``__iter__``)."""
    h = harness()
    reader = h.read_in_thread(lambda s: list(s))
    h.wait_blocked(reader)
    for i in range(0, len(BODY), 9):
        h.stream.feed(BODY[i : i + 9])
    h.stream.feed_eof()
    assert reader.result() == bytesio_lines(BODY)


def test_every_method_is_empty_at_eof(harness):
    """An empty, finished body: every method returns an empty result at once."""
    h = harness()
    h.stream.feed_eof()
    got = h.read_in_thread(
        lambda s: (s.read(), s.read(5), s.read(0), s.readline(), s.readline(3), s.readlines(), list(s))
    ).result()
    assert got == (b"", b"", b"", b"", b"", [], [])


# -- unit: abort and timeout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "read",
    [
        lambda s: s.read(10),
        lambda s: s.read(),
        lambda s: s.readline(),
        lambda s: s.readline(5),
        lambda s: s.readlines(),
        lambda s: list(s),
    ],
    ids=["read-n", "read", "readline", "readline-n", "readlines", "iter"],
)
def test_abort_raises_in_a_blocked_reader(harness, read):
    """When the client disconnects mid-body a blocked read raises ``ClientDisconnected``, an ``OSError``, and so
    does every later read (a truncated body must not look like a complete one)."""
    h = harness()
    reader = h.read_in_thread(read)
    h.wait_blocked(reader)
    h.stream.feed(b"par")
    h.still_parked(reader)
    h.stream.abort(ClientDisconnected("client went away"))
    with pytest.raises(ClientDisconnected) as info:
        reader.result()
    assert isinstance(info.value, OSError)
    with pytest.raises(OSError):
        h.read_in_thread(lambda s: s.read(1)).result()


def test_abort_after_the_body_is_complete_keeps_it_readable(harness):
    """A connection lost after the whole body arrived does not take the body away from the app."""
    h = harness()
    h.stream.feed(b"complete body")
    h.stream.feed_eof()
    h.stream.abort(ClientDisconnected("client went away"))
    assert h.read_in_thread(lambda s: s.read()).result() == b"complete body"


def test_read_timeout_raises_oserror(harness):
    """A body that stops arriving for longer than the stream's timeout raises ``RequestBodyTimeout``, a
    ``ClientDisconnected`` (so an ``OSError``)."""
    h = harness(timeout=0.05)
    h.stream.feed(b"ab")
    with pytest.raises(RequestBodyTimeout) as info:
        h.read_in_thread(lambda s: s.read(3)).result()
    assert isinstance(info.value, ClientDisconnected)
    assert isinstance(info.value, OSError)


def test_read_timeout_counts_from_the_last_piece(harness):
    """The body timeout is the time without any new piece of the body, not the time one read takes: a body that
    keeps trickling in (a piece every 0.15 s, for over twice the 1 s timeout) completes a read that waits for all of
    it, even though no single piece wakes the reader."""
    h = harness(timeout=1.0)
    reader = h.read_in_thread(lambda s: s.read(15))
    h.wait_blocked(reader)
    for i in range(14):
        h.stream.feed(b"%x" % i)
        assert not reader.done.wait(0.15), "the read returned before its 15 bytes arrived"
    h.stream.feed(b"e")
    assert reader.result() == b"0123456789abcde"
    assert h.stream.parks < 14, "the reader was woken for pieces that did not complete its read"


# -- unit: requests to the loop (100-continue, flow control) ---------------------------------------------------------


def test_continue_requested_on_first_read_when_nothing_received(harness):
    """With ``Expect: 100-continue`` the first read that finds nothing received asks the loop for "continue"
    ("HTTP 1.1 Expect/Continue"), once only."""
    h = harness(expect_continue=True)
    assert h.requests == []
    reader = h.read_in_thread(lambda s: s.read(4))
    h.wait_blocked(reader)
    assert h.requests == [InputStream.WANT_CONTINUE] == ["continue"]
    h.stream.feed(b"ab")
    h.still_parked(reader)
    h.stream.feed(b"cd")
    assert reader.result() == b"abcd"
    reader = h.read_in_thread(lambda s: s.read(2))
    h.wait_blocked(reader)
    h.stream.feed(b"ef")
    assert reader.result() == b"ef"
    assert h.requests == ["continue"]


def test_no_continue_when_body_already_arriving(harness):
    """If the client sent body bytes without waiting for 100 Continue, asking for it is pointless."""
    h = harness(expect_continue=True)
    h.stream.feed(b"ab")
    reader = h.read_in_thread(lambda s: s.read(4))
    h.wait_blocked(reader)
    h.stream.feed(b"cd")
    assert reader.result() == b"abcd"
    assert h.requests == []


def test_no_continue_without_expect(harness):
    """Without ``Expect: 100-continue`` a read never asks for one."""
    h = harness(expect_continue=False)
    reader = h.read_in_thread(lambda s: s.read(1))
    h.wait_blocked(reader)
    h.stream.feed(b"a")
    assert reader.result() == b"a"
    assert h.requests == []


def test_no_continue_before_the_first_read(harness):
    """Nothing is asked before the app reads: "continue" is sent only when the app first reads (PEP 3333,
    "HTTP 1.1 Expect/Continue"); ``read(0)`` reads nothing."""
    h = harness(expect_continue=True)
    assert h.read_in_thread(lambda s: s.read(0)).result() == b""
    assert h.requests == []


def test_more_requested_when_paused_and_drained(harness):
    """When the loop paused reading because the buffer is full, the reader asks for "more" once it has drained it
    (not before it has read anything, and at the latest when the buffer is empty); exactly once per pause."""
    h = harness()
    seen_at: list[int] = []
    h.on_request = lambda what: seen_at.append(h.stream.buffered)
    h.stream.feed(os.urandom(BODY_HIGH_WATER))
    h.stream.pause()
    assert h.stream.paused is True
    assert h.requests == []

    def drain(s: InputStream) -> int:
        total = 0
        while total < BODY_HIGH_WATER:
            total += len(s.read(4096))
        return total

    assert h.read_in_thread(drain).result() == BODY_HIGH_WATER
    assert h.requests == [InputStream.WANT_MORE] == ["more"]
    assert 0 <= seen_at[0] < BODY_HIGH_WATER


def test_more_not_requested_when_not_paused(harness):
    """A buffer the loop did not pause on needs no "more"."""
    h = harness()
    h.stream.feed(os.urandom(BODY_HIGH_WATER))
    h.stream.feed_eof()
    assert len(h.read_in_thread(lambda s: s.read()).result()) == BODY_HIGH_WATER
    assert h.requests == []


def test_pause_wakes_a_waiting_reader_to_ask_for_more(harness):
    """A reader already waiting on an empty buffer when the loop pauses asks for "more" (else both would wait)."""
    h = harness()
    asked = threading.Event()
    h.on_request = lambda what: asked.set()
    reader = h.read_in_thread(lambda s: s.read(3))
    h.wait_blocked(reader)
    h.stream.pause()
    assert asked.wait(WAIT)
    assert h.requests == ["more"]
    h.stream.paused = False  # the loop resumed reading
    h.stream.feed(b"xyz")
    assert reader.result() == b"xyz"


def test_more_requested_again_after_the_next_pause(harness):
    """Each pause gets its own "more"."""
    h = harness()
    for _ in range(2):
        h.stream.feed(os.urandom(BODY_HIGH_WATER))
        h.stream.pause()
        assert len(h.read_in_thread(lambda s: s.read(BODY_HIGH_WATER)).result()) == BODY_HIGH_WATER
        h.stream.paused = False  # what the loop does when it resumes reading
    assert h.requests == ["more", "more"]


# -- functional: through the server ----------------------------------------------------------------------------------

#: How the functional app reads its input, by name; each takes a file-like and returns a list of bytes.
READS: dict[str, Callable[[Any], list[bytes]]] = {
    "read-n": lambda f: [f.read(5) for _ in range(len(BODY) // 5 + 3)],
    "read-large": lambda f: [f.read(len(BODY) + 100), f.read(1)],
    "readline": lambda f: [f.readline() for _ in range(BODY.count(b"\n") + 3)],
    "readline-n": lambda f: [f.readline(4) for _ in range(len(BODY) // 4 + BODY.count(b"\n") + 3)],
    "readlines": lambda f: f.readlines(),
    "readlines-hint": lambda f: [*f.readlines(15), b"|", *f.readlines()],
    "iter": lambda f: list(f),
}


def input_app(environ, start_response):
    """Reads wsgi.input the way ``?mode`` says and answers with what each call returned, as JSON (latin-1)."""
    f = environ["wsgi.input"]
    mode = environ["QUERY_STRING"]
    got = f.read() if mode == "read-all" else READS[mode](f)
    body = json.dumps([got.decode("latin-1")] if mode == "read-all" else [x.decode("latin-1") for x in got]).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def expected_reads(mode: str) -> list[str]:
    ref = io.BytesIO(BODY)
    got = [ref.read()] if mode == "read-all" else READS[mode](ref)
    return [x.decode("latin-1") for x in got]


def body_request(mode: str, framing: str) -> bytes:
    if framing == "content-length":
        return request_bytes("POST", f"/input?{mode}", [("Content-Length", str(len(BODY)))], BODY)
    pieces = [BODY[i : i + 3] for i in range(0, len(BODY), 3)]
    return request_bytes("POST", f"/input?{mode}", [("Transfer-Encoding", "chunked")], chunked(*pieces))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("mode", [*READS, "read-all"])
def test_input_methods_through_the_server(server, raw, mode, framing):
    """Every wsgi.input method returns, through the server, exactly what a file holding the body would, whether the
    body is framed by Content-Length or chunked ("Input and Error Streams"). ``read()`` without a size is not in
    PEP 3333 (and ``wsgiref.validate`` forbids it) but is allowed by ``wsgi.input_terminated``: that app is not
    wrapped."""
    app = input_app if mode == "read-all" else validator(input_app)
    client = raw(server(app))
    request = body_request(mode, framing)
    # Send in pieces so that the app's reads meet a partly received body.
    for i in range(0, len(request), 17):
        client.send(request[i : i + 17])
    resp = client.read_response()
    assert resp.status == 200, resp
    assert json.loads(resp.body) == expected_reads(mode)


def test_input_without_body_is_empty(server, raw):
    """A request without a body has an empty wsgi.input: reads return at once with nothing."""

    def app(environ, start_response):
        f = environ["wsgi.input"]
        got = [f.read(10), f.readline(), f.readline(5), b"".join(f.readlines()), b"".join(f)]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(got).encode()]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    assert client.read_response().body == repr([b"", b"", b"", b"", b""]).encode()


def test_read_does_not_block_past_content_length(server, raw):
    """Reading more than CONTENT_LENGTH returns the body then ``b""``: wsgi.input is terminated, the app never waits
    for bytes the client will not send ("environ Variables": wsgi.input_terminated)."""
    body = b"exactly this"

    def app(environ, start_response):
        f = environ["wsgi.input"]
        got = [f.read(1000), f.read(1000), f.readline()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(got).encode()]

    client = raw(server(validator(app)))
    client.send(request_bytes("POST", "/", [("Content-Length", str(len(body)))], body))
    assert client.read_response().body == repr([body, b"", b""]).encode()


def send_upload(client: Any, data: bytes, framing: str, step: int) -> None:
    """POST ``data`` to /big, framed by Content-Length or as chunks of ``step`` bytes."""
    if framing == "content-length":
        client.send(request_bytes("POST", "/big", [("Content-Length", str(len(data)))]))
        client.send(data)
    else:
        client.send(request_bytes("POST", "/big", [("Transfer-Encoding", "chunked")]))
        client.send(chunked(*(data[i : i + step] for i in range(0, len(data), step))))


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_large_body_read_in_small_pieces(server, raw, framing):
    """A body much larger than the server's buffer (several MiB) arrives intact when read a few bytes at a time; the
    server streams it with flow control instead of buffering it."""
    data = os.urandom(3 * 1024 * 1024 + 123)

    def app(environ, start_response):
        f = environ["wsgi.input"]
        digest = hashlib.sha256()
        size = 0
        for _ in range(len(data)):  # bounded: at least one byte per read until the end
            piece = f.read(997)
            if not piece:
                break
            digest.update(piece)
            size += len(piece)
        body = f"{size} {digest.hexdigest()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    client = raw(server(validator(app)), timeout=10)
    send_upload(client, data, framing, 100_003)
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()


#: Reads of more than the stream's buffer mark at once: each returns what it asked for (as a file does).
BIG_READS: dict[str, Callable[[Any], list[bytes]]] = {
    "read-n": lambda f: [f.read(BODY_HIGH_WATER * 4 + 7), f.read()],
    "readline": lambda f: [f.readline(), f.readline(), f.readline()],
    "readline-n": lambda f: [f.readline(BODY_HIGH_WATER * 3), f.readline(BODY_HIGH_WATER * 3), f.read()],
}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("mode", BIG_READS)
def test_reads_larger_than_the_buffer_mark(server, raw, mode, framing):
    """``read(n)`` with n above the body's buffer mark (the point where the server stops reading the socket until
    the app catches up), and a line longer than it: the server buffers what the app asked for instead of waiting
    for the app to drain a buffer it is itself waiting on."""
    line = bytes(range(32, 127)) * (BODY_HIGH_WATER * 5 // 95)  # over 5x the mark, no newline
    data = line + b"\n" + os.urandom(BODY_HIGH_WATER).replace(b"\n", b"") + b"\nend"
    ref = io.BytesIO(data)
    expected = [(len(x), hashlib.sha256(x).hexdigest()) for x in BIG_READS[mode](ref)]

    def app(environ, start_response):
        got = [[len(x), hashlib.sha256(x).hexdigest()] for x in BIG_READS[mode](environ["wsgi.input"])]
        body = json.dumps(got).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    client = raw(server(app, timeout_request_body=5.0), timeout=10)
    send_upload(client, data, framing, 65_521)
    resp = client.read_response()
    assert resp.status == 200, resp
    assert [tuple(x) for x in json.loads(resp.body)] == expected


def test_client_disconnect_mid_body_raises_oserror_in_app(server, raw):
    """A client that goes away before sending the whole body makes the app's read raise an ``OSError`` subclass
    (``asyncwsgi.ClientDisconnected``) instead of returning a short body as if it were complete."""
    outcome: list[Any] = []
    done = threading.Event()

    def app(environ, start_response):
        f = environ["wsgi.input"]
        try:
            outcome.append(f.read(100))
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            done.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"unexpected"]

    handle = server(validator(app))
    client = raw(handle)
    client.send(request_bytes("POST", "/", [("Content-Length", "100")], b"only ten b"))
    client.close()
    assert done.wait(WAIT)
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError), outcome
    assert isinstance(outcome[0], ClientDisconnected), outcome


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def test_expect_continue_sent_when_app_reads(server, raw):
    """With ``Expect: 100-continue`` the server sends ``100 Continue`` when the app first reads wsgi.input, and the
    body then flows ("HTTP 1.1 Expect/Continue")."""
    body = b"sent after 100"

    def app(environ, start_response):
        data = environ["wsgi.input"].read(len(body))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
        return [data]

    client = raw(server(validator(app)))
    client.send(request_bytes("POST", "/", [("Content-Length", str(len(body))), ("Expect", "100-continue")]))
    assert client.read_exactly(len(CONTINUE)) == CONTINUE
    client.send(body)
    resp = client.read_response()
    assert resp.status == 200
    assert resp.body == body


def test_expect_continue_not_sent_when_app_does_not_read(server, raw):
    """An app that answers without reading the body gets no ``100 Continue`` sent for it: the client's first bytes
    are the final response ("HTTP 1.1 Expect/Continue")."""

    def app(environ, start_response):
        start_response("413 Content Too Large", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"nope"]

    client = raw(server(validator(app)))
    client.send(request_bytes("POST", "/", [("Content-Length", "1000000"), ("Expect", "100-continue")]))
    resp = client.read_response()
    assert resp.status == 413
    assert resp.body == b"nope"
