"""Side-by-side benchmark of asyncwsgi and its peers.

``python benchmarks/run.py [--quick] [--servers a,b] [--cases x,y]``.

Every server runs as one process pinned to CPU 0 and serves the same apps (``benchmarks/apps.py``) on loopback; wrk,
pinned to CPU 1, drives it. Servers alternate A B C A B C over several rounds and the median of the rounds is
reported per server and case: requests/s, p50 and p99 latency, errors, peak RSS of the server's process tree, and
the CPU time (user + system) that tree used per request: what a request costs the server, every thread counted. A
server that saturates its core does about one second of CPU per second, so there it is close to the inverse of
requests/s and moves with it (a contended host makes every request dearer); where a server does not saturate its
core (a thread-bound app, time lost waiting on locks or the GIL) it shows what requests/s alone does not.
Results go to ``benchmarks/results/`` as ``latest.md``, ``latest.json`` and ``latest.png``.

Peers come from the optional ``[bench]`` extra (gunicorn, waitress, uvicorn + a2wsgi, granian, hypercorn); a peer
that is not installed is skipped with a note. wrk comes from the system (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
SERVER_CPU = "0"
LOAD_CPU = "1"
#: Thread counts of the peers whose count is a setting: (for the CPU-bound cases, for the thread-bound one), each
#: peer's best on the reference machine by ``--sweep-threads`` (see benchmarks/README.md); named in the table.
PEER_THREADS = {
    "gunicorn": (16, 128),
    "waitress": (16, 256),
    "uvicorn+a2wsgi": (16, 128),
    "uvicorn+to_asgi": (8, 512),
    "granian": (4, 256),
}
KEEP_ALIVE = 300  # seconds: idle connections must stay open during a run, whatever the server's default


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    connections: int = 64
    app: str = "app"  # "app" (the router) or "flask"
    post_bytes: int = 0
    idle: int = 0  # idle keep-alive connections held open during the run
    thread_bound: bool = False  # the app waits rather than computes: thread pools need a thread per connection
    note: str = ""


CASES = [
    Case("hello", "/hello", note="13-byte body with Content-Length"),
    Case("16k", "/16k", note="16 KiB body"),
    Case("stream-1m", "/stream", connections=16, note="1 MiB streamed without Content-Length"),
    Case("post-64k", "/post", post_bytes=65536, note="64 KiB POST read fully"),
    Case("flask-json", "/json", app="flask", note="Flask JSON route"),
    Case("sleep-20ms", "/sleep", connections=256, thread_bound=True, note="app sleeps 20 ms (thread-bound)"),
    Case("idle-5000", "/hello", idle=5000, note="/hello with 5,000 idle keep-alive connections open"),
]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str  # the import that must succeed for this server to run
    command: Callable[[str, int, int], list[str]]  # (app, port, threads)
    threads: str  # how its threads are described; "{n}" is replaced by the count used
    pure_python: bool
    only_cases: tuple[str, ...] = ()

    def thread_count(self, case: Case) -> int:
        """The thread setting for ``case`` (0: the server has none to set)."""
        counts = PEER_THREADS.get(self.name)
        if counts is None:
            return 0
        return counts[1] if case.thread_bound else counts[0]

    def describe_threads(self, case: Case) -> str:
        return self.threads.replace("{n}", str(self.thread_count(case)))


def _target(app: str, asgi: str = "") -> str:
    """The import target: the WSGI app, or it wrapped by a2wsgi (``asgi="a2wsgi"``) or by asyncwsgi's adapter."""
    if asgi == "a2wsgi":
        return "benchmarks.apps:asgi_flask" if app == "flask" else "benchmarks.apps:asgi"
    if asgi == "ours":
        return "benchmarks.apps:ours_flask" if app == "flask" else "benchmarks.apps:ours"
    return f"benchmarks.apps:{app}"


