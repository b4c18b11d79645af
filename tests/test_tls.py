"""HTTPS: ``ssl_certfile`` / ``ssl_keyfile`` / ``ssl_ca_certs`` (``asyncwsgi.server.tls_context``), end to end with
certificates made here by ``trustme``, under both event loops.

Covers: HTTPS with httpx and with the stdlib ``ssl`` client; ``wsgi.url_scheme`` "https" and ``HTTPS`` "on"; ALPN
http/1.1; HTTP/1.1 keep-alive over TLS; a 5 MB upload and download; client certificates (none, or one from another
CA, is refused during the handshake and never reaches the app; one from the CA is served); a client that never
starts the handshake, or speaks plain HTTP, is dropped; bad certificate files give a one-line ``ConfigError``; and the
command line serving HTTPS.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest
import trustme

from asyncwsgi.config import Config
from asyncwsgi.errors import ConfigError

from .cli_helpers import ServerProcesses, server_processes

try:
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover - uvloop is a dependency on CPython/POSIX
    HAVE_UVLOOP = False
else:
    HAVE_UVLOOP = True

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop not installed"))]
#: The ``listening on`` line of the command line, whatever scheme it names.
LISTENING = re.compile(r"INFO listening on (\w+)://127\.0\.0\.1:(\d+)$")


# -- certificates --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: str  # the CA certificate (PEM): clients trust it; ssl_ca_certs verifies client certificates with it
    cert: str  # the server's certificate chain, for 127.0.0.1 and localhost
    key: str
    client_cert: str  # a client certificate issued by the same CA
    client_key: str
    stranger_cert: str  # a client certificate issued by another CA
    stranger_key: str
    garbage: str  # a file that is not PEM at all
    other_key: str  # a valid key that does not match ``cert``

    def server_options(self, **extra: Any) -> dict[str, Any]:
        return {"ssl_certfile": self.cert, "ssl_keyfile": self.key, **extra}

    def client_context(self, cert: str | None = None, key: str | None = None, **versions: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        for name, value in versions.items():
            setattr(ctx, name, value)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    for pem in server.cert_chain_pems:
        pem.write_to_path(str(d / "server.pem"), append=True)
    server.private_key_pem.write_to_path(str(d / "server.key"))
    client = ca.issue_cert("client@example.org")
    client.cert_chain_pems[0].write_to_path(str(d / "client.pem"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    stranger = trustme.CA().issue_cert("stranger@example.org")
    stranger.cert_chain_pems[0].write_to_path(str(d / "stranger.pem"))
    stranger.private_key_pem.write_to_path(str(d / "stranger.key"))
    (d / "garbage.pem").write_text("this is not a certificate\n")
    trustme.CA().issue_cert("other.example").private_key_pem.write_to_path(str(d / "other.key"))
    return Certs(
        ca=str(d / "ca.pem"),
        cert=str(d / "server.pem"),
        key=str(d / "server.key"),
        client_cert=str(d / "client.pem"),
        client_key=str(d / "client.key"),
        stranger_cert=str(d / "stranger.pem"),
        stranger_key=str(d / "stranger.key"),
        garbage=str(d / "garbage.pem"),
        other_key=str(d / "other.key"),
    )


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def procs() -> Iterator[ServerProcesses]:
    yield from server_processes()


def https_url(handle: Any) -> str:
    return f"https://{handle.host}:{handle.port}"


# -- apps ----------------------------------------------------------------------------------------------------------

ECHO_KEYS = ("wsgi.url_scheme", "HTTPS", "REMOTE_ADDR", "REMOTE_PORT", "SERVER_PORT", "SERVER_PROTOCOL", "PATH_INFO")
BIG = 5 * 1024 * 1024


def big_body() -> bytes:
    """5 MB that differ everywhere (a dropped or repeated piece changes the hash)."""
    return b"".join(hashlib.sha256(b"%d" % i).digest() * 64 for i in range(BIG // 2048))


class App:
    """``/upload`` answers the size and SHA-256 of the body; ``/download`` sends ``big_body()`` in 64 KiB chunks;
    anything else answers selected environ keys as JSON. Counts calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        self.download = big_body()
        self.app = validator(self._app)

    def _app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with self._lock:
            self.calls += 1
        path = environ["PATH_INFO"]
        if path == "/upload":
            digest = hashlib.sha256()
            size = 0
            while True:
                chunk = environ["wsgi.input"].read(65536)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
            body = f"{size} {digest.hexdigest()}".encode()
        elif path == "/download":
            data = self.download
            start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(data)))])
            return (data[i : i + 65536] for i in range(0, len(data), 65536))
        else:
            body = json.dumps({key: environ.get(key) for key in ECHO_KEYS}).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


