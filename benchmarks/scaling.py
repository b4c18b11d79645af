"""Multi-core scaling of ``asyncwsgi serve --workers N``: ``python benchmarks/scaling.py [--workers 1,2]``.

Unlike ``run.py`` (one server process on one pinned core), the server here may use every CPU but the ones given to
wrk. On a 2-core machine wrk has no core of its own, so 2 workers compete with the load generator: the table says
so. Results: ``results/scaling.md`` and ``results/scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PY, RESULTS, ROOT, _free_port, _get, _machine, _parse_wrk, _raise_fd_limit

CASES = [("hello", "/hello", "app"), ("flask-json", "/json", "flask")]


def measure(workers: int, case: tuple[str, str, str], duration: int, load_cpus: str, server_cpus: str) -> dict:
    name, path, app = case
    port = _free_port()
    cmd = [
        "taskset",
        "-c",
        server_cpus,
        PY,
        "-m",
        "asyncwsgi",
        "serve",
        f"benchmarks.apps:{app}",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "4096",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, preexec_fn=_raise_fd_limit)
        try:
            deadline = time.monotonic() + 30
            while True:  # readiness: the server answers (bounded)
                try:
                    if _get(port, path) == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"--workers {workers} did not start")
                time.sleep(0.1)
            threads = max(1, len(load_cpus.split(",")))
            base = ["taskset", "-c", load_cpus, "wrk", f"-t{threads}", "-c128", "--latency"]
            subprocess.run([*base, "-d1s", f"http://127.0.0.1:{port}{path}"], capture_output=True, check=False)
            out = subprocess.run(
                [*base, f"-d{duration}s", f"http://127.0.0.1:{port}{path}"],
                capture_output=True,
                text=True,
                timeout=duration + 60,
                check=False,
            ).stdout
        finally:
            proc.terminate()
            proc.wait(20)
    stats = _parse_wrk(out)
    return {"workers": workers, "case": name, **stats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (e.g. 1,2,4,8,16)")
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args(argv)
    ncpu = os.cpu_count() or 1
    # wrk gets a quarter of the CPUs (at least one); on 2 cores it shares them with the server.
    load_n = max(1, ncpu // 4)
    load_cpus = ",".join(str(c) for c in range(ncpu - load_n, ncpu))
    server_cpus = ",".join(str(c) for c in range(ncpu - load_n if ncpu > 2 else ncpu))
    _raise_fd_limit()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for case in CASES:
            r = measure(workers, case, args.duration, load_cpus, server_cpus)
            print(f"--workers {workers:2} {r['case']:11} {r['rps']:>10,.0f} req/s  p99 {r['p99']:.2f} ms", flush=True)
            rows.append(r)
    lines = [
        "# Multi-core scaling",
        "",
        f"{_machine()}. Server on CPUs {server_cpus}, wrk on CPUs {load_cpus}, 128 connections, {args.duration} s."
        + (" With 2 CPUs the server shares them with wrk." if ncpu <= 2 else ""),
        "",
        "| workers | case | req/s | p50 ms | p99 ms | errors |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['workers']} | {r['case']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} |"
        for r in rows
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "scaling.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
