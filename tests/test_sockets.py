"""Listening sockets: unix socket permissions (--uds-mode) and systemd socket activation (LISTEN_FDS)."""

from __future__ import annotations

import os
import selectors
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from asyncwsgi.config import Config
from asyncwsgi.errors import ConfigError
from asyncwsgi.sockets import bind_sockets, systemd_fds

REPO = Path(__file__).resolve().parent.parent


def test_uds_mode_sets_the_socket_permissions() -> None:
    with tempfile.TemporaryDirectory(prefix="aw-") as d:
        path = os.path.join(d, "s.sock")
        ((_, sock),) = bind_sockets(Config(uds=path, uds_mode="600"))
        try:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        finally:
            sock.close()


@pytest.mark.parametrize("mode", ["999", "rw", "1777"])
def test_bad_uds_mode_is_a_config_error(mode: str) -> None:
    with pytest.raises(ConfigError, match="uds-mode"):
        Config(uds="/tmp/x.sock", uds_mode=mode)


def test_systemd_fds_only_for_this_process() -> None:
    me = str(os.getpid())
    assert systemd_fds({"LISTEN_FDS": "2", "LISTEN_PID": me}) == [3, 4]
    assert systemd_fds({"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1)}) == []  # meant for another process
    assert systemd_fds({"LISTEN_FDS": "x", "LISTEN_PID": me}) == []
    assert systemd_fds({}) == []


def test_socket_activation_serves_the_passed_socket() -> None:
    """As systemd does it: the listening socket is fd 3, LISTEN_FDS=1 and LISTEN_PID is the server's own pid."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"',
            sys.executable,
            "-m",
            "asyncwsgi",
            "serve",
            "tests.apps.cli_targets:app",
            "--no-access-log",
        ],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(3,),
        preexec_fn=lambda: os.dup2(fd, 3),
    )
    listener.close()
    try:
        assert proc.stderr is not None
        log = _read_until(proc.stderr, b"listening on", 10.0)
        assert f"http://127.0.0.1:{port}".encode() in log
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0


def _read_until(stream, marker: bytes, timeout: float) -> bytes:  # type: ignore[no-untyped-def]
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while marker not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no {marker!r} within {timeout}s: {data!r}")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the server exited: {data!r}")
            data += chunk
    return data
