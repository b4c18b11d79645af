"""A real nginx in front of asyncwsgi, configured as docs/deploy.md documents (the nginx snippets and the ``asyncwsgi
serve`` flags are read out of the docs, not copied), over TCP and over a unix socket.

Covers: the client's address, scheme and Host as the app sees them with ``--proxy-headers``; forwarding headers a
client forges (``X-Forwarded-*``, ``Forwarded``) are not believed; a 10 MB upload streams through
(``proxy_request_buffering off``); a streamed response arrives while the app is still producing it
(``proxy_buffering off``); upstream keep-alive reuses one connection; a graceful stop while nginx holds idle upstream
keep-alive connections makes no client request fail, restarting in place or with a second backend.

The test client connects from 127.0.0.2 where the client's address matters: nginx reaches asyncwsgi from 127.0.0.1,
the trusted proxy address of the documented ``--forwarded-allow-ips 127.0.0.1``, so a client on 127.0.0.1 would be
indistinguishable from the proxy itself and could not show which hop the server picks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import request_uri
from wsgiref.validate import validator

import httpx
import pytest

from asyncwsgi.config import Config

from .nginx_helpers import DeployDocs, Nginx, find_nginx, location_block

NGINX_BIN = find_nginx()
#: The client address that is not nginx's (see the module docstring).
CLIENT = "127.0.0.2"
#: The longest a test app waits on an event set by the test (so a failing test never leaves a thread hanging).
APP_WAIT = 5.0
HOST = "shop.example"

pytestmark = pytest.mark.skipif(NGINX_BIN is None, reason="nginx is not installed (Debian: apt-get install nginx)")


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs() -> DeployDocs:
    return DeployDocs.load()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (sun_path holds about 100 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="aw-nginx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nginx(tmp_path: Path, docs: DeployDocs) -> Iterator[Any]:
    """``nginx(*targets)``: start nginx in front of asyncwsgi servers (unix socket paths or ``(host, port)``);
    every nginx started is ended by its pid at teardown."""
    assert NGINX_BIN is not None
    started: list[Nginx] = []

    def start(*targets: str | tuple[str, int]) -> Nginx:
        n = Nginx(NGINX_BIN, tmp_path / f"nginx{len(started)}", docs, *targets)
        started.append(n)
        return n.start()

    yield start
    for n in started:
        n.stop()


@pytest.fixture(params=["tcp", "uds"])
def backend(request: pytest.FixtureRequest, server: Any, docs: DeployDocs, short_dir: Path) -> Any:
    """``backend(app, name="a")``: an in-process asyncwsgi server with the documented flags for this transport;
    returns ``(handle, target)`` where target is what nginx's upstream points at. ``at=`` reuses a target."""
    kind = request.param

    def start(app: Any, name: str = "a", at: Any = None, **options: Any) -> tuple[Any, Any]:
        if kind == "uds":
            path = at if at is not None else str(short_dir / f"{name}.sock")
            handle = server(app, **{**docs.server_options(uds=path), **options})
            return handle, handle.server.address
        if at is not None:
            options["port"] = at[1]
        handle = server(app, **{**docs.server_options(), **options})
        return handle, (handle.host, handle.port)

    return start


@pytest.fixture(scope="module")
def second_loopback() -> str:
    """127.0.0.2, if this system routes it to the loopback interface (Linux does; others may not)."""
    try:
        with socket.socket() as s:
            s.bind((CLIENT, 0))
    except OSError as exc:
        pytest.skip(f"cannot use {CLIENT} as a client address here: {exc}")
    return CLIENT


def client(n: Nginx, source: str = CLIENT, host: str | None = HOST) -> httpx.Client:
    """An httpx client of nginx connecting from ``source``, sending ``Host: host`` (None: httpx's own, with the
    port)."""
    return httpx.Client(
        base_url=n.url,
        transport=httpx.HTTPTransport(local_address=source),
        timeout=10,
        headers={"Host": host} if host else {},
    )


# -- apps ----------------------------------------------------------------------------------------------------------

ECHO_KEYS = (
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "HTTPS",
    "HTTP_HOST",
    "SERVER_PORT",
    "HTTP_X_FORWARDED_FOR",
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_PROTOCOL",
)


