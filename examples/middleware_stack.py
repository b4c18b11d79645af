"""A stack of ordinary WSGI middleware around a Flask app, served by asyncwsgi unchanged.

From the outside in:

1. ``RequestID``: a small hand-written middleware; it puts an id in the environ and adds an ``X-Request-ID``
   response header (it wraps ``start_response``, as WSGI middleware does).
2. werkzeug's ``ProxyFix``: behind one reverse proxy, trusts its ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` /
   ``-Prefix`` headers and rewrites ``REMOTE_ADDR``, ``wsgi.url_scheme``, ``HTTP_HOST`` and ``SCRIPT_NAME``.
3. werkzeug's ``DispatcherMiddleware``: ``/health`` goes to a plain WSGI function, everything else to Flask.

Serve it from the repository root (``pip install -e . flask``)::

    asyncwsgi serve examples.middleware_stack:app --port 8000

and ask as a proxy would::

    curl -H 'X-Forwarded-For: 203.0.113.7' -H 'X-Forwarded-Proto: https' \\
         -H 'X-Forwarded-Host: example.com' -H 'X-Forwarded-Prefix: /app' http://127.0.0.1:8000/whoami
    # {"remote_addr": "203.0.113.7", "scheme": "https", "url": "https://example.com/app/whoami", ...}
    curl http://127.0.0.1:8000/health

Only trust forwarded headers when a proxy you control sets them (``x_for=1``: one proxy in front).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify, request, url_for
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

flask_app = Flask(__name__)


@flask_app.get("/whoami")
def whoami() -> Response:
    return jsonify(
        remote_addr=request.remote_addr,
        scheme=request.scheme,
        host=request.host,
        script_root=request.script_root,
        url=url_for("whoami", _external=True),
        request_id=request.environ.get("example.request_id"),
    )


def health(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"ok {environ['SCRIPT_NAME']}{environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class RequestID:
    """Give every request an id, in ``environ["example.request_id"]`` and the ``X-Request-ID`` response header."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the server calls the app from several threads at once

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with self._lock:
            request_id = f"req-{next(self._ids)}"
        environ["example.request_id"] = request_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("X-Request-ID", request_id)], exc_info)

        return self.app(environ, start)


app = RequestID(
    ProxyFix(
        DispatcherMiddleware(flask_app, {"/health": health}),
        x_for=1,
        x_proto=1,
        x_host=1,
        x_prefix=1,
    )
)
