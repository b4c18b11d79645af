"""Worker processes (``asyncwsgi serve APP --workers N``) and ``--reload``, in real subprocesses.

Covered: every worker serves (and the supervisor binds once and only supervises); a worker killed with SIGKILL is
replaced; ``--max-requests`` (with jitter, on uvloop and on asyncio) swaps workers under concurrent keep-alive
load without a failed request; SIGHUP replaces every worker without a failed request; a replaced worker answers
an idle keep-alive connection once more, with ``Connection: close``, instead of closing it under the client;
SIGTERM lets the request in flight finish, exits 0 and refuses new connections; SIGINT sent to the whole process
group (a terminal's Ctrl-C) is still graceful; ``--timeout-graceful`` cuts and the exit status says so; a second
signal cuts at once; an app that cannot be imported makes the supervisor give up quickly instead of restarting
forever (and ``--preload`` reports it like the single-process server); ``--preload`` imports once, in the
supervisor; ``--reload`` runs the server process with the same options and serves the new code after a file
changes; ``--uds`` with workers (socket file removed at exit); an address in use is one line; a supervisor killed
with SIGKILL leaves no worker behind.

Readiness is the supervisor's ``listening on`` line plus one ``worker pid N ready`` line per worker on stderr
(read by a thread, waited for with bounded waits). The test app answers with the pid of the worker that served
the request; with ``--limit-connections 1`` a test reaches every worker deterministically (a worker holding a
connection accepts no other). After every test, no worker may outlive its supervisor: each pid seen is checked
with a pidfd.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests

from asyncwsgi.cli import build_parser, config_from_args
from asyncwsgi.supervisor import _child_options

from .cli_helpers import ServerProcess, ServerProcesses
from .helpers import RawClient

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork()")

APP = "tests.apps.worker_apps:app"
READY_RE = re.compile(r"INFO worker pid (\d+) ready \(")
CHILD_RE = re.compile(r"INFO started server process pid (\d+)$")
BODY_RE = re.compile(rb"pid=(\d+) imported_by=(\d+)")
#: Options every supervised server gets: quiet access log, a graceful timeout that keeps failures short.
BASE = ("--port", "0", "--no-access-log", "--timeout-graceful", "5")


# -- helpers -----------------------------------------------------------------------------------------------------------


def wait_count(proc: ServerProcess, pattern: str | re.Pattern[str], n: int, timeout: float = 10.0) -> list[str]:
    """Wait (bounded) until at least ``n`` stderr lines match ``pattern``; return the matching lines."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern

    def check(lines: list[str]) -> list[str] | None:
        found = [line for line in lines if regex.search(line)]
        return found if len(found) >= n else None

    found: list[str] = proc._wait(check, timeout, f"{n} stderr line(s) matched {regex.pattern!r}")
    return found


def ready_pids(proc: ServerProcess) -> list[int]:
    return [int(m.group(1)) for m in map(READY_RE.search, proc.lines) if m]


def wait_ready_pids(proc: ServerProcess, n: int, timeout: float = 10.0) -> list[int]:
    wait_count(proc, READY_RE, n, timeout)
    return ready_pids(proc)


def mentioned_pids(proc: ServerProcess) -> set[int]:
    """Every worker / server-process pid the supervisor's log names."""
    pids = set(ready_pids(proc))
    pids |= {int(m.group(1)) for m in map(CHILD_RE.search, proc.lines) if m}
    pids |= {int(m.group(1)) for m in map(re.compile(r"\[(\d+)\] ").search, proc.lines) if m}
    pids.discard(proc.proc.pid)
    return pids


