"""Memory held for clients that stop reading: ``python benchmarks/slowclients.py``.

Each server streams a 64 MiB response (64 KiB chunks, no Content-Length) to 50 clients that send their request and
then read nothing. After a few seconds the server's RSS growth is the memory it holds for them: with backpressure it
is bounded by socket buffers and a small window per client; without it the app's whole output piles up in the
server. Each server answers one small request first, so that what it loads once (modules imported by a first
request) is not counted as held for the clients. Results: ``results/slowclients.md``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PY, RESULTS, ROOT, _free_port, _machine, _raise_fd_limit, _tree_rss_kib

CLIENTS = 50
SETTLE = 4.0

SERVERS_ALL = {
    "asyncwsgi": lambda port: [
        PY,
        "-m",
        "asyncwsgi",
        "serve",
        "benchmarks.slow_apps:app",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ],
    "uvicorn+to_asgi": lambda port: [
        PY,
        "-m",
        "uvicorn",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "benchmarks.slow_apps:ours",
    ],
    "uvicorn+a2wsgi": lambda port: [
        PY,
        "-m",
        "uvicorn",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "benchmarks.slow_apps:a2wsgi_app",
    ],
    "waitress": lambda port: [
        PY,
        "-m",
        "waitress",
        f"--listen=127.0.0.1:{port}",
        "--threads=64",
        "benchmarks.slow_apps:app",
    ],
    "gunicorn": lambda port: [
        PY,
        "-m",
        "gunicorn",
        "-k",
        "gthread",
        "--threads",
        "64",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "benchmarks.slow_apps:app",
    ],
}


SERVERS = SERVERS_ALL


def _warm_up(port: int) -> None:
    """One complete small request: what a server loads or allocates once, on its first request (modules imported
    lazily, a thread started), is then not counted as memory held for the clients."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /warm HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        for _ in range(100):  # bounded: the response is a few hundred bytes, then the server closes
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 200") or not data.endswith(b"ok"):
        raise RuntimeError(f"warm-up request failed: {data[:200]!r}")


def measure(name: str) -> dict:
    port = _free_port()
    proc = subprocess.Popen(
        SERVERS[name](port), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_raise_fd_limit
    )
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:  # readiness: the port accepts (bounded)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.1)
        _warm_up(port)
        time.sleep(0.5)
        before = _tree_rss_kib(proc.pid)
        for _ in range(CLIENTS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n")
            socks.append(s)
        time.sleep(SETTLE)  # the server produces as much as it will for clients that do not read
        after = _tree_rss_kib(proc.pid)
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(15)
    return {
        "server": name,
        "rss_growth_mib": round((after - before) / 1024, 1),
        "per_client_kib": round((after - before) / CLIENTS),
    }


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(SERVERS)
    _raise_fd_limit()
    rows = []
    for name in names:
        try:
            rows.append(measure(name))
        except (RuntimeError, OSError) as exc:
            print(f"{name}: failed: {exc}", file=sys.stderr)
            continue
        print(f"{name:16} RSS +{rows[-1]['rss_growth_mib']} MiB for {CLIENTS} clients that do not read", flush=True)
    lines = [
        "# Clients that stop reading",
        "",
        f"{_machine()}. {CLIENTS} clients each request a 64 MiB streamed response and read nothing; server RSS "
        f"growth after {SETTLE:g} s.",
        "",
        "| server | RSS growth MiB | per client KiB |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['server']} | {r['rss_growth_mib']} | {r['per_client_kib']} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "slowclients.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "slowclients.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