SERVERS = [
    ServerSpec(
        "asyncwsgi",
        "asyncwsgi",
        lambda app, port, threads: [
            PY,
            "-m",
            "asyncwsgi",
            "serve",
            _target(app),
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            "--timeout-keep-alive",
            str(KEEP_ALIVE),
        ],
        "default (elastic)",
        True,
    ),
    ServerSpec(
        "gunicorn",
        "gunicorn",
        lambda app, port, threads: [
            PY,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "-w",
            "1",
            "--threads",
            str(threads),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            "--keep-alive",
            str(KEEP_ALIVE),
            "--worker-connections",
            "10000",
            _target(app),
        ],
        "gthread, {n} threads",
        True,
    ),
    ServerSpec(
        "waitress",
        "waitress",
        lambda app, port, threads: [
            PY,
            "-m",
            "waitress",
            f"--threads={threads}",
            f"--listen=127.0.0.1:{port}",
            "--backlog=4096",
            "--connection-limit=10000",
            f"--channel-timeout={KEEP_ALIVE}",
            _target(app),
        ],
        "{n} threads",
        True,
    ),
    ServerSpec(
        "uvicorn+a2wsgi",
        "a2wsgi",
        lambda app, port, threads: [
            PY,
            "-m",
            "uvicorn",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            "4096",
            "--timeout-keep-alive",
            str(KEEP_ALIVE),
            _target(app, asgi="a2wsgi"),
        ],
        "a2wsgi, {n} threads",
        True,
    ),
    ServerSpec(
        "uvicorn+to_asgi",
        "uvicorn",
        lambda app, port, threads: [
            PY,
            "-m",
            "uvicorn",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            "4096",
            "--timeout-keep-alive",
            str(KEEP_ALIVE),
            _target(app, asgi="ours"),
        ],
        "asyncwsgi.to_asgi, {n} threads",
        True,
    ),
    ServerSpec(
        "hypercorn",
        "hypercorn",
        lambda app, port, threads: [
            PY,
            "-m",
            "hypercorn",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            "--keep-alive",
            str(KEEP_ALIVE),
            _target(app),
        ],
        "native WSGI",
        True,
    ),
    ServerSpec(
        "granian",
        "granian",
        lambda app, port, threads: [
            PY,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--blocking-threads",
            str(threads),
            "--log-level",
            "warning",
            "--backlog",
            "4096",
            _target(app),
        ],
        "Rust core, {n} blocking threads",
        False,
    ),
    ServerSpec(
        "ceiling",
        "uvloop",
        lambda app, port, threads: [PY, str(ROOT / "benchmarks" / "ceiling.py"), str(port)],
        "bare uvloop + httptools, no WSGI",
        False,
        only_cases=("hello", "idle-5000"),
    ),
]


@dataclass
class Result:
    server: str
    case: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    peak_rss_mib: float = 0.0
    #: CPU time (user + system) of the server's process tree during the measured load, per request completed
    cpu_us_per_req: float = 0.0
    #: share of the machine's CPU time taken by the hypervisor for other guests during the measured load
    steal_pct: float = 0.0
    idle_rss_per_conn_kib: float | None = None
    note: str = ""
    rounds: list[float] = field(default_factory=list)