def _echo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = json.dumps({key: environ.get(key) for key in ECHO_KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


echo_app = validator(_echo)


class Named:
    """Answers ``NAME PATH``; ``/slow`` waits for ``release`` after setting ``entered``; ``/gather`` waits until
    ``parties`` requests are in the app at once; other paths take ``delay`` seconds. Counts requests and sets
    ``reached`` at ``reach`` of them."""

    def __init__(self, name: str, parties: int = 1, reach: int = 0, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.entered = threading.Event()
        self.release = threading.Event()
        self.barrier = threading.Barrier(parties, timeout=APP_WAIT)
        self.count = 0
        self._reach = reach
        self.reached = threading.Event()
        self._lock = threading.Lock()
        self.app = validator(self._app)

    def expect(self, more: int) -> None:
        """Set ``reached`` once ``more`` further requests have been answered."""
        with self._lock:
            self._reach = self.count + more
            self.reached.clear()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/slow":
            self.entered.set()
            self.release.wait(APP_WAIT)
        elif path == "/gather":
            self.barrier.wait()
        elif self.delay:
            time.sleep(self.delay)  # slow work in the app
        with self._lock:
            self.count += 1
            if self.count == self._reach:
                self.reached.set()
        body = f"{self.name} {path}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class Upload:
    """Reads the whole body in 64 KiB pieces; answers its size and SHA-256. ``reading`` is set at the first piece."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            self.reading.set()
            digest.update(chunk)
            size += len(chunk)
        body = f"{size} {digest.hexdigest()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


class Stream:
    """A response of several chunks (no Content-Length): the first, then (after ``release``) a few with short delays,
    then the last; ``producing_last`` is set just before the last chunk is produced."""

    FIRST = b"first chunk\n"
    MIDDLE = [b"middle %d\n" % i for i in range(3)]
    LAST = b"last chunk\n"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.producing_last = threading.Event()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self._body()

    def _body(self) -> Iterator[bytes]:
        yield self.FIRST
        self.release.wait(APP_WAIT)
        for chunk in self.MIDDLE:
            time.sleep(0.01)  # slow work in the app
            yield chunk
        self.producing_last.set()
        yield self.LAST


class ConnectionCounter:
    """Counts the connections a server accepts and closes from now on (hooking its ``connection_opened`` /
    ``connection_closed``, which run on the server's loop thread); ``wait_closed(n)`` waits for ``n`` closes."""

    def __init__(self, handle: Any) -> None:
        srv = handle.server
        self.opened = 0
        self.closed = 0
        self._cond = threading.Condition()
        original_open, original_close = srv.connection_opened, srv.connection_closed

        def on_open(conn: Any) -> None:
            with self._cond:
                self.opened += 1
            original_open(conn)

        def on_close(conn: Any, had_request: bool) -> None:
            original_close(conn, had_request)
            with self._cond:
                self.closed += 1
                self._cond.notify_all()

        srv.connection_opened = on_open
        srv.connection_closed = on_close

    def wait_closed(self, n: int, timeout: float = APP_WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.closed >= n, timeout)


# -- the documented configuration ----------------------------------------------------------------------------------


def test_the_documented_location_block_is_the_one_served(docs: DeployDocs, nginx: Any, tmp_path: Path) -> None:
    """The generated nginx.conf carries docs/deploy.md's ``location /`` block verbatim (and nginx accepts it)."""
    n = nginx(("127.0.0.1", 9))
    conf = n.conf_path.read_text()
    documented = location_block(docs.server_block, "/")
    assert documented in conf
    for directive in ("proxy_request_buffering off;", "proxy_buffering off;", 'proxy_set_header Connection "";'):
        assert directive in documented
    with client(n, source="127.0.0.1") as c:
        r = c.get("/static/ready.txt")
    assert (r.status_code, r.text) == (200, n.token)  # nginx's own /static/ location, not the app


#: nginx's default ``keepalive_timeout`` for upstream connections (the documented upstream blocks do not set one).
NGINX_UPSTREAM_KEEPALIVE_TIMEOUT = 60.0


@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_documented_command_lines_follow_the_documented_advice(docs: DeployDocs, transport: str) -> None:
    """Each documented ``asyncwsgi serve`` line parses, turns on --proxy-headers, and keeps idle connections longer
    than nginx keeps its idle upstream connections, as the same page says it must ("otherwise nginx can send a
    request on a connection asyncwsgi is closing")."""
    options = docs.server_options(uds="/run/x/app.sock" if transport == "uds" else None)
    config = Config(**options)
    assert config.proxy_headers is True
    assert config.timeout_keep_alive > NGINX_UPSTREAM_KEEPALIVE_TIMEOUT, (
        f"the documented {transport} command line keeps idle connections {config.timeout_keep_alive:g}s, "
        f"nginx's upstream keepalive_timeout is {NGINX_UPSTREAM_KEEPALIVE_TIMEOUT:g}s"
    )
    assert "keepalive_timeout" not in docs.upstream(("127.0.0.1", 1)) + docs.upstream("/run/x/app.sock")


# -- what the app sees ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["127.0.0.1", CLIENT])
def test_client_address_scheme_and_host(backend: Any, nginx: Any, second_loopback: str, source: str) -> None:
    _, target = backend(echo_app)
    n = nginx(target)
    with client(n, source=source) as c:
        r = c.get("/some/path", params={"q": "1"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "REMOTE_ADDR": source,  # the client, not nginx
        "REMOTE_PORT": None,  # the documented headers carry no client port: none rather than nginx's own
        "wsgi.url_scheme": "http",
        "HTTPS": None,
        "HTTP_HOST": HOST,  # as the client sent it
        "SERVER_PORT": str(n.port),  # nginx's port, the one the client used
        "HTTP_X_FORWARDED_FOR": source,
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/some/path",
        "QUERY_STRING": "q=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }


def _url(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = request_uri(environ).encode()  # PEP 3333's URL reconstruction
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


url_app = validator(_url)


def test_the_app_rebuilds_the_url_the_client_used(backend: Any, nginx: Any) -> None:
    """PEP 3333's URL reconstruction (HTTP_HOST when present, else SERVER_NAME and SERVER_PORT) gives back the URL
    the client asked nginx for, port included: nginx listens on a port other than 80 here, and the client's Host
    header says so."""
    _, target = backend(url_app)
    n = nginx(target)
    with client(n, source="127.0.0.1", host=None) as c:
        r = c.get("/a/b", params={"q": "1"})
    assert r.request.headers["Host"] == f"127.0.0.1:{n.port}"
    assert r.text == f"http://127.0.0.1:{n.port}/a/b?q=1"


def test_forged_x_forwarded_headers_are_not_believed(backend: Any, nginx: Any, second_loopback: str) -> None:
    """nginx appends the real client to X-Forwarded-For and overwrites the other X-Forwarded-* headers; the right-most
    untrusted hop (the real client) wins over what the client wrote."""
    _, target = backend(echo_app)
    n = nginx(target)
    forged = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "4443",
    }
    with client(n) as c:
        env = c.get("/", headers=forged).json()
    assert env["HTTP_X_FORWARDED_FOR"] == f"6.6.6.6, {CLIENT}"
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTPS"], env["HTTP_HOST"], env["SERVER_PORT"]) == (
        CLIENT,
        "http",
        None,
        HOST,
        str(n.port),
    )


def test_forged_forwarded_header_is_not_believed(backend: Any, nginx: Any, second_loopback: str) -> None:
    """A client may also send an RFC 7239 ``Forwarded`` header. The documented nginx block neither sets nor clears
    it, so it reaches the server exactly as the client wrote it: no trusted proxy vouches for any of its hops."""
    _, target = backend(echo_app)
    n = nginx(target)
    with client(n) as c:
        env = c.get("/", headers={"Forwarded": "for=6.6.6.6;proto=https;host=evil.example"}).json()
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTPS"], env["HTTP_HOST"]) == (CLIENT, "http", None, HOST)


# -- streaming both ways -------------------------------------------------------------------------------------------

UPLOAD_SIZE = 10 * 1024 * 1024
FIRST_PIECE = 1024 * 1024


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_10mb_upload_streams_through(backend: Any, nginx: Any, framing: str) -> None:
    """The app starts reading before the client has sent more than the first megabyte (nginx does not buffer the
    body: ``proxy_request_buffering off``), and gets every byte."""
    upload = Upload()
    _, target = backend(upload.app)
    n = nginx(target)
    data = os.urandom(UPLOAD_SIZE)
    streamed: list[bool] = []

    def body() -> Iterator[bytes]:
        yield data[:FIRST_PIECE]
        streamed.append(upload.reading.wait(APP_WAIT))
        for i in range(FIRST_PIECE, UPLOAD_SIZE, 256 * 1024):
            yield data[i : i + 256 * 1024]

    headers = {"Content-Length": str(UPLOAD_SIZE)} if framing == "content-length" else {}
    with client(n, source="127.0.0.1") as c:
        r = c.post("/upload", content=body(), headers=headers)
    assert r.status_code == 200, r.text
    assert r.text == f"{UPLOAD_SIZE} {hashlib.sha256(data).hexdigest()}"
    assert streamed == [True], "the app saw no byte of the body until the client had sent all of it"


def test_streamed_response_arrives_while_the_app_produces_it(backend: Any, nginx: Any) -> None:
    stream = Stream()
    _, target = backend(stream.app)
    n = nginx(target)
    with client(n, source="127.0.0.1") as c, c.stream("GET", "/stream") as r:
        assert r.status_code == 200
        pieces = r.iter_raw()
        first = next(pieces)
        early = not stream.producing_last.is_set()
        stream.release.set()
        rest = b"".join(pieces)
    assert first == Stream.FIRST
    assert early, "the first chunk reached the client only after the app had produced the last one"
    assert first + rest == Stream.FIRST + b"".join(Stream.MIDDLE) + Stream.LAST


# -- upstream connections ------------------------------------------------------------------------------------------

SEQUENTIAL = 30


def test_upstream_keep_alive_reuses_one_connection(backend: Any, nginx: Any) -> None:
    app = Named("a")
    handle, target = backend(app.app)
    counter = ConnectionCounter(handle)
    n = nginx(target)
    with client(n, source="127.0.0.1") as c:
        bodies = [c.get(f"/r{i}").text for i in range(SEQUENTIAL)]
    assert bodies == [f"a /r{i}" for i in range(SEQUENTIAL)]
    assert counter.opened == 1, f"{SEQUENTIAL} sequential requests used {counter.opened} upstream connections"
    assert handle.call(lambda: handle.server.connections) == 1  # nginx keeps it open, idle


IDLE = 4


def _hold_idle_upstream_connections(n: Nginx, app: Named, count: int) -> None:
    """Make nginx open ``count`` upstream connections at once (the app waits for all of them), which it then keeps
    as idle keep-alive connections."""
    results: list[tuple[int, str]] = []

    def one() -> None:
        with client(n, source="127.0.0.1") as c:
            r = c.get("/gather")
            results.append((r.status_code, r.text))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(APP_WAIT + 5)
    assert results == [(200, f"{app.name} /gather")] * count


def test_graceful_stop_with_idle_upstream_connections_then_restart(
    backend: Any, nginx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """nginx holds idle keep-alive connections to the server and one request is in flight; a graceful stop closes
    the idle ones at once, finishes the one in flight; a new server on the same address then answers every request
    nginx sends, including those nginx first tries on the connections the old server closed."""
    old = Named("old", parties=IDLE)
    handle, target = backend(old.app, name="app")
    counter = ConnectionCounter(handle)
    n = nginx(target)
    _hold_idle_upstream_connections(n, old, IDLE)
    assert handle.call(lambda: handle.server.connections) == IDLE
    assert (counter.opened, counter.closed) == (IDLE, 0)

    slow: list[tuple[int, str]] = []

    def slow_request() -> None:
        with client(n, source="127.0.0.1") as c:
            r = c.get("/slow")
            slow.append((r.status_code, r.text))

    requester = threading.Thread(target=slow_request)
    requester.start()
    assert old.entered.wait(APP_WAIT)
    assert counter.opened == IDLE  # nginx sent it on one of its idle connections
    cut: list[int | None] = []
    stopper = threading.Thread(target=lambda: cut.append(handle.stop(timeout=5)))
    started = time.monotonic()
    stopper.start()
    idle_closed = counter.wait_closed(IDLE - 1)  # the idle ones: all but the connection of the request in flight
    old.release.set()
    requester.join(APP_WAIT + 5)
    stopper.join(15)
    took = time.monotonic() - started
    assert idle_closed, "the server did not close the idle upstream connections when it began to stop"
    assert slow == [(200, "old /slow")]
    assert cut == [0]
    assert took < 5, f"stop took {took:.1f}s: it waited its whole graceful timeout"
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]

    new = Named("new")
    backend(new.app, at=target)
    with client(n, source="127.0.0.1") as c:
        answers = [(r.status_code, r.text) for r in (c.get(f"/after{i}") for i in range(8))]
    assert answers == [(200, f"new /after{i}") for i in range(8)], n.error_log()[-2000:]


def test_graceful_stop_of_one_of_two_backends_under_traffic(backend: Any, nginx: Any) -> None:
    """Two servers behind the documented upstream block (its server line given twice); one stops gracefully while
    clients keep sending requests, so that some are in flight on it and some of its upstream connections are idle:
    none fails."""
    clients, before, after = 4, 40, 80
    a = Named("a", reach=before, delay=0.002)
    b = Named("b", delay=0.002)
    handle_a, target_a = backend(a.app, name="a")
    _, target_b = backend(b.app, name="b")
    n = nginx(target_a, target_b)
    statuses: list[int] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            with client(n, source="127.0.0.1") as c:
                for _ in range(1000):
                    if done.is_set():
                        return
                    statuses.append(c.get("/t").status_code)
        except BaseException as exc:
            errors.append(exc)

    runners = [threading.Thread(target=traffic) for _ in range(clients)]
    for t in runners:
        t.start()
    try:
        assert a.reached.wait(APP_WAIT), "backend a got no traffic"
        b.expect(after)
        cut = handle_a.stop(timeout=5)
        assert b.reached.wait(APP_WAIT), "backend b did not take over"
    finally:
        done.set()
        for t in runners:
            t.join(15)
    assert errors == []
    assert cut == 0
    failed = [s for s in statuses if s != 200]
    assert failed == [], f"{len(failed)} of {len(statuses)} requests failed; nginx said:\n{n.error_log()[-2000:]}"