def survivors(pids: set[int], timeout: float = 10.0) -> list[int]:
    """Wait (bounded, on pidfds) for ``pids`` to exit; SIGKILL and return those still alive after ``timeout``."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone (and reaped)
    try:
        alive = set(fds)
        deadline = time.monotonic() + timeout
        while alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([fds[p] for p in alive], [], [], remaining)
            alive -= {p for p in alive if fds[p] in readable}
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fds[pid], signal.SIGKILL)
        return sorted(alive)
    finally:
        for fd in fds.values():
            os.close(fd)


def fetch(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection (``Connection: close``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def answering_pid(body: bytes) -> int:
    m = BODY_RE.fullmatch(body)
    assert m, body
    return int(m.group(1))


def concurrent_round(port: int, n: int = 8) -> list[bytes]:
    """Open ``n`` connections before sending anything on them, then one request on each: the kernel's accept queue
    holds several connections at once, so more than one worker gets to accept."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    bodies = []
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        for s in socks:
            resp = http.client.HTTPResponse(s)
            resp.begin()
            assert resp.status == 200
            bodies.append(resp.read())
            resp.close()
    finally:
        for s in socks:
            s.close()
    return bodies


def one_body_per_worker(port: int, n: int = 2) -> list[bytes]:
    """With ``--limit-connections 1``: ``n`` keep-alive connections, opened one after the other and all kept open
    until each has been answered. A worker holding one connection accepts no other, so each connection is served by a
    different worker: a deterministic way to reach every one of them."""
    clients = []
    bodies = []
    try:
        for _ in range(n):
            client = RawClient("127.0.0.1", port, timeout=10)
            clients.append(client)
            client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            resp = client.read_response()
            assert (resp.status, resp.header("Connection")) == (200, None)
            bodies.append(resp.body)
    finally:
        for client in clients:
            client.close()
    return bodies