# -- processes -----------------------------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(target, 65536)), hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (gunicorn and granian run the app in a child process)."""
    found: list[int] = []
    pids = [pid]
    while pids:
        p = pids.pop()
        if p in found:
            continue
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue  # gone
        found.append(p)
        for task in tasks:  # a child started by any thread of p, not only its main one
            with contextlib.suppress(OSError):
                pids.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and its descendants."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{p}/status").read_text())
            total += int(m.group(1)) if m else 0
    return total


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` and its descendants: each process's own (all its threads) and
    that of its children that have exited and been reaped (so a worker process that exits during the load still
    counts, through its parent)."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime: fields 14-17 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_jiffies(cpus: tuple[str, ...] = (SERVER_CPU, LOAD_CPU)) -> tuple[int, int]:
    """``(steal, total)``: time of the benchmark's CPUs so far that the hypervisor gave to other guests, and all of
    it (their lines of /proc/stat: the machine's other CPUs, idle, would dilute it); ``(0, 0)`` where that cannot
    be read."""
    steal = total = 0
    names = {f"cpu{c}" for c in cpus}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, _, rest = line.partition(" ")
            if name in names:
                fields = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
                if len(fields) == 8:
                    steal += fields[7]
                    total += sum(fields)
    return steal, total


def _steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else 0.0


def _get(port: int, path: str = "/hello", timeout: float = 1.0) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(64)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def running(spec: ServerSpec, case: Case, threads: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    threads = spec.thread_count(case) if threads is None else threads
    cmd = ["taskset", "-c", SERVER_CPU, *spec.command(case.app, port, threads)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", BENCH_THREADS=str(threads or 64))
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below, after the process
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, preexec_fn=_raise_fd_limit)
    try:
        deadline = time.monotonic() + 30
        while True:  # readiness: the server answers a request (bounded by the deadline)
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{spec.name} exited: {log.read()[-2000:].decode(errors='replace')}")
            try:
                if _get(port, case.path if not case.post_bytes else "/hello") in (200, 405):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name} did not answer within 30 s")
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


# -- load ------------------------------------------------------------------------------------------------------------


def _wrk(port: int, case: Case, duration: float, script: Path | None) -> dict[str, float]:
    cmd = [
        "taskset",
        "-c",
        LOAD_CPU,
        "wrk",
        "-t1",
        f"-c{case.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{port}{case.path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> dict[str, float]:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return 0.0
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    done = re.search(r"^\s*(\d+) requests in ", out, re.M)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": errors,
        "requests": int(done.group(1)) if done else 0,
    }


def _open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections that each made one request and then sit idle (bounded: n sockets)."""
    socks = []
    request = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request)
        socks.append(s)
    for s in socks:
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"Hello, World!"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return socks


def _sample_peak(pid: int, stop: threading.Event, out: list[int]) -> None:
    while not stop.wait(0.2):
        out.append(_tree_rss_kib(pid))


def run_one(spec: ServerSpec, case: Case, duration: float, script: Path | None, threads: int | None = None) -> Result:
    result = Result(spec.name, case.name)
    with running(spec, case, threads) as (proc, port):
        _wrk(port, Case(case.name, case.path, min(case.connections, 16), case.app, case.post_bytes), 1.0, script)
        idle: list[socket.socket] = []
        try:
            if case.idle:
                before = _tree_rss_kib(proc.pid)
                idle = _open_idle(port, case.idle)
                after = _tree_rss_kib(proc.pid)
                result.idle_rss_per_conn_kib = round((after - before) / case.idle, 2)
            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_sample_peak, args=(proc.pid, stop, samples), daemon=True)
            sampler.start()
            cpu, jiffies = _tree_cpu_seconds(proc.pid), _cpu_jiffies()
            stats = _wrk(port, case, duration, script)
            cpu, steal = _tree_cpu_seconds(proc.pid) - cpu, _steal_pct(jiffies, _cpu_jiffies())
            stop.set()
            sampler.join()
            samples.append(_tree_rss_kib(proc.pid))
            if case.idle:
                alive = sum(1 for s in idle if _still_open(s))
                if alive < case.idle:
                    result.note = f"{case.idle - alive} idle connections closed by the server"
        finally:
            for s in idle:
                s.close()
    result.rps = stats["rps"]
    result.p50_ms = stats["p50"]
    result.p99_ms = stats["p99"]
    result.errors = int(stats["errors"])
    result.peak_rss_mib = round(max(samples) / 1024, 1)
    result.steal_pct = steal
    if stats["requests"]:
        result.cpu_us_per_req = round(cpu / stats["requests"] * 1e6, 1)
    return result


def _still_open(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


# -- report ----------------------------------------------------------------------------------------------------------


def _rounds_phrase(rounds: str) -> str:
    """How the reported round was chosen (``_median_result``: the upper middle one)."""
    n = int(rounds)
    if n == 1:
        return "1 round"
    if n == 2:
        return "the better of 2 rounds"
    return f"median of {n} rounds" if n % 2 else f"upper median of {n} rounds"


def _median_result(results: list[Result]) -> Result:
    """The round with the median requests/s (the upper one of an even count), with every round's requests/s and the
    median CPU time per request over the rounds."""
    by_rps = sorted(results, key=lambda r: r.rps)
    mid = by_rps[len(by_rps) // 2]
    mid.rounds = [round(r.rps) for r in results]
    cpu = sorted(r.cpu_us_per_req for r in results if r.cpu_us_per_req)
    mid.cpu_us_per_req = cpu[len(cpu) // 2] if cpu else 0.0
    return mid


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _paired_ratio(ours: Result, other: Result) -> float:
    """Our requests/s over the other's, compared within each round (machine noise moves both alike), then the median;
    the ratio of the medians when the rounds do not pair up (one failed)."""
    if len(ours.rounds) == len(other.rounds) and all(other.rounds):
        return float(statistics.median(a / b for a, b in zip(ours.rounds, other.rounds, strict=True)))
    return ours.rps / other.rps


def _steal_sentence(meta: dict[str, str]) -> str:
    """How much of the two CPUs the hypervisor gave to other guests during the run (a virtual machine's noise);
    nothing for results from before it was measured."""
    steal = meta.get("steal_pct")
    return (
        "" if steal is None else f" The hypervisor gave {steal}% of the two CPUs' time to other guests during the run."
    )


def _steal_phrase(meta: dict[str, str]) -> str:
    """The steal sentence, with what it means for the figures (the full report's intro)."""
    sentence = _steal_sentence(meta)
    if not sentence:
        return ""
    return sentence + " Above a few percent, rounds move by tens of percent and CPU per request rises with it."


def report(
    results: dict[str, dict[str, Result]], specs: list[ServerSpec], cases: list[Case], meta: dict[str, str]
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"{meta['date']} on {meta['machine']}. One server process pinned to CPU {SERVER_CPU}, wrk pinned to CPU "
        f"{LOAD_CPU}; {_rounds_phrase(meta['rounds'])} of {meta['duration']} s, servers alternated each round. "
        "`x asyncwsgi` is asyncwsgi's requests/s divided by that server's, round by round (the two ran minutes apart "
        "at most), median of the rounds; where a round failed, the ratio of the medians. `CPU us/req` is the CPU "
        "time (user + system) the server's processes used during the load, per request completed, median of the "
        "rounds: it counts every thread (the event loop, the workers, a Rust core's I/O threads). A server that keeps "
        "its core busy does about 1,000,000 / `CPU us/req` requests/s; one that does far fewer waits on something "
        "(its threads, locks, the GIL)." + _steal_phrase(meta),
        "",
    ]
    for case in cases:
        rows = [(s, results[case.name].get(s.name)) for s in specs]
        rows = [(s, r) for s, r in rows if r is not None]
        if not rows:
            continue
        ours = results[case.name].get("asyncwsgi")
        lines += [f"## {case.name}: {case.note} ({case.connections} connections)", ""]
        header = (
            "| server | threads | req/s | x asyncwsgi | p50 ms | p99 ms | errors | CPU us/req | peak RSS MiB "
            "| rounds req/s |"
        )
        sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        if case.idle:
            header += " RSS KiB per idle conn |"
            sep += "---:|"
        lines += [header, sep]
        for spec, r in rows:
            ratio = f"{_paired_ratio(ours, r):.2f}" if ours and r.rps else "-"
            row = (
                f"| {spec.name} | {spec.describe_threads(case)} | {r.rps:,.0f} | {ratio} | {r.p50_ms:.2f} | "
                f"{r.p99_ms:.2f} | {r.errors} | {r.cpu_us_per_req or '-'} | {r.peak_rss_mib} | "
                f"{' / '.join(f'{x:,}' for x in r.rounds)} |"
            )
            if case.idle:
                row += f" {r.idle_rss_per_conn_kib} |"
            lines.append(row)
        notes = [f"{spec.name}: {r.note}" for spec, r in rows if r.note]
        if notes:
            lines += ["", "Notes: " + "; ".join(notes) + "."]
        lines.append("")
    return "\n".join(lines)


README_CASES = [
    ("hello", "hello"),
    ("flask-json", "Flask JSON"),
    ("stream-1m", "1 MiB stream"),
    ("post-64k", "64 KiB POST"),
    ("sleep-20ms", "20 ms sleep, 256 connections"),
    ("idle-5000", "hello + 5,000 idle"),
]
README_SERVERS = ["asyncwsgi", "granian", "waitress", "gunicorn", "uvicorn+a2wsgi", "hypercorn"]
README_START = "<!-- performance: generated by benchmarks/run.py --readme from results/latest.json -->"
README_END = "<!-- /performance -->"


def readme_section(payload: dict) -> str:
    """The README's performance table, from a results file (``latest.json``)."""
    meta, results = payload["meta"], payload["results"]
    ceiling = results.get("hello", {}).get("ceiling")
    intro = (
        f"One server process on one core (pinned), wrk on the other, on {meta['machine']}, {meta['date']}; requests/s "
        f"with p99 latency in ms in brackets, {_rounds_phrase(meta['rounds'])} of {meta['duration']} s "
        "([all cases and servers](benchmarks/results/latest.md), [chart](benchmarks/results/latest.png), how to run "
        "it: [benchmarks/](benchmarks/)). Each peer runs with its best thread count "
        "([threads.md](benchmarks/results/threads.md)); granian has a Rust core, the others are pure Python."
        + (
            f" A bare uvloop + httptools server with no WSGI call and no thread hop does {ceiling['rps']:,.0f} "
            "req/s here."
            if ceiling
            else ""
        )
        + _steal_sentence(meta)
    )
    lines = [
        textwrap.fill(intro, 118, break_long_words=False, break_on_hyphens=False),
        "",
        "| case | " + " | ".join(README_SERVERS) + " |",
        "|---|" + "---:|" * len(README_SERVERS),
    ]
    for key, label in README_CASES:
        by_server = results.get(key)
        if not by_server:
            continue
        cells = []
        for name in README_SERVERS:
            r = by_server.get(name)
            cells.append("—" if not r or not r["rps"] else f"{r['rps']:,.0f} ({r['p99_ms']:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(results_json: Path, readme: Path) -> None:
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    section = readme_section(json.loads(results_json.read_text()))
    readme.write_text(text[:start] + "\n" + section + "\n" + text[end:])


def chart(results: dict[str, dict[str, Result]], specs: list[ServerSpec], cases: list[Case], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [c for c in cases if results.get(c.name)]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 4.2), squeeze=False)
    for ax, case in zip(axes[0], shown, strict=True):
        names = [s.name for s in specs if s.name in results[case.name]]
        values = [results[case.name][n].rps for n in names]
        colors = ["#d62728" if n == "asyncwsgi" else "#7f7f7f" if n == "ceiling" else "#1f77b4" for n in names]
        ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(case.name, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
    axes[0][0].set_ylabel("requests/s (higher is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


#: Thread counts tried by ``--sweep-threads``: for the CPU-bound cases (hello and Flask), and for the thread-bound one.
SWEEP_CPU = (1, 2, 4, 8, 16, 64)
SWEEP_IO = (64, 128, 256, 512)


def sweep_threads(specs: list[ServerSpec], duration: float, meta: dict[str, str]) -> str:
    """Find each peer's best thread count: the one with the highest geometric mean of requests/s over hello and
    flask-json, and the best for sleep-20ms. Returns a markdown report (one run per setting: a guide, not a
    measurement)."""
    cpu_cases = [c for c in CASES if c.name in ("hello", "flask-json")]
    io_cases = [c for c in CASES if c.thread_bound]
    lines = [
        "# Thread settings of the peers",
        "",
        f"{meta['date']} on {meta['machine']}. `python benchmarks/run.py --sweep-threads`: one run of "
        f"{duration:g} s per setting, pinned as in the benchmark. Best: the highest geometric mean of requests/s over "
        f"{' and '.join(c.name for c in cpu_cases)}, and the highest for {' and '.join(c.name for c in io_cases)}; "
        "`PEER_THREADS` in benchmarks/run.py holds them.",
        "",
        "| server | threads | " + " | ".join(f"{c.name} req/s" for c in cpu_cases + io_cases) + " |",
        "|---|---:|" + "---:|" * (len(cpu_cases) + len(io_cases)),
    ]
    chosen: list[str] = []
    for spec in specs:
        if spec.name not in PEER_THREADS:
            continue
        best: dict[str, tuple[float, int]] = {}
        for kind, counts, cases in (("cpu", SWEEP_CPU, cpu_cases), ("io", SWEEP_IO, io_cases)):
            for n in counts:
                rps = []
                for case in cases:
                    try:
                        r = run_one(spec, case, duration, None, threads=n)
                        rps.append(r.rps)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        print(f"{spec.name} {case.name} {n} threads: failed: {exc}", file=sys.stderr)
                        rps.append(0.0)
                score = 1.0
                for value in rps:
                    score *= value
                score **= 1 / len(rps)
                print(f"{spec.name:15} {n:4} threads  {kind}  {score:10,.0f}", flush=True)
                cells = [f"{v:,.0f}" for v in rps]
                row = cells + ["-"] * len(io_cases) if kind == "cpu" else ["-"] * len(cpu_cases) + cells
                lines.append(f"| {spec.name} | {n} | " + " | ".join(row) + " |")
                if score > best.get(kind, (-1.0, 0))[0]:
                    best[kind] = (score, n)
        chosen.append(f'"{spec.name}": ({best["cpu"][1]}, {best["io"][1]})')
    lines += ["", "Best: " + ", ".join(chosen) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", help="comma-separated subset of: " + ", ".join(s.name for s in SERVERS))
    parser.add_argument("--cases", help="comma-separated subset of: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (a smoke run, not a measurement)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument(
        "--sweep-threads", action="store_true", help="find each peer's best thread counts (writes threads.md)"
    )
    parser.add_argument(
        "--readme", action="store_true", help="only rewrite README.md's performance table from results/latest.json"
    )
    args = parser.parse_args(argv)
    if args.readme:
        # README's table, and latest.md again (its wording), from latest.json
        latest = Path(args.out) / "latest.json"
        payload = json.loads(latest.read_text())
        names = {c for by in payload["results"].values() for c in by}
        results = {c: {n: Result(**r) for n, r in by.items()} for c, by in payload["results"].items()}
        shown_cases = [c for c in CASES if c.name in results]
        (Path(args.out) / "latest.md").write_text(
            report(results, [s for s in SERVERS if s.name in names], shown_cases, payload["meta"])
        )
        write_readme(latest, ROOT / "README.md")
        return 0
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("benchmarks need wrk and taskset on PATH (Debian: apt-get install wrk util-linux)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("benchmarks need 2 CPUs: one for the server, one for wrk", file=sys.stderr)
        return 2
    rounds, duration = (1, 2.0) if args.quick else (args.rounds, args.duration)
    specs = [s for s in SERVERS if not args.servers or s.name in args.servers.split(",")]
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    missing = [s.name for s in specs if importlib.util.find_spec(s.module) is None]
    if missing:
        print(f"skipping (not installed; pip install -e '.[bench]'): {', '.join(missing)}", file=sys.stderr)
    specs = [s for s in specs if s.name not in missing]
    _raise_fd_limit()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "rounds": str(rounds),
        "duration": f"{duration:g}",
    }
    if args.sweep_threads:
        text = sweep_threads(specs, 3.0 if not args.quick else 1.0, meta)
        (out / "threads.md").write_text(text)
        print(text)
        return 0
    raw: dict[str, dict[str, list[Result]]] = {c.name: {} for c in cases}
    jiffies = _cpu_jiffies()
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(rounds):
            for case in cases:
                script = None
                if case.post_bytes:
                    script = Path(tmp) / "post.lua"
                    script.write_text(
                        f'wrk.method = "POST"\nwrk.body = string.rep("a", {case.post_bytes})\n'
                        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
                    )
                for spec in specs:
                    if spec.only_cases and case.name not in spec.only_cases:
                        continue
                    try:
                        r = run_one(spec, case, duration, script)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        print(f"round {rnd + 1} {case.name} {spec.name}: failed: {exc}", file=sys.stderr)
                        continue
                    raw[case.name].setdefault(spec.name, []).append(r)
                    print(
                        f"round {rnd + 1} {case.name:11} {spec.name:15} {r.rps:>10,.0f} req/s  "
                        f"p99 {r.p99_ms:7.2f} ms  errors {r.errors}  cpu {r.cpu_us_per_req} us/req  "
                        f"rss {r.peak_rss_mib} MiB  steal {r.steal_pct}%",
                        flush=True,
                    )
    meta["steal_pct"] = f"{_steal_pct(jiffies, _cpu_jiffies()):g}"
    results = {c: {s: _median_result(rs) for s, rs in by.items()} for c, by in raw.items()}
    text = report(results, specs, cases, meta)
    (out / "latest.md").write_text(text)
    payload = {"meta": meta, "results": {c: {s: asdict(r) for s, r in by.items()} for c, by in results.items()}}
    (out / "latest.json").write_text(json.dumps(payload, indent=2))
    drew = chart(results, specs, cases, out / "latest.png")
    print(text)
    print(f"wrote {out / 'latest.md'}, {out / 'latest.json'}" + (f", {out / 'latest.png'}" if drew else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
