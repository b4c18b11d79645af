"""The one source of truth for every option.

``Config`` is a frozen dataclass. Each field carries its CLI spelling and help text in its metadata; ``cli.py``
builds the argument parser from these fields and ``Server(**options)`` accepts the same names, so an option is
defined exactly once. Validation happens in ``Config.__post_init__`` and raises ``ConfigError`` with a one-line
message.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["Config"]

LoopName = Literal["auto", "asyncio", "uvloop"]
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _opt(default: Any, help: str, *flags: str, **extra: Any) -> Any:
    """A dataclass field whose metadata drives the CLI (``flags`` defaults to ``--field-name``)."""
    meta = {"help": help, "flags": flags, **extra}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in Config")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """Every server option, its default and why.

    Fields without ``cli=False`` in their metadata are command-line options; all of them are keyword arguments of
    ``asyncwsgi.Server`` and ``asyncwsgi.serve``.
    """

    # -- where to listen -------------------------------------------------------------------------------------------
    host: str = _opt("127.0.0.1", "Interface to bind. Local only unless asked: use 0.0.0.0 to listen on all.")
    port: int = _opt(8000, "TCP port to bind (0 picks a free one).")
    uds: str | None = _opt(None, "Bind a unix domain socket at this path instead of host/port.", metavar="PATH")
    uds_mode: str | None = _opt(
        None,
        "Permissions of the --uds socket file, in octal (e.g. 660: the owner and group may connect).",
        metavar="OCTAL",
    )
    fd: int | None = _opt(
        None,
        "Serve on an already-listening socket inherited as this file descriptor. Sockets passed by systemd socket "
        "activation (LISTEN_FDS) are used without any option.",
        metavar="N",
    )
    bind: tuple[str, ...] = _opt(
        (),
        "Gunicorn-style address: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N. Repeat to listen on several; "
        "overrides --host/--port/--uds/--fd.",
        "-b",
        "--bind",
        action="append",
        metavar="ADDRESS",
    )
    backlog: int = _opt(2048, "Maximum number of pending connections in the listen queue.")

    # -- the application -------------------------------------------------------------------------------------------
    app_dir: str = _opt(
        ".",
        "Directory put first on sys.path before importing the app (the current one by default).",
        metavar="DIR",
    )
    factory: bool = _opt(False, "Treat APP as a zero-argument callable that returns the WSGI application.")
    root_path: str = _opt(
        "",
        "Mount prefix given to the app as SCRIPT_NAME (e.g. /api when behind a proxy).",
        metavar="PATH",
    )

    # -- execution -------------------------------------------------------------------------------------------------
    threads: int = _opt(
        256,
        "Maximum worker threads running the app. A few start on demand; more only while requests wait and the CPU "
        "has room (an app waiting on I/O); idle ones stop.",
        metavar="N",
    )
    thread_idle_timeout: float = _opt(
        60.0, "Seconds an idle worker thread waits for work before it stops.", metavar="SECONDS"
    )
    loop: LoopName = _opt(
        "auto",
        "Event loop: uvloop when installed (auto), or force asyncio / uvloop.",
        choices=("auto", "asyncio", "uvloop"),
    )

    # -- time limits -----------------------------------------------------------------------------------------------
    timeout_keep_alive: float = _opt(
        5.0,
        "Close a kept-alive connection idle for this many seconds; 0 closes after every response.",
        metavar="SECONDS",
    )
    timeout_request_header: float = _opt(
        10.0,
        "Time a client has to send a whole request head, counted from the connection's start or from its first "
        "byte after an idle keep-alive; then 408 and close (slow-client protection).",
        metavar="SECONDS",
    )
    timeout_request_body: float = _opt(
        30.0,
        "Time the app waits for the next piece of a request body; then wsgi.input.read() raises an OSError and "
        "the connection closes. 0 waits forever.",
        metavar="SECONDS",
    )
    timeout_write: float = _opt(
        60.0,
        "Close a connection whose client has taken none of its response for this many seconds (its buffers stayed "
        "full), freeing the worker thread that was waiting on it. 0 waits forever.",
        metavar="SECONDS",
    )
    timeout_graceful: float = _opt(
        30.0,
        "On shutdown, how long in-flight requests (their app code, up to the response iterable's close()) may run "
        "before they are cut.",
        metavar="SECONDS",
    )

    # -- limits ----------------------------------------------------------------------------------------------------
    limit_request_line: int = _opt(
        8190,
        "Longest request target (the URL of the request line) in bytes; longer: 414.",
        metavar="BYTES",
    )
    limit_request_fields: int = _opt(100, "Most header fields in a request; more: 431.", metavar="N")
    limit_request_headers_size: int = _opt(
        65536, "Largest request header block in bytes; larger: 431.", metavar="BYTES"
    )
    limit_request_body: int | None = _opt(
        None,
        "Largest request body in bytes; larger: 413, from Content-Length before the app runs, or mid-stream for "
        "chunked bodies. Unlimited by default.",
        metavar="BYTES",
    )
    limit_concurrency: int | None = _opt(
        None,
        "Most requests in the app at once; beyond it, answer 503 with Retry-After instead of queueing. "
        "Unlimited by default (requests queue for a thread).",
        metavar="N",
    )
    limit_connections: int | None = _opt(
        None,
        "Most open connections; beyond it, new connections wait in the listen backlog instead of being accepted.",
        metavar="N",
    )

    # -- processes -------------------------------------------------------------------------------------------------
    workers: int = _opt(
        1,
        "Worker processes, each with its own event loop and thread pool, sharing the listening sockets under a "
        "supervising process that restarts them.",
        "-w",
        "--workers",
        metavar="N",
    )
    max_requests: int | None = _opt(
        None,
        "With --workers: replace a worker after it has served this many requests (a memory-leak safety net); the "
        "old one finishes its requests while its replacement already accepts.",
        metavar="N",
    )
    max_requests_jitter: int = _opt(
        0, "Add a random 0..N to each worker's --max-requests, so workers are not all replaced at once.", metavar="N"
    )
    preload: bool = _opt(False, "With --workers: import the app once in the supervisor, before starting workers.")
    reload: bool = _opt(
        False,
        "Development: restart the server when a Python file under --app-dir changes (watchfiles when installed, "
        "polling otherwise).",
    )

    # -- TLS -------------------------------------------------------------------------------------------------------
    ssl_certfile: str | None = _opt(
        None, "TLS certificate chain (PEM); with --ssl-keyfile, serve HTTPS.", metavar="PATH"
    )
    ssl_keyfile: str | None = _opt(None, "TLS private key (PEM).", metavar="PATH")
    ssl_ca_certs: str | None = _opt(
        None, "CA bundle (PEM) to verify client certificates with: clients must present one.", metavar="PATH"
    )

    # -- behind a proxy ----------------------------------------------------------------------------------------------
    proxy_headers: bool = _opt(
        False,
        "Take the client's address, scheme, host and port from Forwarded / X-Forwarded-* headers, from trusted "
        "peers only (--forwarded-allow-ips).",
    )
    forwarded_header: str = _opt(
        "x-forwarded",
        "Which headers the proxy sets, and the only ones read: x-forwarded (X-Forwarded-For/-Proto/-Host/-Port, "
        "as nginx and most load balancers) or forwarded (RFC 7239).",
        choices=("x-forwarded", "forwarded"),
    )
    forwarded_allow_ips: str = _opt(
        "127.0.0.1",
        "Proxies trusted with --proxy-headers: comma-separated IPs or CIDR networks, or * for any. Unix-socket "
        "peers are trusted.",
        metavar="IPS",
    )

    # -- logging ---------------------------------------------------------------------------------------------------
    log_level: str = _opt("info", "Logging level of the asyncwsgi loggers.", choices=LOG_LEVELS)
    access_log: bool = _opt(True, "Log one line per request to the asyncwsgi.access logger.")
    access_log_format: str | None = _opt(
        None,
        "Access log line: gunicorn-style atoms (h remote address, r request line, s status, b bytes, D "
        "microseconds, {header}i...; see asyncwsgi/accesslog.py), or 'json'. Default: Apache combined.",
        metavar="FORMAT",
    )
    log_config: str | None = _opt(
        None,
        "Logging configuration file for logging.config.dictConfig: .json, .toml, or .py defining LOGGING. Loggers: "
        "asyncwsgi.error and asyncwsgi.access.",
        metavar="PATH",
    )
    server_header: bool = _opt(True, "Send a 'Server: asyncwsgi' header unless the app sets one.")

    def __post_init__(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(msg)

        if not 0 <= self.port <= 65535:
            raise bad(f"--port must be between 0 and 65535, not {self.port}")
        if self.threads < 1:
            raise bad(f"--threads must be at least 1, not {self.threads}")
        if self.backlog < 1:
            raise bad(f"--backlog must be at least 1, not {self.backlog}")
        for name in (
            "timeout_keep_alive",
            "timeout_graceful",
            "thread_idle_timeout",
            "timeout_request_header",
            "timeout_request_body",
            "timeout_write",
        ):
            if getattr(self, name) < 0:
                raise bad(f"--{name.replace('_', '-')} must not be negative")
        for name in ("limit_request_line", "limit_request_fields", "limit_request_headers_size"):
            if getattr(self, name) < 1:
                raise bad(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("limit_request_body", "limit_concurrency", "limit_connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(f"--{name.replace('_', '-')} must be at least 1")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise bad(f"--loop must be auto, asyncio or uvloop, not {self.loop!r}")
        if self.log_level not in LOG_LEVELS:
            raise bad(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.root_path and (not self.root_path.startswith("/") or self.root_path.endswith("/")):
            raise bad(f"--root-path must start with '/' and not end with one, not {self.root_path!r}")
        bind: Any = self.bind
        if not isinstance(bind, tuple):  # accept a str or a list from embedding code
            object.__setattr__(self, "bind", (bind,) if isinstance(bind, str) else tuple(bind))
        if self.workers < 1:
            raise bad(f"--workers must be at least 1, not {self.workers}")
        if self.max_requests is not None and self.max_requests < 1:
            raise bad("--max-requests must be at least 1")
        if self.max_requests_jitter < 0:
            raise bad("--max-requests-jitter must not be negative")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise bad("--ssl-certfile and --ssl-keyfile go together")
        if self.ssl_ca_certs and not self.ssl_certfile:
            raise bad("--ssl-ca-certs needs --ssl-certfile and --ssl-keyfile")
        from .accesslog import AccessLogFormat
        from .proxy import ProxyTrust

        if self.access_log_format is not None:
            AccessLogFormat(self.access_log_format).check()
        ProxyTrust(self.forwarded_allow_ips, self.forwarded_header)  # raises ConfigError on a bad entry
        if self.uds_mode is not None:
            try:
                if not 0 <= int(self.uds_mode, 8) <= 0o777:
                    raise ValueError
            except ValueError:
                raise bad(f"--uds-mode must be octal permissions such as 660, not {self.uds_mode!r}") from None
        if self.fd is not None and self.fd < 0:
            raise bad(f"--fd must be a file descriptor number, not {self.fd}")

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied; unknown names are a ``ConfigError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @property
    def app_dir_abs(self) -> str:
        return os.path.abspath(self.app_dir)


def options_table() -> str:
    """The README's options table, generated from the fields."""
    rows = ["| flag | `Config` field | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
        if isinstance(f.default, bool):
            long = flags[-1]
            spelled = f"`{long}` / `--no-{long[2:]}`"
            default = "on" if f.default else "off"
        else:
            spelled = ", ".join(f"`{flag}`" for flag in flags)
            default = "none" if f.default in (None, ()) else "empty" if f.default == "" else f"`{f.default}`"
        rows.append(f"| {spelled} | `{f.name}` | {default} | {f.metadata['help']} |")
    return "\n".join(rows)
