"""The command line: ``asyncwsgi serve APP [options]``.

In-process (``asyncwsgi.cli.main(argv)`` with ``capsys``): every way of naming a broken application (missing
module, missing attribute, not callable, a module or factory that raises, a bad target spelling), bad option values,
an address already in use, ``--help`` and ``--version``.

In subprocesses (``python -m asyncwsgi`` and the ``asyncwsgi`` console script): serving the demo app, ``--root-path``,
``--uds``, ``-b`` spellings (unix, IPv4, IPv6, ``fd://``), ``--fd``, ``--factory``, the import path (current
directory, ``--app-dir``), the access log (and what a client can put into it), an app calling ``sys.exit()``, startup
errors in a real process, and SIGTERM / SIGINT handling: in-flight requests (and request bodies still arriving)
finish, idle keep-alive connections close at once, requests queued for a thread are served but pipelined ones are
not, ``--timeout-graceful`` cuts what is left, a second signal cuts at once, a signal right after the server says it
listens is already graceful.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import importlib.metadata
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import requests

import asyncwsgi
import asyncwsgi.runner
from asyncwsgi.cli import main

from .apps.cli_targets import BLOCKING_BODY, RELEASE_FD_ENV
from .cli_helpers import CONSOLE_SCRIPT, REPO_ROOT, ServerProcesses, server_processes
from .helpers import RawClient

LOGGERS = ("asyncwsgi", "asyncwsgi.error", "asyncwsgi.access")


# -- fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def restore_process_state() -> Iterator[None]:
    """``main`` configures the asyncwsgi loggers and extends ``sys.path``; undo both after each test, and forget the
    throwaway modules a test imported."""
    saved = {}
    for name in LOGGERS:
        log = logging.getLogger(name)
        saved[name] = (log.handlers[:], log.level, log.propagate)
    path = sys.path[:]
    modules = set(sys.modules)
    try:
        yield
    finally:
        for name, (handlers, level, propagate) in saved.items():
            log = logging.getLogger(name)
            log.handlers[:] = handlers
            log.setLevel(level)
            log.propagate = propagate
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if name.startswith("cli_tmp_"):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def allocator_calls(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """In-process ``main`` must not retune this test process's malloc: ``tune_allocator`` calls are counted instead
    (its effect is tested in a subprocess)."""
    calls: list[None] = []
    monkeypatch.setattr(asyncwsgi.runner, "tune_allocator", lambda: calls.append(None) or True)
    return calls


@pytest.fixture
def procs() -> Iterator[ServerProcesses]:
    yield from server_processes()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix socket paths (pytest's tmp_path can exceed the 107-byte limit)."""
    with tempfile.TemporaryDirectory(prefix="aw-") as d:
        yield Path(d)


@pytest.fixture
def release_pipe() -> Iterator[tuple[int, int]]:
    """(read end, write end): the read end is passed to the server for ``blocking_app``; writing b"r" releases one
    request."""
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def tmp_module(tmp_path: Path, source: str) -> str:
    """Write a uniquely named module into ``tmp_path``; return its name."""
    name = f"cli_tmp_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(source)
    return name


