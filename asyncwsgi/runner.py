"""Process concerns for the command line only: logging, the event loop, signals, the exit status.

The embedding API (``Server``, ``serve``) never calls into this module.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import importlib
import json
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import Config
from .errors import ConfigError
from .server import Server

__all__ = ["configure_logging", "freeze_heap", "loop_factory", "run", "tune_allocator"]

logger = logging.getLogger("asyncwsgi.error")

#: glibc malloc, as the command line sets it (``tune_allocator``): free memory kept at the top of a heap rather than
#: given back to the kernel at once, and the size from which a block gets its own mapping.
MALLOC_TRIM_THRESHOLD = 16 * 1024 * 1024
MALLOC_MMAP_THRESHOLD = 1024 * 1024
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: Environment variables through which the user already tells glibc how to do this.
_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """On glibc, keep up to ``MALLOC_TRIM_THRESHOLD`` of freed memory for reuse instead of returning it to the kernel.

    glibc gives the top of its heap back once more than 128 KiB there is free, so a server whose requests carry
    tens of KiB of body each (a 64 KiB upload is one 64 KiB bytes object from the parser) keeps shrinking and
    regrowing its heap, and every regrown page costs a page fault: 5-15 per request in the 64 KiB POST benchmark,
    a third of the server's CPU time. Blocks of ``MALLOC_MMAP_THRESHOLD`` and more still get their own mapping,
    returned when freed. Skipped (False) off glibc, or when the environment already sets glibc's malloc tuning.
    """
    if any(name in os.environ for name in _MALLOC_ENV):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) and mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))


def configure_logging(level: str, log_config: str | None = None) -> None:
    """Default handlers on stderr for asyncwsgi's loggers, then the user's dictConfig file on top, if any."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(message)s"))
    for name in ("asyncwsgi.error", "asyncwsgi.access"):
        log = logging.getLogger(name)
        log.setLevel(level.upper())
        log.handlers[:] = [handler]
        log.propagate = False
    if log_config:
        config = load_log_config(log_config)
        config.setdefault("version", 1)
        config.setdefault("disable_existing_loggers", False)
        try:
            logging.config.dictConfig(config)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            raise ConfigError(f"--log-config {log_config}: {exc}") from None


def load_log_config(path: str) -> dict[str, Any]:
    """A dictConfig dict from a .json, .toml or .py file (the .py file defines ``LOGGING``)."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        elif path.endswith(".toml"):
            try:
                tomllib = importlib.import_module("tomllib")  # Python 3.11+
            except ImportError:
                raise ConfigError("--log-config: TOML needs Python 3.11 or later; use .json or .py") from None
            with open(path, "rb") as f:
                data = tomllib.load(f)
        elif path.endswith(".py"):
            namespace: dict[str, Any] = {"__file__": path}
            with open(path, encoding="utf-8") as f:
                exec(compile(f.read(), path, "exec"), namespace)  # the user's own config file
            data = namespace.get("LOGGING")
        else:
            raise ConfigError(f"--log-config {path}: use a .json, .toml or .py file")
    except OSError as exc:
        raise ConfigError(f"--log-config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSON and TOML decode errors
        raise ConfigError(f"--log-config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--log-config {path}: expected a dictConfig mapping (a .py file defines LOGGING)")
    return data


def freeze_heap() -> None:
    """Collect once, then take everything still alive (the app, its modules, the server) out of the cyclic garbage
    collector's later passes (``gc.freeze``). Those objects live as long as the process; without this, every full
    collection walks all of them: with Flask loaded about 35,000 objects, a 20 ms pause every few thousand requests.
    Called once the app is imported, before serving."""
    gc.collect()
    gc.freeze()


def loop_factory(name: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop ``--loop`` asks for: ``auto`` takes uvloop when it imports, the stdlib loop otherwise."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(app: Any, config: Config) -> int:
    """Serve until SIGINT/SIGTERM; return the exit status (0 after a clean graceful shutdown)."""
    loop_name, factory = loop_factory(config.loop)
    freeze_heap()
    loop = factory()
    try:
        return loop.run_until_complete(_main(app, config, loop_name))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _main(app: Any, config: Config, loop_name: str) -> int:
    loop = asyncio.get_running_loop()
    server = Server(app, config)
    stop = asyncio.Event()
    forced: list[asyncio.Future[int]] = []
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            logger.info("received %s: shutting down gracefully (up to %gs)", name, config.timeout_graceful)
            stop.set()
        else:
            logger.warning("received %s again: cutting in-flight requests now", name)
            forced.append(asyncio.ensure_future(server.shutdown(0)))

    # Handlers first: a supervisor may signal as soon as we say we listen, and that must already be graceful.
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    try:
        await server.start()
        for addr in server.addresses:
            logger.info("listening on %s", _describe(addr, tls=bool(config.ssl_certfile)))
        logger.info("loop %s, up to %d worker threads, pid %d", loop_name, config.threads, os.getpid())
        await stop.wait()
        cut = await server.shutdown(config.timeout_graceful)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if cut:
        logger.error("shutdown cut %d request(s) that did not finish in time", cut)
        return 1
    logger.info("shutdown complete")
    return 0


def _describe(addr: Any, tls: bool = False) -> str:
    if isinstance(addr, str):
        return f"unix:{addr}"
    host, port = addr[0], addr[1]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in str(host) else f"{scheme}://{host}:{port}"