class Load:
    """``threads`` clients, each with its own ``requests.Session`` (keep-alive), sending ``GET /`` in a loop until
    ``stop()`` (or ``limit`` requests each). Records every answer and every failure."""

    def __init__(self, url: str, threads: int = 4, limit: int = 2000) -> None:
        self.url = url
        self.limit = limit
        self.answers: list[tuple[float, int]] = []  # (when the request was sent, pid)
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = threading.Barrier(threads + 1)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        self._started.wait(10)
        with requests.Session() as session:
            for _ in range(self.limit):
                if self._stop.is_set():
                    break
                sent = time.monotonic()
                try:
                    resp = session.get(self.url, timeout=10)
                    ok = resp.status_code == 200 and BODY_RE.fullmatch(resp.content) is not None
                    outcome = answering_pid(resp.content) if ok else f"{resp.status_code} {resp.content[:80]!r}"
                except requests.RequestException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if isinstance(outcome, int):
                        self.answers.append((sent, outcome))
                    else:
                        self.failures.append(outcome)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        self._started.wait(10)
        return self

    def wait_answers(self, n: int, timeout: float = 10.0) -> None:
        """Bounded: until at least ``n`` answers (checked each time a batch of threads finished a request)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.answers) >= n or self.failures:
                    return
            if not any(t.is_alive() for t in self._threads):
                return
            self._threads[0].join(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def join(self, timeout: float = 15.0) -> None:
        """Wait (bounded) for every thread to finish."""
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads)


@pytest.fixture
def supervisors() -> Iterator[Callable[..., ServerProcess]]:
    """Starts ``asyncwsgi serve`` supervisors; afterwards stops each (SIGTERM, then SIGKILL) and checks that none of
    the workers it started is still alive."""
    started: list[ServerProcess] = []
    with ServerProcesses() as procs:

        def start(*args: str, workers: int = 2, ready: bool = True, app: str = APP, **kwargs: Any) -> ServerProcess:
            argv = [app, *BASE, *args]
            if workers > 1:
                argv += ["--workers", str(workers)]
            proc = procs.start(argv, ready=False, **kwargs)
            started.append(proc)
            if ready:
                proc.wait_ready(1)
                if workers > 1:
                    wait_ready_pids(proc, workers)
            return proc

        try:
            yield start
        finally:
            for proc in started:
                if proc.proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(15)
    left = {pid for proc in started for pid in survivors(mentioned_pids(proc))}
    assert not left, f"worker process(es) {sorted(left)} outlived their supervisor"


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- every worker serves -----------------------------------------------------------------------------------------------


def test_every_worker_serves_and_the_supervisor_binds_once(supervisors):
    proc = supervisors("--limit-connections", "1")
    workers = ready_pids(proc)
    supervisor = proc.proc.pid
    assert len(set(workers)) == 2
    assert supervisor not in workers
    assert proc.count(rf"\[{supervisor}\] INFO supervisor pid {supervisor}, 2 workers$") == 1
    listening = [line for line in proc.lines if "listening on" in line]
    assert len(listening) == 1  # bound once, by the supervisor; the workers inherit the socket
    assert f"[{supervisor}] INFO listening on http://127.0.0.1:{proc.port}" in listening[0]
    for pid in workers:
        assert proc.count(rf"\[{pid}\] INFO worker pid {pid} ready \(loop (uvloop|asyncio), up to 256 threads\)$") == 1

    assert {answering_pid(body) for body in one_body_per_worker(proc.port)} == set(workers)

    assert proc.stop(signal.SIGTERM) == 0
    assert survivors(set(workers)) == []
    for pid in workers:
        assert proc.count(rf"INFO worker pid {pid} stopped$") == 1


def test_address_in_use_is_one_line(supervisors):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = supervisors("--port", str(port), ready=False)
        assert proc.wait(10) == 1
    assert proc.lines == [f"asyncwsgi: error: cannot listen on 127.0.0.1:{port}: address already in use"]


# -- workers that die ----------------------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced(supervisors):
    proc = supervisors("--limit-connections", "1")
    victim, survivor = ready_pids(proc)
    os.kill(victim, signal.SIGKILL)  # a worker of the supervisor this test started
    proc.wait_for(rf"ERROR worker pid {victim} died \(killed by SIGKILL\); starting a new one( in 0\.1s)?$")
    replacement = wait_ready_pids(proc, 3)[2]
    assert replacement not in (victim, survivor)

    bodies = [b for _ in range(10) for b in concurrent_round(proc.port, 4)]
    assert {answering_pid(b) for b in bodies} <= {survivor, replacement}
    assert {answering_pid(body) for body in one_body_per_worker(proc.port)} == {survivor, replacement}
    assert proc.count(r" died ") == 1

    assert proc.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("tests.apps.broken_import:app", "RuntimeError: broken_import exploded while loading settings: 5f0c9a"),
        ("tests.apps.no_such_module_9c2e:app", "could not import module 'tests.apps.no_such_module_9c2e'"),
    ],
    ids=["raises", "missing"],
)
def test_an_app_that_cannot_be_imported_makes_the_supervisor_give_up(supervisors, target, fragment):
    started = time.monotonic()
    proc = supervisors(app=target, ready=False)
    rc = proc.wait(15)
    elapsed = time.monotonic() - started
    assert rc == 1
    assert elapsed < 8.0
    assert proc.count(r"ERROR .*could not load the application; it failed in all 2 worker\(s\) .*: giving up$") == 1
    tried = proc.count(re.escape(fragment))
    assert 2 <= tried <= 4  # each worker's error is shown; no endless restart loop
    assert proc.count(r"INFO worker pid \d+ ready") == 0


# -- --max-requests and SIGHUP: replacement without dropped requests ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_max_requests_replaces_workers_without_a_failed_request(supervisors, loop):
    proc = supervisors(
        "--max-requests", "20", "--max-requests-jitter", "5", "--timeout-keep-alive", "30", "--loop", loop
    )
    first = set(ready_pids(proc))
    load = Load(f"{proc.url}/", threads=4, limit=100).start()
    load.join()  # each thread sends its 100 requests
    assert load.failures == [], proc.stderr
    assert len(load.answers) == 400
    answered = {pid for _, pid in load.answers}

    assert proc.stop(signal.SIGTERM) == 0, proc.stderr
    limits = {
        int(m.group(1)): int(m.group(2))
        for m in map(re.compile(r"worker pid (\d+) ready \(.*--max-requests (\d+)\)$").search, proc.lines)
        if m
    }
    assert all(20 <= n <= 25 for n in limits.values()), limits
    retire_re = re.compile(
        r"worker pid (\d+) served (\d+) requests \(--max-requests (\d+)\): asking for a replacement$"
    )
    retired = {int(m.group(1)): (int(m.group(2)), int(m.group(3))) for m in map(retire_re.search, proc.lines) if m}
    # 400 requests: a worker answers its --max-requests (at most 25), and more only while its replacement starts.
    assert len(retired) >= 4
    for pid, (served, limit) in retired.items():
        assert limit == limits[pid]
        assert served >= limit
        # All requests come from this test: the worker answered at least its limit (it keeps serving until its
        # replacement is ready).
        assert sum(1 for _, p in load.answers if p == pid) >= limit
    assert first <= set(retired)
    assert set(retired) <= answered <= set(limits)
    assert proc.count(r" died ") == 0


@pytest.mark.slow
def test_sighup_replaces_every_worker_without_a_failed_request(supervisors):
    proc = supervisors("--timeout-keep-alive", "30")
    old = set(ready_pids(proc))
    load = Load(f"{proc.url}/", threads=4).start()
    try:
        load.wait_answers(50)
        proc.send_signal(signal.SIGHUP)
        proc.wait_for(r"INFO received SIGHUP: replacing 2 worker\(s\) one by one$")
        new = set(wait_ready_pids(proc, 4)[2:])
        for pid in old:
            proc.wait_for(rf"INFO worker pid {pid} stopped$")
        swapped = time.monotonic()
        answered_before_swap = len(load.answers)
        load.wait_answers(answered_before_swap + 100)
    finally:
        load.stop()
    assert load.failures == [], proc.stderr
    assert len(old | new) == 4
    after = {pid for when, pid in load.answers if when > swapped}
    assert after and after <= new
    assert {pid for _, pid in load.answers} <= old | new
    assert survivors(old) == []
    assert proc.stop(signal.SIGTERM) == 0


def test_a_replaced_worker_answers_an_idle_keep_alive_connection_once_more(supervisors):
    """A replaced worker does not close an idle keep-alive connection under a client that may be sending on it: the
    next request is still answered, by the old worker, with ``Connection: close``."""
    proc = supervisors("--timeout-keep-alive", "30")
    client = RawClient("127.0.0.1", proc.port, timeout=10)
    try:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        first = client.read_response()
        assert (first.status, first.header("Connection")) == (200, None)
        old = answering_pid(first.body)
        proc.send_signal(signal.SIGHUP)
        proc.wait_for(rf"INFO worker pid {old}: replaced: finishing its connections, then shutting down$")
        answers = []
        for _ in range(5):  # the drain marks idle connections within a few milliseconds of starting
            client.send(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            resp = client.read_response()
            answers.append((resp.status, answering_pid(resp.body), resp.header("Connection")))
            if resp.header("Connection") == "close":
                break
        assert answers[-1] == (200, old, "close")
        assert answers[:-1] == [(200, old, None)] * (len(answers) - 1)
        assert client.is_closed(5)
        proc.wait_for(rf"INFO worker pid {old} stopped$")
    finally:
        client.close()
    assert proc.stop(signal.SIGTERM) == 0


# -- stopping --------------------------------------------------------------------------------------------------------


def test_sigterm_lets_the_request_in_flight_finish(supervisors):
    proc = supervisors()
    workers = set(ready_pids(proc))
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["response"] = fetch(proc.port, "/slow?ms=1000")
        except Exception as exc:
            result["error"] = exc

    client = threading.Thread(target=slow)
    client.start()
    try:
        serving = int(proc.wait_for(r"app: in flight (\d+)$").group(1))
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"INFO received SIGTERM: stopping 2 worker\(s\) gracefully \(up to 5s\)$")
        assert proc.wait(10) == 0
    finally:
        client.join(15)
    assert result.get("response") == (200, f"slow done pid={serving}".encode()), result
    assert serving in workers
    assert_refused(proc.port)
    assert survivors(workers) == []


def test_graceful_timeout_cuts_a_request_and_the_exit_status_says_so(supervisors):
    proc = supervisors("--timeout-graceful", "0.5")
    workers = set(ready_pids(proc))
    conn = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    try:
        conn.sendall(b"GET /slow?ms=5000 HTTP/1.1\r\nHost: test\r\n\r\n")
        serving = int(proc.wait_for(r"app: in flight (\d+)$").group(1))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        elapsed = time.monotonic() - started
        try:
            leftover = conn.recv(65536)
        except ConnectionResetError:
            leftover = b""
    finally:
        conn.close()
    assert rc == 1
    assert 0.4 <= elapsed < 4.0
    assert leftover == b""
    assert proc.count(rf"ERROR worker pid {serving}: shutdown cut 1 request\(s\) that did not finish in time$") == 1
    assert proc.count(rf"WARNING worker pid {serving} stopped \(exit status 1\)$") == 1
    assert survivors(workers) == []


def test_sigint_to_the_whole_process_group_is_still_graceful(supervisors):
    """A terminal's Ctrl-C reaches the supervisor and every worker at once, and the supervisor then forwards its own
    stop: a worker getting both must still finish the request in flight (two signals are not "a second Ctrl-C")."""
    # A session of its own for the supervisor (and so its workers): the test can signal the whole group.
    with mock.patch.object(subprocess, "Popen", functools.partial(subprocess.Popen, start_new_session=True)):
        proc = supervisors()
    workers = set(ready_pids(proc))
    assert os.getpgid(proc.proc.pid) == proc.proc.pid
    assert {os.getpgid(pid) for pid in workers} == {proc.proc.pid}
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["response"] = fetch(proc.port, "/slow?ms=1000")
        except Exception as exc:
            result["error"] = exc

    client = threading.Thread(target=slow)
    client.start()
    try:
        serving = int(proc.wait_for(r"app: in flight (\d+)$").group(1))
        os.killpg(proc.proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        client.join(15)
    assert result.get("response") == (200, f"slow done pid={serving}".encode()), result
    assert proc.count(r"INFO received SIGINT: stopping 2 worker\(s\) gracefully") == 1
    assert proc.count(r"cutting") == 0
    assert survivors(workers) == []


def test_second_signal_stops_the_workers_at_once(supervisors):
    proc = supervisors("--timeout-graceful", "30")
    workers = set(ready_pids(proc))
    conn = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    try:
        conn.sendall(b"GET /slow?ms=15000 HTTP/1.1\r\nHost: test\r\n\r\n")
        proc.wait_for(r"app: in flight (\d+)$")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait_for(r"INFO received SIGTERM: stopping 2 worker\(s\) gracefully")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(10)
        elapsed = time.monotonic() - started
        try:
            leftover = conn.recv(65536)
        except ConnectionResetError:
            leftover = b""
    finally:
        conn.close()
    assert rc == 1
    assert elapsed < 5.0
    assert leftover == b""  # cut: no response at all
    assert proc.count(r"WARNING received SIGINT again: stopping the workers now$") == 1
    assert survivors(workers) == []


def test_killed_supervisor_leaves_no_worker_behind(supervisors):
    proc = supervisors()
    workers = set(ready_pids(proc))
    proc.proc.kill()
    assert proc.wait(10) == -signal.SIGKILL
    assert survivors(workers) == []


# -- --preload -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_preload_imports_the_app_once_in_the_supervisor(supervisors, preload):
    proc = supervisors("--preload" if preload else "--no-preload", "--limit-connections", "1")
    workers = set(ready_pids(proc))
    answers = {}
    for body in one_body_per_worker(proc.port):
        m = BODY_RE.fullmatch(body)
        assert m, body
        answers[int(m.group(1))] = int(m.group(2))  # worker pid -> pid of the process that imported the app
    assert set(answers) == workers
    if preload:
        assert answers == dict.fromkeys(workers, proc.proc.pid)
        assert proc.count(r"INFO supervisor pid \d+, 2 workers \(app preloaded\)$") == 1
    else:
        assert answers == {pid: pid for pid in workers}
    assert proc.stop(signal.SIGTERM) == 0


def test_preload_reports_an_import_error_like_the_single_process_server(supervisors):
    proc = supervisors("--preload", app="tests.apps.broken_import:app", ready=False)
    assert proc.wait(10) == 1
    lines = proc.lines
    assert lines[0] == (
        "asyncwsgi: error: error while importing module 'tests.apps.broken_import'; "
        "the application's traceback follows:"
    )
    assert lines[-1] == "RuntimeError: broken_import exploded while loading settings: 5f0c9a"
    assert not any("listening on" in line or "worker pid" in line for line in lines)


# -- unix socket -----------------------------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix socket paths (pytest's tmp_path can exceed the 107-byte limit)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aw-") as d:
        yield Path(d)


def test_workers_on_a_unix_socket(supervisors, short_tmp):
    path = short_tmp / "workers.sock"
    proc = supervisors("--uds", str(path))
    assert proc.uds == str(path)
    workers = set(ready_pids(proc))
    seen = set()
    for _ in range(20):
        conn = UnixHTTPConnection(str(path))
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            assert resp.status == 200
            seen.add(answering_pid(resp.read()))
        finally:
            conn.close()
    assert seen and seen <= workers
    assert proc.stop(signal.SIGTERM) == 0
    assert not path.exists()


# -- --reload ----------------------------------------------------------------------------------------------------------


def test_reload_runs_the_server_process_with_the_same_options_minus_reload():
    """The reloader's server process gets every option it was given except ``--reload``, on the reloader's socket."""
    argv = [
        "serve",
        "tests.apps.worker_apps:app",
        "--reload",
        "--workers",
        "3",
        "--preload",
        "--max-requests",
        "100",
        "--threads",
        "7",
        "--timeout-graceful",
        "2.5",
        "--root-path",
        "/api",
        "--no-access-log",
        "--no-server-header",
        "--loop",
        "asyncio",
        "--factory",
        "--app-dir",
        "tests",
        "-b",
        "127.0.0.1:0",
    ]
    parser = build_parser()
    config = config_from_args(parser.parse_args(argv))
    child = _child_options(config, [7])
    assert "--reload" not in child
    again = config_from_args(parser.parse_args(["serve", "tests.apps.worker_apps:app", *child]))
    assert again == config.replace(reload=False, bind=("fd://7",), app_dir=os.path.abspath("tests"))


RELOAD_APP = """\
def app(environ, start_response):
    body = {body!r}
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.slow
def test_reload_serves_the_new_code_after_a_change(supervisors, tmp_path):
    name = f"reload_tmp_{uuid.uuid4().hex[:12]}"
    module = tmp_path / f"{name}.py"
    module.write_text(RELOAD_APP.format(body=b"version one"))
    proc = supervisors("--reload", "--app-dir", str(tmp_path), workers=1, app=f"{name}:app")
    first_child = int(proc.wait_for(CHILD_RE).group(1))
    proc.wait_for(rf"\[{first_child}\] INFO loop ")
    assert fetch(proc.port) == (200, b"version one")

    # A different length as well as a different text: the bytecode cache validates by mtime (whole seconds) and size.
    module.write_text(RELOAD_APP.format(body=b"version two, a little longer"))
    proc.wait_for(rf"INFO change detected in {name}\.py, restarting$")
    second_child = int(wait_count(proc, CHILD_RE, 2)[1].rsplit(" ", 1)[1])
    assert second_child != first_child
    proc.wait_for(rf"\[{first_child}\] INFO shutdown complete$")
    proc.wait_for(rf"\[{second_child}\] INFO loop ")
    assert fetch(proc.port) == (200, b"version two, a little longer")

    assert proc.stop(signal.SIGTERM) == 0
    assert proc.count(rf"\[{second_child}\] INFO shutdown complete$") == 1
    assert survivors({first_child, second_child}) == []
    assert_refused(proc.port)
