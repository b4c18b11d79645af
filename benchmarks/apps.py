"""The WSGI apps every server in the benchmark serves, routed by path from one callable (``app``).

``asgi`` is the same app wrapped by a2wsgi, for ASGI-only servers (uvicorn).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

HELLO = b"Hello, World!"
BODY_16K = b"x" * 16384
CHUNK_64K = b"y" * 65536


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def _body16k(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "16384")])
    return [BODY_16K]


def _stream() -> Iterator[bytes]:
    for _ in range(16):
        yield CHUNK_64K


def _stream1m(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream")])  # no Content-Length: streamed
    return _stream()


def _post(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    n = 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        n += len(chunk)
    body = str(n).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _sleep(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    time.sleep(0.02)
    return hello(environ, start_response)


_ROUTES = {"/hello": hello, "/16k": _body16k, "/stream": _stream1m, "/post": _post, "/sleep": _sleep}


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    handler = _ROUTES.get(environ.get("PATH_INFO", ""), hello)
    return handler(environ, start_response)


def _make_flask() -> Any:
    from flask import Flask, jsonify

    flask_app = Flask("bench")

    @flask_app.get("/json")
    def json_route() -> Any:
        return jsonify(message="Hello, World!", items=[1, 2, 3])

    return flask_app


try:
    flask = _make_flask()
except ImportError:  # pragma: no cover - flask is in the bench extra
    flask = None


#: Threads of the two WSGI-to-ASGI adapters; benchmarks/run.py sets it per case (BENCH_THREADS).
ADAPTER_THREADS = int(os.environ.get("BENCH_THREADS", "64"))


def _asgi(wsgi: Any) -> Any:
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(wsgi, workers=ADAPTER_THREADS)


try:
    asgi = _asgi(app)
    asgi_flask = _asgi(flask) if flask is not None else None
except ImportError:  # pragma: no cover
    asgi = asgi_flask = None

# asyncwsgi's own WSGI-to-ASGI adapter, to compare with a2wsgi under the same ASGI server.
from asyncwsgi import to_asgi  # noqa: E402

ours = to_asgi(app, threads=ADAPTER_THREADS)
ours_flask = to_asgi(flask, threads=ADAPTER_THREADS) if flask is not None else None
