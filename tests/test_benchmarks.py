"""``benchmarks/hotpath.py`` drives a connection with the server's own objects and inline stand-ins for the loop, the
pool and the transport: it must keep up with how those objects are built, or it measures nothing (or fails only
when someone needs it)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks import hotpath
from benchmarks import run as bench_run


@pytest.mark.parametrize("app", sorted(hotpath.REQUESTS))
def test_hotpath_serves_every_request_it_is_given_in_full(app: str) -> None:
    serve = hotpath.connection(app)
    first = serve(1)
    assert first > 0, "no response was written"
    assert serve(10) == 11 * first, "the responses to identical requests differ in size, or some were not written"


# -- benchmarks/run.py: what it measures besides wrk's own figures ----------------------------------------------------

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:40123/hello
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.31ms  362.43us   6.11ms   88.42%
    Req/Sec    49.52k     2.11k   52.37k    70.00%
  Latency Distribution
     50%    1.21ms
     75%    1.38ms
     90%    1.62ms
     99%    2.11ms
  98543 requests in 2.00s, 11.75MB read
Requests/sec:  49258.13
Transfer/sec:      5.87MB
"""


def test_wrk_output_gives_requests_completed_and_latencies() -> None:
    stats = bench_run._parse_wrk(WRK_OUTPUT)
    assert stats == {"rps": 49258.13, "p50": 1.21, "p99": 2.11, "errors": 0, "requests": 98543}


def test_cpu_time_counts_the_whole_process_tree() -> None:
    """A server that runs its app in a child process (gunicorn, granian) is charged for the child's CPU too."""
    burner = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"  # bounded: 0.3 s of CPU
        "print('burnt', flush=True)\n"
        "sys.stdin.read()"  # until the parent closes our stdin
    )
    parent = (  # the child is started by a thread other than the main one, alive all along: listed under it in /proc
        "import subprocess, sys, threading\n"
        "def run():\n"
        f"    child = subprocess.Popen([sys.executable, '-c', {burner!r}],\n"
        "                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "    print(child.stdout.readline().decode().strip(), flush=True)\n"
        "    sys.stdin.read()\n"
        "    child.stdin.close(); child.stdout.close(); child.wait(10)\n"
        "t = threading.Thread(target=run); t.start(); t.join(60)"
    )
    used, pid = _tree_cpu_when_ready(parent, "burnt")  # the child has used its 0.3 s and waits
    assert 0.25 <= used < 5.0, used
    assert bench_run._tree_cpu_seconds(pid) == 0.0  # gone: nothing, not an error


def test_cpu_time_of_a_child_that_exited_still_counts() -> None:
    """A worker process that exits during the load (a server recycling its workers) took its CPU time with it from
    the tree; once its parent has reaped it, the parent's children's time holds it."""
    burner = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"  # bounded: 0.3 s
    parent = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {burner!r}], check=True, timeout=30)\n"
        "print('reaped', flush=True)\n"
        "sys.stdin.read()"
    )
    used, _ = _tree_cpu_when_ready(parent, "reaped")
    assert used >= 0.25, used


def _tree_cpu_when_ready(parent: str, ready: str) -> tuple[float, int]:
    """Run ``parent`` (Python source) until it prints ``ready``; its tree's CPU time then, and its pid. It ends when
    its stdin closes."""
    with subprocess.Popen(
        [sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as p:
        assert p.stdout is not None and p.stdin is not None
        try:
            assert p.stdout.readline().strip() == ready
            return bench_run._tree_cpu_seconds(p.pid), p.pid
        finally:
            p.stdin.close()
            p.wait(10)


def test_reported_cpu_per_request_is_the_median_of_the_rounds() -> None:
    rounds = [
        bench_run.Result("asyncwsgi", "hello", rps=rps, cpu_us_per_req=cpu)
        for rps, cpu in ((40_000, 30.0), (50_000, 10.0), (45_000, 20.0))
    ]
    r = bench_run._median_result(rounds)
    assert (r.rps, r.cpu_us_per_req, r.rounds) == (45_000, 20.0, [40_000, 50_000, 45_000])
    case = next(c for c in bench_run.CASES if c.name == "hello")
    spec = next(s for s in bench_run.SERVERS if s.name == "asyncwsgi")
    meta = {"date": "2026-01-01", "machine": "test", "rounds": "3", "duration": "5"}
    text = bench_run.report({"hello": {"asyncwsgi": r}}, [spec], [case], meta)
    header, _, row = text.split("## hello")[1].strip().splitlines()[2:5]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[header.strip("|").split("|").index(" CPU us/req ")] == "20.0"


def test_steal_is_read_from_the_machine_and_reported() -> None:
    before = bench_run._cpu_jiffies()
    t = time.process_time()
    while time.process_time() - t < 0.05:  # bounded: 50 ms of CPU, so the machine's clock moves
        pass
    after = bench_run._cpu_jiffies()
    assert 0 <= before[0] <= after[0] and before[1] < after[1]
    assert 0.0 <= bench_run._steal_pct(before, after) <= 100.0
    assert bench_run._steal_pct((10, 1000), (30, 1100)) == 20.0
    assert bench_run._steal_pct((0, 0), (0, 0)) == 0.0  # /proc/stat unreadable: no figure, not an error
    meta = {"date": "2026-01-01", "machine": "test", "rounds": "1", "duration": "5", "steal_pct": "12.5"}
    assert "gave 12.5% of the two CPUs' time to other guests" in bench_run.report({}, [], [], meta)
    del meta["steal_pct"]  # results from before steal was measured
    assert "guests" not in bench_run.report({}, [], [], meta)
