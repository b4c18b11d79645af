"""Apps for the worker-process tests (``tests/test_workers.py``): each response says which process answered.

- ``app``: ``GET /`` answers ``pid=<worker pid> imported_by=<pid of the process that imported this module>`` (with
  ``--preload`` the importer is the supervisor, otherwise each worker); ``GET /slow?ms=N`` first writes
  ``app: in flight <pid>`` on ``wsgi.errors`` (so a test sees the request has reached the app), sleeps N ms (a
  simulated slow request) and then answers ``slow done pid=<pid>``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

#: The process that imported this module.
IMPORTED_BY = os.getpid()
#: The longest ``/slow`` sleeps, whatever it is asked.
SLOW_LIMIT_MS = 20000


def _app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    pid = os.getpid()
    if environ["PATH_INFO"] == "/slow":
        ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["1000"])[0])
        environ["wsgi.errors"].write(f"app: in flight {pid}\n")
        environ["wsgi.errors"].flush()
        time.sleep(min(ms, SLOW_LIMIT_MS) / 1000)
        body = f"slow done pid={pid}".encode()
    else:
        body = f"pid={pid} imported_by={IMPORTED_BY}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
