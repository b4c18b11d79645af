"""The app for ``slowclients.py``: a 64 MiB response streamed in 64 KiB chunks (``/warm``: a small one), and its
ASGI wrappings."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

CHUNK = b"z" * 65536


def _big() -> Iterator[bytes]:
    for _ in range(1024):
        yield CHUNK


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/warm":  # one small request before measuring: one-time costs are not per client
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _big()


def _ours() -> Any:
    from asyncwsgi import to_asgi

    return to_asgi(app)


def _a2wsgi() -> Any:
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(app, workers=64)


ours = _ours()
try:
    a2wsgi_app = _a2wsgi()
except ImportError:  # pragma: no cover - a2wsgi is in the bench extra
    a2wsgi_app = None
