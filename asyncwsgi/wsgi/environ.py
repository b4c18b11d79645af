"""PEP 3333 environ: a per-connection base dict copied per request, plus the request's own keys.

``connection_environ`` runs on the loop thread once per connection; ``request_environ`` runs on the worker thread at
the start of each call, so the loop does no per-request string work beyond parsing.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

import httptools

from ..protocol.parser import RequestHead
from .files import FileWrapper

__all__ = ["ErrorStream", "connection_environ", "remote_of", "request_environ"]


class ErrorStream:
    """``wsgi.errors``: text written by the app goes to the ``asyncwsgi.error`` logger, one record per line."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("asyncwsgi.error")

    def write(self, s: str) -> int:
        for line in s.splitlines():
            if line.strip():
                self._logger.error("%s", line)
        return len(s)

    def writelines(self, seq: Any) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        pass


ERRORS = ErrorStream()

# Header name (raw bytes) -> environ key; "" means "not passed to the app". Bounded so hostile clients sending
# endless distinct names cannot grow it.
_KEY_CACHE: dict[bytes, str] = {}
_KEY_CACHE_MAX = 1024
_SPECIAL = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}


def _header_key(name: bytes) -> str:
    """The environ key of a header name not in ``_KEY_CACHE`` (the caller looked), cached while there is room."""
    lname = name.lower()
    if lname in _SPECIAL:
        key = _SPECIAL[lname]
    elif b"_" in name:
        # "X_Forwarded_For" would map to the same key as "X-Forwarded-For": a spoofing vector behind proxies
        # that only filter the dash spelling. Drop such headers, as gunicorn does.
        key = ""
    else:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
    if len(_KEY_CACHE) < _KEY_CACHE_MAX:
        _KEY_CACHE[name] = key
    return key


def connection_environ(
    sockname: Any,
    url_scheme: str,
    root_path: str,
    multiprocess: bool,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The keys shared by every request through one listening socket (loop thread; the server caches it, so an
    idle connection costs no dict of its own)."""
    env: dict[str, Any] = {
        "SCRIPT_NAME": root_path,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": ERRORS,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    if isinstance(sockname, tuple):
        env["SERVER_NAME"] = str(sockname[0])
        env["SERVER_PORT"] = str(sockname[1])
    else:
        env["SERVER_NAME"] = "localhost" if not sockname else str(sockname)
        env["SERVER_PORT"] = ""
    if url_scheme == "https":
        env["HTTPS"] = "on"
    env.update(extra)
    return env


def remote_of(peername: Any) -> tuple[str, str] | None:
    """``(REMOTE_ADDR, REMOTE_PORT)`` of a TCP peer; None for a unix socket."""
    if isinstance(peername, tuple) and peername:
        return str(peername[0]), str(peername[1])
    return None


def request_environ(
    base: dict[str, Any],
    head: RequestHead,
    root_path: str,
    wsgi_input: Any,
    remote: tuple[str, str] | None,
) -> dict[str, Any]:
    """The full environ of one request (worker thread)."""
    target = head.target
    raw_uri = target.decode("latin-1")  # one decode; the parts below are slices of it (latin-1: byte for char)
    host: bytes | None = None
    if raw_uri[:1] == "/":  # origin-form
        path, _, query = raw_uri.partition("?")
    elif raw_uri == "*":
        path, query = "*", ""
    else:
        # absolute-form (RFC 9112 section 3.2.2): the target's authority replaces Host.
        url = httptools.parse_url(target)
        path = (url.path or b"/").decode("latin-1")
        query = (url.query or b"").decode("latin-1")
        if url.host:
            host = url.host + (b":%d" % url.port if url.port else b"")
    if "#" in path:
        path = path.partition("#")[0]
    if "%" in path:
        # PEP 3333: PATH_INFO is the unquoted path's bytes as latin-1 characters; unquote with latin-1 does exactly
        # that (escapes become bytes, the other characters, already latin-1 decoded, pass through).
        path = unquote(path, "latin-1")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        path = path[len(root_path) :]
    env = base.copy()  # a copy and a store per key: fewer instructions than one dict display with **base
    if remote is not None:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = remote
    else:
        env["REMOTE_ADDR"] = ""
    env["REQUEST_METHOD"] = head.method
    env["PATH_INFO"] = path
    env["QUERY_STRING"] = query
    env["RAW_URI"] = raw_uri
    env["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == "1.1" else "HTTP/1.0"
    env["wsgi.input"] = wsgi_input
    cached = _KEY_CACHE.get
    for name, value in head.headers:
        key = cached(name)
        if not key:  # not cached yet (None), or not passed to the app ("")
            if key is None:
                key = _header_key(name)
            if not key:
                continue
        val = value.decode("latin-1")
        if key in env:
            sep = "; " if key == "HTTP_COOKIE" else ", "
            env[key] = env[key] + sep + val
        else:
            env[key] = val
    if host is not None:
        env["HTTP_HOST"] = host.decode("latin-1")
    if not env["SERVER_PORT"]:
        _server_from_host(env)
    return env


def _server_from_host(env: dict[str, Any]) -> None:
    """A unix socket has no name or port; PEP 3333 wants both non-empty: take them from Host, as a client sees us."""
    host = env.get("HTTP_HOST", "")
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit():
        name, port = host, ""
    env["SERVER_NAME"] = name or "localhost"
    env["SERVER_PORT"] = port or ("443" if env["wsgi.url_scheme"] == "https" else "80")
