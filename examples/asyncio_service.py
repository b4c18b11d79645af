"""An asyncio service with a Flask admin UI served by ``asyncwsgi.Server`` on the same event loop.

The service's own work is a background task: a ticker that counts beats. Next to it, ``asyncwsgi.Server`` serves a
small Flask admin app on the same loop. The Flask views run on the server's worker threads, so a slow view never
blocks the ticker; they read and change the ticker's state through a thread-safe object (``Ticker``).

Run it from the repository root (with the package installed: ``pip install -e . flask``)::

    python examples/asyncio_service.py            # port 8000
    python examples/asyncio_service.py 8080       # the port as an argument
    PORT=0 python examples/asyncio_service.py     # any free port; the address is printed

It prints ``listening on http://127.0.0.1:PORT`` once it accepts connections. Then::

    curl http://127.0.0.1:PORT/                                # the admin page
    curl http://127.0.0.1:PORT/api/status                      # {"beats": ..., "interval": ..., "uptime": ...}
    curl -d interval=0.5 http://127.0.0.1:PORT/api/interval    # change the ticker's interval
    curl 'http://127.0.0.1:PORT/api/wait?beats=50'             # streams a line now, another at beat 50

``SIGTERM`` or Ctrl-C (handlers installed by this program's own ``main``, not by the server) stops both: the server
stops accepting and lets in-flight requests finish, then the ticker is cancelled; the exit status is 0. Environment:
``HOST`` (default 127.0.0.1), ``PORT`` (default 8000), ``TICK_INTERVAL`` in seconds (default 1.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

import asyncwsgi


class Ticker:
    """The service's state. The loop's ticker task writes it, the admin views (worker threads) read and change it;
    one ``threading.Condition`` guards it, held only for a few operations at a time on either side."""

    def __init__(self, interval: float) -> None:
        self._cond = threading.Condition()
        self.beats = 0
        self.interval = interval
        self.started = time.monotonic()

    def beat(self) -> None:
        with self._cond:
            self.beats += 1
            self._cond.notify_all()

    def wait_for(self, beats: int, timeout: float) -> bool:
        """Block (a worker thread) until the ticker has counted ``beats`` beats, or ``timeout`` seconds passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self.beats >= beats, timeout)

    def status(self) -> dict[str, float]:
        with self._cond:
            return {"beats": self.beats, "interval": self.interval, "uptime": time.monotonic() - self.started}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.beat()


PAGE = """<!doctype html>
<html><head><title>Ticker admin</title></head>
<body><h1>Ticker admin</h1>
<p id="beats">{beats} beats, one every {interval} s</p>
<form method="post" action="api/interval"><input name="interval" value="{interval}"><button>Set</button></form>
</body></html>
"""


def create_admin(ticker: Ticker) -> Flask:
    admin = Flask(__name__)

    @admin.get("/")
    def page() -> str:
        status = ticker.status()
        return PAGE.format(beats=int(status["beats"]), interval=html.escape(str(status["interval"])))

    @admin.get("/api/status")
    def status() -> Response:
        return jsonify(ticker.status())

    @admin.post("/api/interval")
    def set_interval() -> tuple[Response, int]:
        try:
            interval = float(request.form["interval"])
        except (KeyError, ValueError):
            return jsonify(error="interval: a number of seconds is required"), 400
        if not 0.001 <= interval <= 60:
            return jsonify(error="interval: between 0.001 and 60 seconds"), 400
        ticker.interval = interval  # read by the ticker task before each sleep
        return jsonify(ticker.status()), 200

    @admin.get("/api/wait")
    def wait() -> Response:
        """Newline-delimited JSON: one line at once, the next when the ticker reaches ``beats`` (or ``timeout``)."""
        target = request.args.get("beats", type=int, default=0)
        timeout = min(request.args.get("timeout", type=float, default=10.0), 60.0)

        def lines() -> Iterator[str]:
            yield json.dumps({"waiting_for": target}) + "\n"
            reached = ticker.wait_for(target, timeout)
            yield json.dumps({"reached": reached, "beats": ticker.beats}) + "\n"

        return Response(lines(), mimetype="application/x-ndjson")

    return admin


async def main(host: str, port: int, interval: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    ticker = Ticker(interval)
    ticker_task = asyncio.create_task(ticker.run(), name="ticker")
    server = asyncwsgi.Server(create_admin(ticker), host=host, port=port, access_log=False)
    try:
        await server.start()
        bound_host, bound_port = server.address
        print(f"listening on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()
        print("shutting down", flush=True)
        # The server first: in-flight admin requests may be waiting on the ticker.
        cut = await server.shutdown(timeout=10)
    finally:
        ticker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker_task
        for sig in signals:
            loop.remove_signal_handler(sig)
    print(f"stopped after {ticker.beats} beats; {cut} request(s) cut", flush=True)
    return 0 if cut == 0 else 1


def _port(argv: list[str]) -> int:
    return int(argv[1]) if len(argv) > 1 else int(os.environ.get("PORT", "8000"))


if __name__ == "__main__":
    sys.exit(
        asyncio.run(
            main(os.environ.get("HOST", "127.0.0.1"), _port(sys.argv), float(os.environ.get("TICK_INTERVAL", "1.0")))
        )
    )
