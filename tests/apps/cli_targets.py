"""Import targets for the command-line tests: each attribute names an application one way or another.

- ``application`` / ``app``: two distinct apps, to check which one a bare ``module`` target picks;
- ``namespace.app``: a dotted attribute;
- ``NOT_CALLABLE``: an attribute that is not an application;
- ``create_app`` / ``failing_factory`` / ``factory_returning_str``: ``--factory`` targets;
- ``blocking_app``: an app that announces itself on ``wsgi.errors`` and then blocks until the test writes one byte
  to the pipe whose read end it inherited (``ASYNCWSGI_TEST_RELEASE_FD``), so a test controls exactly when an
  in-flight request finishes, across processes;
- ``upload_app``: announces itself, then reads the whole request body and answers with its size and SHA-256;
- ``gc_app``: answers with ``gc.get_freeze_count()`` and its pid (objects the server took out of the collector's
  way before serving);
- ``exit_app``: calls ``sys.exit(3)`` on ``/exit`` (an app bug: it must not stop or hang the server), answers
  200 elsewhere.

``blocking_app`` and ``upload_app`` answer ``/barrier`` at once (the tests keep such a connection idle to see when
a shutdown has begun).
"""

from __future__ import annotations

import gc
import hashlib
import os
import select
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

RELEASE_FD_ENV = "ASYNCWSGI_TEST_RELEASE_FD"
#: The longest ``blocking_app`` waits for its release before giving up (it never returns early on its own).
BLOCK_LIMIT = 30.0
#: ``blocking_app``'s body: many distinct lines, so a truncated body cannot pass for a whole one.
BLOCKING_BODY = b"".join(b"line %06d of the slow response\n" % i for i in range(8000))

NOT_CALLABLE = 42


def _text_app(text: str) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = f"{text} {environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    return validator(app)


application = _text_app("cli_targets.application")
app = _text_app("cli_targets.app")
namespace = types.SimpleNamespace(app=_text_app("cli_targets.namespace.app"))


def create_app() -> Callable[..., Iterable[bytes]]:
    return _text_app("made by create_app")


def failing_factory() -> Any:
    raise LookupError("factory cannot find its settings: 7d41c2")


def factory_returning_str() -> Any:
    return "not an application"


def _blocking(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    if environ["PATH_INFO"] == "/barrier":  # answered at once
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return iter([b"barrier"])
    fd = int(os.environ[RELEASE_FD_ENV])
    environ["wsgi.errors"].write(f"app: in flight {environ['PATH_INFO']}\n")
    ready, _, _ = select.select([fd], [], [], BLOCK_LIMIT)
    if not ready or os.read(fd, 1) != b"r":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return iter([b"not sent"])
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(BLOCKING_BODY)))],
    )
    step = 16384
    return iter([BLOCKING_BODY[i : i + step] for i in range(0, len(BLOCKING_BODY), step)])


blocking_app = validator(_blocking)


def _upload(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/barrier":  # answered at once
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return [b"barrier"]
    environ["wsgi.errors"].write(f"app: reading {environ['PATH_INFO']}\n")
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = environ["wsgi.input"].read(65536)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    body = f"{size} {digest.hexdigest()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


upload_app = validator(_upload)


def _exit(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/exit":
        sys.exit(3)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"alive"]


exit_app = validator(_exit)


def gc_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = f"{gc.get_freeze_count()} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