# -- HTTPS ---------------------------------------------------------------------------------------------------------


def test_https_with_httpx(server: Any, certs: Certs, loop: str) -> None:
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options())
    assert handle.loop_name == loop
    with httpx.Client(verify=certs.client_context(), timeout=10) as c:
        r = c.get(https_url(handle) + "/env")
    assert (r.status_code, r.http_version) == (200, "HTTP/1.1")
    env = r.json()
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert (env["SERVER_PORT"], env["REMOTE_ADDR"], env["PATH_INFO"]) == (str(handle.port), "127.0.0.1", "/env")


def test_plain_http_is_not_served_on_the_tls_port(server: Any, certs: Certs, loop: str) -> None:
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options())
    with httpx.Client(timeout=5) as c, pytest.raises(httpx.TransportError):
        c.get(f"http://{handle.host}:{handle.port}/env")
    assert app.calls == 0
    with httpx.Client(verify=certs.client_context(), timeout=10) as c:
        assert c.get(https_url(handle) + "/env").json()["wsgi.url_scheme"] == "https"  # still serving


def test_stdlib_client_keep_alive_over_tls(server: Any, certs: Certs, loop: str) -> None:
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options())
    ctx = certs.client_context()
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection(handle.host, handle.port, context=ctx, timeout=10)
    try:
        envs = []
        for i in range(3):
            conn.request("GET", f"/r{i}")
            resp = conn.getresponse()
            assert (resp.status, resp.version, resp.getheader("Connection")) == (200, 11, None)
            envs.append(json.loads(resp.read()))
            if i == 0:
                sock = conn.sock
                assert isinstance(sock, ssl.SSLSocket)
                assert sock.selected_alpn_protocol() == "http/1.1"
                assert sock.version() in ("TLSv1.2", "TLSv1.3")
                local_port = sock.getsockname()[1]
            assert conn.sock is sock  # the same TLS connection: kept alive
    finally:
        conn.close()
    assert [e["PATH_INFO"] for e in envs] == ["/r0", "/r1", "/r2"]
    assert {e["REMOTE_PORT"] for e in envs} == {str(local_port)}
    assert {(e["wsgi.url_scheme"], e["HTTPS"]) for e in envs} == {("https", "on")}


def test_5mb_upload_and_download_over_tls(server: Any, certs: Certs, loop: str) -> None:
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options())
    upload = os.urandom(BIG)
    with httpx.Client(verify=certs.client_context(), timeout=20) as c:
        r = c.post(https_url(handle) + "/upload", content=upload)
        assert (r.status_code, r.text) == (200, f"{BIG} {hashlib.sha256(upload).hexdigest()}")
        with c.stream("GET", https_url(handle) + "/download") as r:
            assert r.status_code == 200
            digest = hashlib.sha256()
            size = 0
            for piece in r.iter_bytes():
                digest.update(piece)
                size += len(piece)
    assert (size, digest.hexdigest()) == (BIG, hashlib.sha256(app.download).hexdigest())
    assert app.calls == 2


