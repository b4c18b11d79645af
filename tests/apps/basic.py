"""Small WSGI apps used across tests; each wrapped in wsgiref.validate where PEP conformance matters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from wsgiref.validate import validator


def _hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _echo(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Echo the request body back, with the method and path in headers."""
    parts = []
    while True:
        chunk = environ["wsgi.input"].read(65536)
        if not chunk:
            break
        parts.append(chunk)
    body = b"".join(parts)
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Method", environ["REQUEST_METHOD"]),
            ("X-Path", environ["PATH_INFO"]),
        ],
    )
    return [body]


hello = validator(_hello)
echo = validator(_echo)