def assert_one_line_error(err: str, *fragments: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("asyncwsgi: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# == in process: naming the application ===============================================================================


@pytest.mark.parametrize(
    ("target", "missing"),
    [
        ("cli_no_such_module_3f1a:app", "cli_no_such_module_3f1a"),
        ("cli_no_such_module_3f1a", "cli_no_such_module_3f1a"),
        ("tests.apps.no_such_module_3f1a:app", "tests.apps.no_such_module_3f1a"),
        ("cli_no_such_pkg_3f1a.sub.mod:app", "cli_no_such_pkg_3f1a"),
    ],
)
def test_missing_module_is_one_line(capsys, target, missing):
    rc, out, err = run_main(capsys, "serve", target)
    assert rc != 0
    assert out == ""
    assert_one_line_error(err, repr(missing))


@pytest.mark.parametrize(
    ("target", "attr"),
    [
        ("tests.apps.cli_targets:no_such_attr", "no_such_attr"),
        ("tests.apps.cli_targets:namespace.no_such_attr", "namespace.no_such_attr"),
        ("tests.apps.cli_targets:no_such_attr.app", "no_such_attr.app"),
    ],
)
def test_missing_attribute_is_one_line(capsys, target, attr):
    rc, _, err = run_main(capsys, "serve", target)
    assert rc != 0
    assert_one_line_error(err, "'tests.apps.cli_targets'", repr(attr))


def test_module_without_application_or_app_is_one_line(capsys, tmp_path):
    name = tmp_module(tmp_path, "def handler(environ, start_response):\n    return []\n")
    rc, _, err = run_main(capsys, "serve", name, "--app-dir", str(tmp_path))
    assert rc != 0
    assert_one_line_error(err, repr(name), "'application'", "'app'")


def test_target_not_callable_is_one_line(capsys):
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:NOT_CALLABLE")
    assert rc != 0
    assert_one_line_error(err, "NOT_CALLABLE", "not callable", "int")


def test_factory_not_callable_is_one_line(capsys):
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:NOT_CALLABLE", "--factory")
    assert rc != 0
    assert_one_line_error(err, "NOT_CALLABLE", "not callable")


def test_factory_returning_a_non_callable_is_one_line(capsys):
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:factory_returning_str", "--factory")
    assert rc != 0
    assert_one_line_error(err, "factory_returning_str", "not callable", "str")


def test_factory_that_raises_shows_its_traceback(capsys):
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:failing_factory", "--factory")
    assert rc != 0
    lines = err.splitlines()
    assert lines[0].startswith("asyncwsgi: error: ")
    assert "failing_factory" in lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    assert any("cli_targets.py" in line and "failing_factory" in line for line in lines)
    assert lines[-1] == "LookupError: factory cannot find its settings: 7d41c2"


def test_module_raising_at_import_shows_its_traceback(capsys):
    rc, out, err = run_main(capsys, "serve", "tests.apps.broken_import:app")
    assert rc != 0
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("asyncwsgi: error: ")
    assert "'tests.apps.broken_import'" in lines[0]
    assert lines[1] == "Traceback (most recent call last):"
    # The app's own frames, down to the line that raised, and the exception text last.
    assert any("broken_import.py" in line and "<module>" in line for line in lines)
    assert any("broken_import.py" in line and "_load_settings" in line for line in lines)
    assert lines[-1] == "RuntimeError: broken_import exploded while loading settings: 5f0c9a"
    assert "tests.apps.broken_import" not in sys.modules


def test_module_whose_own_import_fails_is_the_apps_bug(capsys, tmp_path):
    """A ModuleNotFoundError for another name than the target is a bug in the app: show its traceback."""
    dep = f"cli_tmp_missing_dependency_{uuid.uuid4().hex[:8]}"
    name = tmp_module(tmp_path, f"import json\nimport {dep}\n\napp = None\n")
    rc, _, err = run_main(capsys, "serve", f"{name}:app", "--app-dir", str(tmp_path))
    assert rc != 0
    lines = err.splitlines()
    assert lines[0].startswith("asyncwsgi: error: ")
    assert repr(name) in lines[0]
    assert dep not in lines[0]  # the target module was found: it is not reported as missing
    assert "Traceback (most recent call last):" in lines
    assert any(f"{name}.py" in line for line in lines)
    assert lines[-1] == f"ModuleNotFoundError: No module named '{dep}'"


def test_package_whose_init_imports_a_missing_submodule_is_the_apps_bug(capsys, tmp_path):
    """``pkg/__init__.py`` importing ``pkg.gone``: the name is a sibling of the target, not the target or a parent."""
    pkg = f"cli_tmp_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text(f"from {pkg} import gone\n")
    (tmp_path / pkg / "wsgi.py").write_text("def app(environ, start_response):\n    return []\n")
    rc, _, err = run_main(capsys, "serve", f"{pkg}.wsgi:app", "--app-dir", str(tmp_path))
    assert rc != 0
    lines = err.splitlines()
    assert "Traceback (most recent call last):" in lines, err
    assert lines[-1].startswith("ImportError: cannot import name 'gone'") or lines[-1] == (
        f"ModuleNotFoundError: No module named '{pkg}.gone'"
    )


def test_module_with_a_syntax_error_shows_its_traceback(capsys, tmp_path):
    name = tmp_module(tmp_path, "def app(environ, start_response)\n    return []\n")
    rc, _, err = run_main(capsys, "serve", f"{name}:app", "--app-dir", str(tmp_path))
    assert rc != 0
    lines = err.splitlines()
    assert repr(name) in lines[0]
    assert "Traceback (most recent call last):" in lines
    assert lines[-1].startswith("SyntaxError: ")
    assert f"{name}.py" in err


@pytest.mark.parametrize("target", [":app", "tests.apps.cli_targets:", ":", ""])
def test_invalid_target_syntax_is_one_line(capsys, target):
    rc, _, err = run_main(capsys, "serve", target)
    assert rc != 0
    assert_one_line_error(err, "invalid application", repr(target), "module:attribute")


# == in process: options ==============================================================================================


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535, not 70000"),
        (["--port", "-1"], "--port must be between 0 and 65535, not -1"),
        (["--threads", "0"], "--threads must be at least 1, not 0"),
        (["--backlog", "0"], "--backlog must be at least 1, not 0"),
        (["--timeout-graceful", "-1"], "--timeout-graceful must not be negative"),
        (["--root-path", "app"], "--root-path must start with '/'"),
        (["--root-path", "/app/"], "--root-path must start with '/' and not end with one"),
    ],
)
def test_bad_option_value_is_one_line_exit_2(capsys, options, message):
    rc, out, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", *options)
    assert rc == 2
    assert out == ""
    assert_one_line_error(err, message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--loop", "nope"], "argument --loop: invalid choice: 'nope'"),
        (["--port", "http"], "argument --port: invalid int value: 'http'"),
        (["--threads", "many"], "argument --threads: invalid int value: 'many'"),
        (["--timeout-keep-alive", "soon"], "argument --timeout-keep-alive: invalid float value: 'soon'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_unparsable_option_is_a_usage_error_exit_2(capsys, options, message):
    rc, out, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", *options)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("usage: asyncwsgi ")
    assert re.match(r"asyncwsgi( serve)?: error: ", lines[-1]), lines[-1]
    assert message in lines[-1]
    assert "Traceback" not in err


def test_missing_app_argument_is_a_usage_error(capsys):
    rc, _, err = run_main(capsys, "serve")
    assert rc == 2
    assert err.splitlines()[-1] == "asyncwsgi serve: error: the following arguments are required: APP"


def test_no_command_prints_help_and_exits_2(capsys):
    rc, out, err = run_main(capsys)
    assert rc == 2
    assert out == ""
    assert err.startswith("usage: asyncwsgi ")
    assert "serve" in err


def test_port_already_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc, out, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--port", str(port))
    assert rc != 0
    assert out == ""
    assert_one_line_error(err, f"127.0.0.1:{port}", "address already in use")


def test_bind_already_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "-b", f"127.0.0.1:{port}")
    assert rc != 0
    assert_one_line_error(err, f"127.0.0.1:{port}", "address already in use")


def test_unix_socket_with_a_live_server_is_one_line(capsys, short_tmp):
    path = str(short_tmp / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen(1)
        rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--uds", path)
        assert os.path.exists(path)  # a live server's socket is never removed
    assert rc != 0
    assert_one_line_error(err, path, "another server is listening there")


def test_unix_socket_path_taken_by_a_regular_file_is_one_line_and_the_file_kept(capsys, short_tmp):
    path = short_tmp / "not-a-socket"
    path.write_bytes(b"precious data")
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--uds", str(path))
    assert rc != 0
    assert_one_line_error(err, str(path))
    assert path.read_bytes() == b"precious data"  # only stale *sockets* may be removed


def test_fd_that_is_not_a_listening_socket_is_one_line_and_left_open(capsys):
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        fd = unlistened.fileno()
        rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--fd", str(fd))
        assert rc != 0
        assert_one_line_error(err, f"fd://{fd}", "not a listening stream socket")
        assert unlistened.getsockname()[0] == "127.0.0.1"  # still ours, still open


def test_fd_that_is_not_a_socket_is_one_line(capsys, tmp_path):
    with open(tmp_path / "plain.txt", "wb") as f:
        rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--fd", str(f.fileno()))
        assert rc != 0
        assert_one_line_error(err, f"fd://{f.fileno()}")
        f.write(b"still open")  # the server did not close our file


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:http", "[::1:80", "unix:", "fd://three"])
def test_bad_bind_address_is_one_line(capsys, address):
    rc, _, err = run_main(capsys, "serve", "tests.apps.cli_targets:app", "-b", address)
    assert rc != 0
    assert_one_line_error(err, repr(address))


# == in process: --help and --version =================================================================================

#: Flags the table must have whatever else is added: checks that the README is parsed at all.
CORE_FLAGS = ["--host", "--port", "--uds", "--fd", "-b", "--bind", "--factory", "--root-path", "--no-access-log"]


def _readme_flags() -> list[str]:
    """The flags in the README's option table (first column of rows that start with a flag)."""
    flags = []
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `-"):
            first_column = line.split("|")[1]
            flags += re.findall(r"`([^`]+)`", first_column)
    return flags


def test_help_exits_0(capsys):
    rc, out, err = run_main(capsys, "--help")
    assert rc == 0
    assert err == ""
    assert out.startswith("usage: asyncwsgi ")
    assert re.search(r"^\s+serve\s+serve a WSGI application$", out, re.M)
    assert "--version" in out


def test_serve_help_lists_every_option(capsys):
    rc, out, err = run_main(capsys, "serve", "--help")
    assert rc == 0
    assert err == ""
    assert out.startswith("usage: asyncwsgi serve ")
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", out)) - {"-h", "--help"}
    documented = set(_readme_flags())
    assert set(CORE_FLAGS) <= documented
    assert sorted(documented - listed) == []  # documented but not accepted
    negations = {"--no-" + flag[2:] for flag in documented}  # --no-factory goes with a documented --factory
    assert sorted(listed - documented - negations) == []  # accepted but not documented
    assert "APP" in out


@pytest.mark.parametrize("console_script", [False, True], ids=["python-m", "console-script"])
def test_version_and_usage_in_a_real_process(console_script):
    launcher = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "asyncwsgi"]
    version = subprocess.run([*launcher, "--version"], capture_output=True, text=True, timeout=20, check=False)
    assert (version.returncode, version.stdout, version.stderr) == (0, f"asyncwsgi {asyncwsgi.__version__}\n", "")
    no_app = subprocess.run([*launcher, "serve"], capture_output=True, text=True, timeout=20, check=False)
    assert no_app.returncode == 2
    assert no_app.stdout == ""
    assert no_app.stderr.splitlines()[-1] == "asyncwsgi serve: error: the following arguments are required: APP"


def test_version(capsys):
    rc, out, err = run_main(capsys, "--version")
    assert rc == 0
    assert err == ""
    assert out == f"asyncwsgi {asyncwsgi.__version__}\n"
    assert asyncwsgi.__version__ == importlib.metadata.version("asyncwsgi")


# == subprocesses: serving ============================================================================================


def get(url: str, **kwargs) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(url, **kwargs)


@pytest.mark.parametrize("console_script", [False, True], ids=["python-m", "console-script"])
def test_serves_the_demo_app(procs, console_script):
    proc = procs.start(["asyncwsgi.demo:app", "--port", "0"], console_script=console_script)
    assert proc.addresses == [("127.0.0.1", proc.port)]
    assert proc.port != 0
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["server"] == "asyncwsgi"
        assert int(page.headers["content-length"]) == len(page.content)
        assert "<h1>asyncwsgi is serving</h1>" in page.text
        assert "<p>GET <code>/</code> over HTTP/1.1 from 127.0.0.1</p>" in page.text
        assert '<form method="post" action="/echo">' in page.text

        form = {"message": "hello world & more", "lang": "fr-é"}
        echoed = client.post("/echo", data=form)
        body = urlencode(form)
        assert echoed.status_code == 200
        assert "<p>POST <code>/echo</code> over HTTP/1.1 from 127.0.0.1</p>" in echoed.text
        assert f"<h2>Request body ({len(body)} bytes)</h2><pre>{html.escape(body)}</pre>" in echoed.text
    assert proc.stop() == 0


def test_root_path_is_script_name(procs):
    proc = procs.start(["asyncwsgi.demo:app", "--port", "0", "--root-path", "/app"])
    page = get(f"{proc.url}/app/hello")
    assert page.status_code == 200
    assert "<p>GET <code>/app/hello</code> over HTTP/1.1" in page.text
    assert '<form method="post" action="/app/echo">' in page.text
    assert "<tr><th>SCRIPT_NAME</th><td>/app</td></tr>" in page.text
    assert "<tr><th>PATH_INFO</th><td>/hello</td></tr>" in page.text
    with requests.post(f"{proc.url}/app/echo", data={"message": "mounted"}, timeout=10) as echoed:
        assert echoed.status_code == 200
        assert "<pre>message=mounted</pre>" in echoed.text
        assert "<tr><th>PATH_INFO</th><td>/echo</td></tr>" in echoed.text
    assert proc.stop() == 0


def test_uds(procs, short_tmp):
    path = str(short_tmp / "srv.sock")
    proc = procs.start(["asyncwsgi.demo:app", "--uds", path])
    assert proc.addresses == [path]
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url="http://localhost", timeout=10) as client:
        page = client.get("/over-unix")
        assert page.status_code == 200
        assert "<p>GET <code>/over-unix</code> over HTTP/1.1 from a local socket</p>" in page.text
        echoed = client.post("/echo", content=b"raw=1", headers={"Content-Type": "text/plain"})
        assert "<h2>Request body (5 bytes)</h2><pre>raw=1</pre>" in echoed.text
    assert proc.stop() == 0
    assert not os.path.exists(path)  # the socket file is removed on shutdown


def test_uds_with_raw_socket_and_stale_socket_file(procs, short_tmp):
    """A socket file left behind by a dead server is replaced; requests work over a plain AF_UNIX socket."""
    path = str(short_tmp / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    proc = procs.start(["tests.apps.cli_targets:app", "--uds", path])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        for _ in range(100):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"cli_targets.app |/raw"
    assert proc.stop() == 0


def test_bind_spellings_listen_on_several(procs, short_tmp):
    path = str(short_tmp / "bind.sock")
    proc = procs.start(["tests.apps.cli_targets:app", "-b", f"unix:{path}", "-b", "127.0.0.1:0"], listeners=2)
    assert proc.addresses[0] == path
    assert proc.addresses[1][0] == "127.0.0.1"
    assert get(f"{proc.url}/tcp").text == "cli_targets.app |/tcp"
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as client:
        assert client.get("http://localhost/unix").text == "cli_targets.app |/unix"
    assert proc.stop() == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize("spelling", ["--fd", "-b"])
def test_inherited_fd(procs, spelling):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        fd = sock.fileno()
        args = ["--fd", str(fd)] if spelling == "--fd" else ["-b", f"fd://{fd}"]
        proc = procs.start(["tests.apps.cli_targets:app", *args], pass_fds=[fd])
    assert proc.port == port  # our socket is closed here: only the server's copy listens
    assert get(f"{proc.url}/inherited").text == "cli_targets.app |/inherited"
    assert proc.stop() == 0


def test_inherited_unix_socket_fd_is_served_and_left_in_place(procs, short_tmp):
    path = str(short_tmp / "inherited.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen(16)
        fd = sock.fileno()
        proc = procs.start(["tests.apps.cli_targets:app", "-b", f"fd://{fd}"], pass_fds=[fd])
    assert proc.addresses == [path]
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as client:
        assert client.get("http://localhost/fd").text == "cli_targets.app |/fd"
    assert proc.stop() == 0
    assert os.path.exists(path)  # the server did not create this socket file: not its to remove
    os.unlink(path)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_bind_ipv6_loopback(procs):
    proc = procs.start(["asyncwsgi.demo:app", "-b", "[::1]:0"])
    assert proc.addresses[0][0] == "[::1]"
    page = get(f"{proc.url}/v6")
    assert page.status_code == 200
    assert "<p>GET <code>/v6</code> over HTTP/1.1 from ::1</p>" in page.text
    assert proc.stop() == 0


def test_factory(procs):
    proc = procs.start(["tests.apps.cli_targets:create_app", "--factory", "--port", "0"])
    assert get(f"{proc.url}/made").text == "made by create_app |/made"
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("tests.apps.cli_targets", "cli_targets.application"),
        ("tests.apps.cli_targets:app", "cli_targets.app"),
        ("tests.apps.cli_targets:namespace.app", "cli_targets.namespace.app"),
    ],
)
def test_target_spellings(procs, target, text):
    proc = procs.start([target, "--port", "0"])
    assert get(f"{proc.url}/x").text == f"{text} |/x"
    assert proc.stop() == 0


MYAPP = """
def application(environ, start_response):
    body = {text!r}.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_current_directory_is_on_the_import_path(procs, tmp_path):
    (tmp_path / "myapp.py").write_text(MYAPP.format(text="myapp from the current directory"))
    # The console script: ``python -m`` would put the current directory on sys.path by itself.
    proc = procs.start(["myapp", "--port", "0"], console_script=True, cwd=tmp_path)
    assert get(f"{proc.url}/").text == "myapp from the current directory"
    assert proc.stop() == 0


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_app_dir(procs, tmp_path, relative):
    code = tmp_path / "code"
    run_in = tmp_path / "run"
    code.mkdir()
    run_in.mkdir()
    (code / "otherapp.py").write_text(MYAPP.format(text="otherapp from --app-dir"))
    app_dir = os.path.join("..", "code") if relative else str(code)
    proc = procs.start(["otherapp:application", "--app-dir", app_dir, "--port", "0"], console_script=True, cwd=run_in)
    assert get(f"{proc.url}/").text == "otherapp from --app-dir"
    assert proc.stop() == 0


def test_app_dir_replaces_the_current_directory(procs, tmp_path):
    run_in = tmp_path / "run"
    empty = tmp_path / "empty"
    run_in.mkdir()
    empty.mkdir()
    (run_in / "myapp.py").write_text(MYAPP.format(text="must not be found"))
    proc = procs.run(["myapp", "--app-dir", str(empty), "--port", "0"], console_script=True, cwd=run_in)
    assert proc.proc.returncode != 0
    assert_one_line_error(proc.stderr, "'myapp'")


# Apache's combined format: host ident user [time] "request line" status bytes "referer" "user agent"
ACCESS_RE = (
    r'INFO 127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /logged\?q=1 HTTP/1\.1" 200 (\d+) '
    r'"-" "access-test/1\.0"$'
)


def test_access_log_on_by_default(procs):
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0"])
    resp = get(f"{proc.url}/logged?q=1", headers={"User-Agent": "access-test/1.0"})
    assert resp.status_code == 200
    m = proc.wait_for(ACCESS_RE)
    assert int(m.group(1)) == len(resp.content)
    assert proc.stop() == 0
    assert proc.count(r'"GET /logged') == 1


def test_access_log_fields_from_the_client_cannot_forge_the_line(procs):
    """The quoted fields (request line, Referer, User-Agent) come from the client: a '"' in them must be escaped
    (as Apache and nginx do), or a client can write fields of its choosing into the log line (CWE-117)."""
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0"])
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(
            b'GET /q"uote HTTP/1.1\r\nHost: test\r\nReferer: http://r/"x\r\n'
            b'User-Agent: agent" 500 1 0.1ms "forged\r\nConnection: close\r\n\r\n'
        )
        assert client.read_response().status == 200
    finally:
        client.close()
    line = proc.wait_for(r'"GET /q').string
    quoted = r'"((?:[^"\\]|\\.)*)"'
    m = re.search(rf"INFO 127\.0\.0\.1 - - \[[^]]+\] {quoted} (\d{{3}}) (\d+) {quoted} {quoted}$", line)
    assert m is not None, f"access log line cannot be parsed unambiguously: {line}"
    assert m.group(2) == "200"
    assert "agent" in m.group(5)
    assert "forged" in m.group(5)
    assert proc.stop() == 0


def test_no_access_log(procs):
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0", "--no-access-log"])
    resp = get(f"{proc.url}/logged?q=1", headers={"User-Agent": "access-test/1.0"})
    assert resp.status_code == 200
    assert proc.stop() == 0
    assert proc.count(r"INFO shutdown complete$") == 1  # the log itself works...
    assert proc.count(r'"GET /logged') == 0  # ...but no access line


def test_app_calling_sys_exit_gets_a_500_and_the_server_goes_on(procs):
    """SystemExit raised by the app inside a request is the app's error like any other: a 500 response (the head was
    not sent yet), not a request left hanging, and not the end of the server (PEP 3333: the server handles app
    errors; it is not the app's process to exit)."""
    proc = procs.start(["tests.apps.cli_targets:exit_app", "--port", "0"])
    with httpx.Client(base_url=proc.url, timeout=5) as client:
        try:
            crashed = client.get("/exit")
        except httpx.ReadTimeout:
            pytest.fail(f"no response within 5 s to a request whose app raised SystemExit; log:\n{proc.stderr}")
        assert crashed.status_code == 500
        assert client.get("/after").text == "alive"
    assert proc.proc.poll() is None
    assert proc.stop() == 0


# == subprocesses: startup errors =====================================================================================


@pytest.mark.parametrize("console_script", [False, True], ids=["python-m", "console-script"])
def test_startup_error_in_a_real_process_is_one_line(procs, console_script):
    proc = procs.run(["cli_no_such_module_3f1a:app", "--port", "0"], console_script=console_script)
    assert proc.proc.returncode != 0
    assert_one_line_error(proc.stderr, "'cli_no_such_module_3f1a'")


def test_import_error_in_a_real_process_shows_the_traceback(procs):
    proc = procs.run(["tests.apps.broken_import:app", "--port", "0"], console_script=True)
    assert proc.proc.returncode != 0
    lines = proc.lines
    assert "'tests.apps.broken_import'" in lines[0]
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "RuntimeError: broken_import exploded while loading settings: 5f0c9a"


def test_port_in_use_in_a_real_process_is_one_line(procs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = procs.run(["tests.apps.cli_targets:app", "--port", str(port)])
    assert proc.proc.returncode != 0
    assert_one_line_error(proc.stderr, f"127.0.0.1:{port}", "address already in use")


# == subprocesses: signals ============================================================================================


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def keep_alive_client(port: int) -> RawClient:
    """A connection that has completed one request and is now idle (keep-alive). The server closes idle connections
    in the same step as it closes its listeners and marks busy connections as closing, so seeing this one closed
    tells a test that the shutdown has really begun (the "received SIG..." log line comes before it)."""
    client = RawClient("127.0.0.1", port, timeout=10)
    client.send(b"GET /barrier HTTP/1.1\r\nHost: test\r\n\r\n")
    resp = client.read_response()
    assert resp.status == 200
    assert resp.header("Connection") is None
    return client


def start_blocking(procs: ServerProcesses, release_fd: int, *options: str):
    """A server of ``blocking_app`` (path /barrier answers at once)."""
    return procs.start(
        ["tests.apps.cli_targets:blocking_app", "--port", "0", "--timeout-keep-alive", "30", *options],
        env={RELEASE_FD_ENV: str(release_fd)},
        pass_fds=[release_fd],
    )


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_lets_the_request_in_flight_finish(procs, release_pipe, sig, loop):
    r, w = release_pipe
    proc = start_blocking(procs, r, "--loop", loop)
    proc.wait_for(r"INFO loop (uvloop|asyncio), " if loop == "auto" else rf"INFO loop {loop}, ")
    idle = keep_alive_client(proc.port)
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"app: in flight /slow$")
        proc.send_signal(sig)
        proc.wait_for(rf"INFO received {sig.name}: shutting down gracefully")
        assert idle.is_closed(5)  # idle keep-alive connections are closed at once
        assert_refused(proc.port)
        assert proc.proc.poll() is None  # still waiting for the request in flight
        os.write(w, b"r")
        resp = client.read_response()
        assert resp.status == 200
        assert resp.body == BLOCKING_BODY
        assert resp.header("Connection") == "close"
        assert client.is_closed(5)
    finally:
        client.close()
        idle.close()
    assert proc.wait(10) == 0
    assert proc.count(r"INFO shutdown complete$") == 1


def test_signal_lets_an_upload_in_flight_finish(procs):
    """The request in flight is still receiving its body when the signal comes: the rest of the body must still
    be read, or the app waits for it until the graceful timeout cuts the request."""
    data = random.Random(4).randbytes(100_000)
    options = ["--port", "0", "--timeout-graceful", "3", "--timeout-keep-alive", "30"]
    proc = procs.start(["tests.apps.cli_targets:upload_app", *options])
    idle = keep_alive_client(proc.port)
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(data) + data[:50_000])
        proc.wait_for(r"app: reading /upload$")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"INFO received SIGTERM: shutting down gracefully")
        assert idle.is_closed(5)  # the shutdown has begun
        client.send(data[50_000:])
        try:
            resp = client.read_response("POST")
        except (http.client.HTTPException, ConnectionError) as exc:
            pytest.fail(f"the upload in flight got no response ({exc!r}); server log:\n{proc.stderr}")
        assert resp.status == 200
        assert resp.body == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
        assert resp.header("Connection") == "close"
    finally:
        client.close()
        idle.close()
    assert proc.wait(10) == 0


def test_shutdown_serves_requests_queued_for_a_thread_but_not_pipelined_ones(procs, release_pipe):
    """With one worker thread: A is in flight with a pipelined A2 behind it, B waits for the thread. On SIGTERM,
    A and B are answered (both were handed to the app's queue), A2 never is (its connection closes after A)."""
    r, w = release_pipe
    proc = start_blocking(procs, r, "--threads", "1")
    idle = keep_alive_client(proc.port)
    a = RawClient("127.0.0.1", proc.port, timeout=10)
    b = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        a.send(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\nGET /a2 HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"app: in flight /a$")
        b.send(b"GET /b HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"1 request\(s\) waiting for a thread")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"INFO received SIGTERM: shutting down gracefully")
        assert idle.is_closed(5)  # the shutdown has begun
        os.write(w, b"r")
        first = a.read_response()
        assert (first.status, first.body, first.header("Connection")) == (200, BLOCKING_BODY, "close")
        assert a.is_closed(5)
        proc.wait_for(r"app: in flight /b$")
        os.write(w, b"r")
        second = b.read_response()
        assert (second.status, second.body, second.header("Connection")) == (200, BLOCKING_BODY, "close")
    finally:
        a.close()
        b.close()
        idle.close()
    assert proc.wait(10) == 0
    assert proc.count(r"app: in flight /a2") == 0


@pytest.mark.slow
def test_sigterm_right_after_ready_is_graceful(procs, short_tmp):
    """A supervisor may signal as soon as the server says it listens: that must already be a graceful stop (exit 0,
    unix socket removed), not death by the signal's default action."""
    for i in range(10):  # the window is small: several tries make a miss unlikely
        path = short_tmp / f"early{i}.sock"
        proc = procs.start(["tests.apps.cli_targets:app", "--uds", str(path)])
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        assert (rc, path.exists()) == (0, False), f"try {i}: exit status {rc}; stderr:\n{proc.stderr}"
        assert proc.count(r"INFO shutdown complete$") == 1


def test_shutdown_log_states_the_grace_period(procs):
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0", "--timeout-graceful", "0.5"])
    proc.wait_for(r"INFO loop ")
    assert proc.stop() == 0
    line = proc.wait_for(r"INFO received SIGTERM: shutting down gracefully").string
    assert line.endswith("shutting down gracefully (up to 0.5s)"), line


def test_idle_keep_alive_connection_is_closed_at_once_on_sigterm(procs):
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0", "--timeout-keep-alive", "30"])
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"GET /first HTTP/1.1\r\nHost: test\r\n\r\n")
        resp = client.read_response()
        assert resp.status == 200
        assert resp.body == b"cli_targets.app |/first"
        assert resp.header("Connection") is None  # kept alive
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert client.is_closed(5)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 3.0  # far from the 30 s keep-alive timeout
    finally:
        client.close()


def test_graceful_timeout_cuts_a_hanging_request(procs, release_pipe):
    r, _ = release_pipe
    proc = start_blocking(procs, r, "--timeout-graceful", "0.5")
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"GET /hang HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"app: in flight /hang$")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        elapsed = time.monotonic() - started
        try:
            leftover = client.read_all()
        except ConnectionResetError:
            leftover = b""
    finally:
        client.close()
    assert rc != 0
    assert 0.4 <= elapsed < 5.0
    assert leftover == b""  # no response at all: the request was cut before its head
    assert proc.count(r"shutdown cut 1 request\(s\)") == 1


def test_second_signal_cuts_at_once(procs, release_pipe):
    r, _ = release_pipe
    proc = start_blocking(procs, r)  # --timeout-graceful stays at its 30 s default
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"GET /hang HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"app: in flight /hang$")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"INFO received SIGTERM: shutting down gracefully")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert rc == 1
    assert elapsed < 5.0
    assert proc.count(r"WARNING received SIGINT again: cutting in-flight requests now") == 1


def test_sigterm_when_idle_exits_0(procs):
    proc = procs.start(["tests.apps.cli_targets:app", "--port", "0"])
    assert get(f"{proc.url}/").status_code == 200
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3.0


# -- the allocator -----------------------------------------------------------------------------------------------------

GLIBC = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") if hasattr(os, "confstr") else False

#: Allocates 128 blocks of 64 KiB (as 64 KiB uploads do), frees them, and prints how much free memory the heap
#: still holds at its top (glibc's mallinfo2().keepcost) and what tune_allocator() returned, or "-" when not called.
KEEPCOST_SCRIPT = """
import ctypes, sys
from asyncwsgi.runner import tune_allocator
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
tuned = tune_allocator() if sys.argv[1] == "tune" else "-"
blocks = [bytes(65536) for _ in range(128)]
del blocks
print(libc.mallinfo2().keepcost, tuned)
"""


def keepcost(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-c", KEEPCOST_SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))} | (env or {}),
    ).stdout.split()
    return int(out[0]), out[1]


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_tune_allocator_keeps_freed_upload_sized_memory_for_reuse():
    """Untuned, glibc gives back the top of its heap once 128 KiB there is free, so the next request's 64 KiB body
    lands on fresh pages (page faults); tuned, most of the 8 MiB just freed stays for reuse."""
    untouched, _ = keepcost("plain")
    tuned, said = keepcost("tune")
    assert untouched < 1024 * 1024, untouched
    assert said == "True"
    assert tuned >= 6 * 1024 * 1024, tuned


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"])
def test_tune_allocator_leaves_the_users_own_malloc_settings(variable):
    value = "131072" if variable == "MALLOC_TRIM_THRESHOLD_" else "glibc.malloc.trim_threshold=131072"
    kept, said = keepcost("tune", env={variable: value})
    assert said == "False"
    assert kept < 1024 * 1024, kept


def test_the_command_line_tunes_the_allocator_before_it_serves(capsys, allocator_calls):
    rc, _, _ = run_main(capsys, "serve", "tests.apps.cli_targets:no_such_attr")
    assert rc != 0
    assert allocator_calls == [None]
    rc, _, _ = run_main(capsys, "serve", "tests.apps.cli_targets:app", "--port", "-1")
    assert rc == 2
    assert allocator_calls == [None], "a bad option is reported before anything else happens"


# -- the collector -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2", "2 --preload"])
def test_the_app_and_its_modules_are_frozen_out_of_the_collector(procs, workers):
    """Before serving, the server (each worker, with ``--workers``, preloaded or not) collects once and freezes what
    is alive, so full collections stop walking the app's modules."""
    proc = procs.start(["tests.apps.cli_targets:gc_app", "--port", "0", "--workers", *workers.split()])
    workers = workers.split()[0]
    frozen: dict[str, int] = {}
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        for _ in range(40):  # bounded: until both workers have answered (or 40 new connections)
            count, pid = client.get("/", headers={"Connection": "close"}).text.split()
            frozen[pid] = int(count)
            if len(frozen) == int(workers):
                break
    assert len(frozen) == int(workers)
    assert all(count > 10_000 for count in frozen.values()), frozen
