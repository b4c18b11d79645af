"""Graceful shutdown under load: clients keep sending keep-alive and pipelined requests while the server stops.

Every response a client receives must be complete (its full declared body); a request may go unanswered only by the
connection closing or being refused before any byte of its response, never with half a response. Requests already
in the app when the shutdown starts are all answered.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..helpers import RawClient

BODY = b"x" * 20_000


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    time.sleep(0.002)  # some work, so that requests are in flight when the shutdown comes
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BODY)))])
    return [BODY]


class Client(threading.Thread):
    """Sends requests on keep-alive connections (some pipelined two at a time) until refused; bounded."""

    def __init__(self, port: int, pipelined: bool) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.pipelined = pipelined
        self.complete = 0
        self.problems: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 20
        for _ in range(2000):  # bounded in count and in time
            if time.monotonic() > deadline:
                return
            try:
                c = RawClient("127.0.0.1", self.port, timeout=10)
            except OSError:
                return  # refused: the server has stopped listening
            try:
                self._use(c)
            finally:
                c.close()

    def _use(self, c: RawClient) -> None:
        for _ in range(20):
            n = 2 if self.pipelined else 1
            try:
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * n)
            except OSError:
                return
            for _ in range(n):
                try:
                    head = c.read_head()
                except (ConnectionError, OSError):
                    return  # closed before any byte of this response: allowed
                status = head.split(b"\r\n", 1)[0]
                if status != b"HTTP/1.1 200 OK":
                    self.problems.append(f"unexpected status line {status!r}")
                    return
                try:
                    body = c.read_exactly(len(BODY))
                except (ConnectionError, OSError) as exc:
                    self.problems.append(f"half a response: the body broke off ({exc})")
                    return
                if body != BODY:
                    self.problems.append("a corrupted body")
                    return
                self.complete += 1
                if b"connection: close" in head.lower():
                    return


def test_shutdown_under_load_loses_no_response(server) -> None:  # type: ignore[no-untyped-def]
    s = server(app, threads=16)
    port = s.port
    clients = [Client(port, pipelined=i % 2 == 1) for i in range(6)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 10
    while sum(c.complete for c in clients) < 300 and time.monotonic() < deadline:  # bounded wait for load
        time.sleep(0.01)
    assert sum(c.complete for c in clients) >= 300, "the load never got going"
    cut = s.stop(timeout=10)
    for c in clients:
        c.join(15)
        assert not c.is_alive()
    assert cut == 0
    problems = [p for c in clients for p in c.problems]
    assert problems == []
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # refused after the shutdown