def test_a_client_that_never_starts_the_handshake_is_dropped(server: Any, certs: Certs, loop: str) -> None:
    """The TLS handshake must end within ``timeout_request_header`` too (slow-client protection)."""
    handle = server(App().app, loop=loop, timeout_request_header=0.5, **certs.server_options())
    with socket.create_connection((handle.host, handle.port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            data = sock.recv(1)
        except ConnectionResetError:
            data = b""
    assert data == b""


# -- client certificates -------------------------------------------------------------------------------------------


def _handshake_and_request(handle: Any, ctx: ssl.SSLContext) -> bytes:
    """Handshake, send one request, and return what comes back until the server closes (an ``ssl.SSLError`` or
    ``OSError`` raised on the way propagates)."""
    with (
        socket.create_connection((handle.host, handle.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=handle.host) as tls,
    ):
        tls.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while len(data) < 1_000_000:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_client_without_certificate_is_refused_in_the_tls12_handshake(server: Any, certs: Certs, loop: str) -> None:
    """With TLS 1.2 the server asks for the client's certificate before its Finished message: the handshake itself
    fails. (The loops close the connection without sending the alert, so the client sees an EOF, not a named
    reason: only the failure is checked.)"""
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options(ssl_ca_certs=certs.ca))
    ctx = certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection((handle.host, handle.port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        ctx.wrap_socket(raw, server_hostname=handle.host)
    assert app.calls == 0


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_client_without_a_certificate_of_the_ca_is_refused(server: Any, certs: Certs, loop: str, who: str) -> None:
    """With TLS 1.3 the server checks the client's certificate after the client considers the handshake done: the
    connection ends (with an alert, or a bare close) instead of any response, and the request never reaches the
    app; a client with a proper certificate is served next."""
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options(ssl_ca_certs=certs.ca))
    if who == "no certificate":
        ctx = certs.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    else:
        ctx = certs.client_context(certs.stranger_cert, certs.stranger_key, minimum_version=ssl.TLSVersion.TLSv1_3)
    try:
        data = _handshake_and_request(handle, ctx)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        data = b""
    assert data == b"", "the server answered a client it should have refused"
    assert app.calls == 0
    good = _handshake_and_request(handle, certs.client_context(certs.client_cert, certs.client_key))
    assert good.startswith(b"HTTP/1.1 200 ")
    assert app.calls == 1


def test_client_with_a_certificate_from_the_ca_is_served(server: Any, certs: Certs, loop: str) -> None:
    app = App()
    handle = server(app.app, loop=loop, **certs.server_options(ssl_ca_certs=certs.ca))
    with httpx.Client(verify=certs.client_context(certs.client_cert, certs.client_key), timeout=10) as c:
        r1 = c.get(https_url(handle) + "/one")
        r2 = c.get(https_url(handle) + "/two")
    assert [r.status_code for r in (r1, r2)] == [200, 200]
    assert [r.json()["PATH_INFO"] for r in (r1, r2)] == ["/one", "/two"]
    assert r1.json()["HTTPS"] == "on"
    assert r1.json()["REMOTE_PORT"] == r2.json()["REMOTE_PORT"]  # one connection, kept alive
    assert app.calls == 2


# -- bad configuration ---------------------------------------------------------------------------------------------


def _bad_files(certs: Certs, case: str) -> tuple[dict[str, Any], str]:
    """The options of a bad-TLS-file case, and the path that is wrong."""
    missing = str(Path(certs.ca).parent / "missing.pem")
    directory = str(Path(certs.ca).parent)
    cases = {
        "missing certfile": ({"ssl_certfile": missing, "ssl_keyfile": certs.key}, missing),
        "missing keyfile": ({"ssl_certfile": certs.cert, "ssl_keyfile": missing}, missing),
        "missing ca": ({"ssl_certfile": certs.cert, "ssl_keyfile": certs.key, "ssl_ca_certs": missing}, missing),
        "certfile is a directory": ({"ssl_certfile": directory, "ssl_keyfile": certs.key}, directory),
        "certfile not PEM": ({"ssl_certfile": certs.garbage, "ssl_keyfile": certs.key}, certs.garbage),
        "key does not match": ({"ssl_certfile": certs.cert, "ssl_keyfile": certs.other_key}, certs.other_key),
        "ca not PEM": (
            {"ssl_certfile": certs.cert, "ssl_keyfile": certs.key, "ssl_ca_certs": certs.garbage},
            certs.garbage,
        ),
    }
    return cases[case]


BAD_CASES = [
    "missing certfile",
    "missing keyfile",
    "missing ca",
    "certfile is a directory",
    "certfile not PEM",
    "key does not match",
    "ca not PEM",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_tls_files_are_a_one_line_config_error_at_start(server: Any, certs: Certs, loop: str, case: str) -> None:
    options, _ = _bad_files(certs, case)
    Config(**options)  # the files are read when the server starts, not when the options are checked
    with pytest.raises(ConfigError) as info:
        server(App().app, loop=loop, **options)
    message = str(info.value)
    # An unreadable file is named with its option; a file that reads but is not a usable certificate or key is
    # reported as what OpenSSL said.
    assert message.startswith(("--ssl-", "cannot load the TLS certificate, key or CA file: ")), message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("case", ["missing certfile", "missing keyfile", "missing ca"])
def test_a_missing_tls_file_is_named_in_the_error(server: Any, certs: Certs, case: str) -> None:
    """Three files can be wrong; the one-line error should say which (as the --log-config and address errors do)."""
    options, wrong = _bad_files(certs, case)
    with pytest.raises(ConfigError) as info:
        server(App().app, loop="asyncio", **options)
    assert wrong in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_certfile": "cert.pem"}, "--ssl-certfile and --ssl-keyfile go together"),
        ({"ssl_keyfile": "key.pem"}, "--ssl-certfile and --ssl-keyfile go together"),
        ({"ssl_ca_certs": "ca.pem"}, "--ssl-ca-certs needs --ssl-certfile and --ssl-keyfile"),
    ],
)
def test_incomplete_tls_options_are_a_config_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**options)
    assert str(info.value) == message


# -- the command line ----------------------------------------------------------------------------------------------


def _serve_https(procs: ServerProcesses, certs: Certs, *extra: str) -> tuple[Any, str, int]:
    proc = procs.start(
        ["tests.apps.cli_targets:app", "--port", "0", "--ssl-certfile", certs.cert, "--ssl-keyfile", certs.key, *extra],
        ready=False,
    )
    match = proc.wait_for(LISTENING, timeout=20)
    return proc, match.group(1), int(match.group(2))


def test_cli_serves_https(procs: ServerProcesses, certs: Certs) -> None:
    proc, _, port = _serve_https(procs, certs)
    with httpx.Client(verify=certs.client_context(), timeout=10) as c:
        r1 = c.get(f"https://127.0.0.1:{port}/hello")
        r2 = c.get(f"https://localhost:{port}/again")  # the certificate names both
    assert (r1.status_code, r1.text) == (200, "cli_targets.app |/hello")
    assert (r2.status_code, r2.text) == (200, "cli_targets.app |/again")
    with httpx.Client(timeout=10) as c, pytest.raises(httpx.ConnectError):
        c.get(f"https://127.0.0.1:{port}/")  # a client that does not trust the CA refuses the certificate
    assert proc.stop(signal.SIGTERM) == 0


def test_cli_listening_line_names_https(procs: ServerProcesses, certs: Certs) -> None:
    """The ``listening on`` line is the address to give a client; with TLS that is an https:// URL."""
    proc, scheme, _ = _serve_https(procs, certs)
    assert scheme == "https", f"with TLS the server logged: {proc.wait_for(LISTENING).group(0)!r}"


def test_cli_client_certificates(procs: ServerProcesses, certs: Certs) -> None:
    _, _, port = _serve_https(procs, certs, "--ssl-ca-certs", certs.ca)
    with httpx.Client(verify=certs.client_context(certs.client_cert, certs.client_key), timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{port}/mtls")
    assert (r.status_code, r.text) == (200, "cli_targets.app |/mtls")
    with httpx.Client(verify=certs.client_context(), timeout=10) as c, pytest.raises(httpx.TransportError):
        c.get(f"https://127.0.0.1:{port}/mtls")


@pytest.mark.parametrize(
    ("args", "status", "line"),
    [
        (["--ssl-certfile", "{missing}", "--ssl-keyfile", "{key}"], 1, "--ssl-certfile {missing}: "),
        (["--ssl-certfile", "{cert}"], 2, "--ssl-certfile and --ssl-keyfile go together"),
    ],
)
def test_cli_bad_tls_options_are_one_line_and_a_failure(
    procs: ServerProcesses, certs: Certs, args: list[str], status: int, line: str
) -> None:
    missing = str(Path(certs.ca).parent / "missing.pem")
    argv = [a.format(missing=missing, key=certs.key, cert=certs.cert) for a in args]
    proc = procs.run(["tests.apps.cli_targets:app", "--port", "0", *argv])
    assert proc.proc.returncode == status
    lines = [ln for ln in proc.lines if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"asyncwsgi: error: {line.format(missing=missing)}")
