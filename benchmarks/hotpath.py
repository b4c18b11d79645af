"""Instructions per request on the server's own path, without threads, sockets or the load generator's noise.

``python benchmarks/hotpath.py [--app hello|browser|flask|post] [--requests N]`` feeds N requests through one
``HTTPConnection`` over a fake transport: every parse, environ, app call, response head and write runs as it does in
the server, but the worker's job and the loop's drain run inline, one after the other, on this thread. The requests
are wrk's (one header field), except ``browser``: /hello with the 13 fields a browser sends.

``--callgrind`` runs that twice under valgrind's callgrind (N and N + 1000 requests) and prints the difference per
request: a count of machine instructions, repeatable to a few tenths of a percent (string hashing is seeded the same
in every run) on a machine whose wall-clock timings vary by 10-30% from run to run. Use it before and after a change
to the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwsgi.server import Server  # noqa: E402
from asyncwsgi.wsgi.bridge import LoopChannel  # noqa: E402

REQUESTS = {
    "hello": b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "flask": b"GET /json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    # /hello as a browser asks for it: the header fields a real client sends, each parsed and put in the environ
    "browser": (
        b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: keep-alive\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
        b"Referer: http://127.0.0.1:8080/\r\nCookie: session=0123456789abcdef; theme=dark\r\n"
        b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n"
        b"Sec-Fetch-Site: same-origin\r\nPriority: u=0, i\r\n\r\n"
    ),
    # the post-64k case: the whole request in one read, as it mostly arrives over loopback
    "post": b"POST /post HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 65536\r\n\r\n" + b"a" * 65536,
}


class _Loop(asyncio.AbstractEventLoop):
    """What a connection asks of its loop on the hot path: the time (``call_soon`` is never reached)."""

    def time(self) -> float:
        return time.monotonic()


class _Transport:
    def __init__(self) -> None:
        self.sent = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.sent += sum(map(len, chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("the connection closed: a request failed")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connection(app_name: str) -> Callable[[int], int]:
    """A connection ready to serve requests inline: ``serve(n)`` returns the response bytes written so far."""
    from benchmarks import apps

    app = apps.flask if app_name == "flask" else apps.app  # "browser" asks the router for /hello
    jobs: list[tuple[Callable[[Any], object], Any]] = []
    drains: list[Callable[[], object]] = []
    server = Server(app, port=0, access_log=False)
    # What start() sets up, replaced by inline stand-ins (the attributes connections read per request).
    server.loop = _Loop()
    server.channel = LoopChannel(drains.append, drains.append)
    server.submit = lambda fn, arg: jobs.append((fn, arg))
    server._all_closed = asyncio.Event()  # what start() makes; connection_opened clears it
    conn = server._make_protocol()
    transport = _Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    request = REQUESTS[app_name]

    def serve(n: int) -> int:
        for _ in range(n):
            conn.data_received(request)
            while jobs:
                fn, arg = jobs.pop()
                fn(arg)
            while drains:
                drains.pop()()
        return transport.sent

    return serve


def _callgrind_total(app_name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                __file__,
                "--app",
                app_name,
                "--requests",
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # str hashes (dict probing) the same from run to run
        ).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=sorted(REQUESTS), default="hello")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--callgrind", action="store_true", help="print instructions per request (needs valgrind)")
    args = parser.parse_args()
    if not args.callgrind:
        serve = connection(args.app)
        serve(10)  # first-request costs (lazy imports, caches) are not the hot path
        start = time.perf_counter()
        sent = serve(args.requests)
        elapsed = time.perf_counter() - start
        print(f"{args.requests} requests, {sent} bytes in all, {elapsed / args.requests * 1e6:.2f} us per request")
        return 0
    if shutil.which("valgrind") is None:
        print("--callgrind needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    base = _callgrind_total(args.app, args.requests)
    more = _callgrind_total(args.app, args.requests + 1000)
    print(f"{args.app}: {(more - base) / 1000:,.0f} instructions per request (callgrind)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
