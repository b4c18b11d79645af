"""Worker processes: ``--workers N``, ``--max-requests``, SIGHUP reloads, ``--reload``.

Who runs what
=============

``supervise(target, config)`` runs in the main thread of the command-line process and never returns until the
whole server has stopped. Two modes:

Workers (``--workers N``, N > 1)
    **Supervisor** (the CLI process): binds the listening sockets once, imports the app only with ``--preload``,
    forks the workers and then does nothing but supervise: a ``selectors`` loop woken by signals (through
    ``signal.set_wakeup_fd``) and by one socketpair per worker. It never accepts a connection and never runs the
    app. It restarts workers that die (back-off when they die quickly), replaces them on ``--max-requests`` and on
    SIGHUP, and turns SIGTERM/SIGINT into a graceful stop of every worker.

    **Worker** (a ``fork()`` of the supervisor): puts back the signal handlers the supervisor replaced (SIGINT
    stays ignored until it serves), imports the app (unless preloaded), runs a ``Server`` on the inherited sockets
    on a fresh event loop, and leaves with ``os._exit`` (it never returns into the CLI's code). It talks to the
    supervisor over its end of the socketpair: one byte ``+`` once it accepts connections, one byte ``R`` once it
    has served its ``--max-requests``. EOF on that socketpair means the supervisor is gone: the worker then stops
    gracefully on its own, so a killed supervisor never leaves workers behind.

Reload (``--reload``, development)
    **Reloader** (the CLI process): binds the listening sockets, starts the **server process** and watches the
    ``*.py`` files under ``--app-dir`` (watchfiles when it imports, else a stat scan every 0.5 s). On a change it
    stops the server process gracefully and starts a new one.

    **Server process**: ``python -m asyncwsgi serve APP`` with the same options minus ``--reload``, listening on the
    reloader's sockets (``--bind fd://N``). A fresh interpreter, so changed code really is imported again. It runs
    in a session of its own, so a Ctrl-C in the terminal reaches only the reloader, which forwards a single SIGTERM
    (a second signal would cut requests). With ``--workers N`` it is itself a supervisor as above.

Protocol between supervisor and workers
=======================================

- The supervisor learns that a worker exited from SIGCHLD (it then ``waitpid``\\ s each of its own pids with
  ``WNOHANG``; it never reaps or signals a pid it did not fork) and that it is ready or retiring from the
  socketpair.
- Replacing a worker (``--max-requests``, SIGHUP) starts the new one first; the old one is told to go (``Q`` on
  its socketpair) only once the new one is ready, so the listening sockets always have a ready acceptor (and the
  kernel queues connections in the backlog in between: the supervisor keeps its own copy of every listening socket
  open). A worker told to go *drains* (``Server.drain``): it stops accepting, answers the next request on each of its
  connections with ``Connection: close`` and gives idle keep-alive connections up to ``DRAIN_GRACE`` seconds to
  send one, before the usual graceful shutdown. Closing an idle keep-alive connection at once would race with a
  client that is sending its next request on it right then (RFC 9112 section 9.6): that request would fail
  although nothing was wrong with the server.
- SIGTERM and SIGINT are a graceful stop for a worker (up to ``--timeout-graceful``), however many arrive: signals
  sent to the whole process group (a terminal's Ctrl-C, ``kill -TERM -PGID``, ``timeout``) reach the workers as
  well as the supervisor, and the supervisor forwards its own, so a worker cannot tell a "second" signal from a
  duplicate. To cut requests now (the supervisor's second SIGTERM/SIGINT) the supervisor writes ``!`` on the
  socketpair, and SIGKILLs what is still alive a moment later. SIGHUP is ignored by workers: reloading is the
  supervisor's business.
- Worker exit status: 0 clean, 1 requests were cut, 3 the app could not be loaded (the supervisor gives up when
  every worker fails that way before any was ever ready), 70 internal error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import logging
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Any

from .config import Config
from .errors import ConfigError
from .importer import AppModuleError, import_app
from .runner import _describe, freeze_heap, loop_factory
from .server import Server, tls_context
from .sockets import ListenSpec, bind_sockets

__all__ = ["supervise"]

logger = logging.getLogger("asyncwsgi.error")

#: Worker exit statuses.
EXIT_OK = 0
EXIT_CUT = 1
EXIT_NO_APP = 3
EXIT_INTERNAL = 70

#: Messages from a worker to the supervisor (one byte each, on the worker's socketpair).
MSG_READY = b"+"
MSG_RETIRE = b"R"
#: From the supervisor to a worker: you are replaced, drain and exit.
MSG_QUIT = b"Q"
#: From the supervisor to a worker: cut the requests in flight and exit now.
MSG_CUT = b"!"

#: A worker that dies within this many seconds of its start (or before it was ready) died "quickly".
QUICK_DEATH = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: After this many seconds without a quick death, the back-off starts again from ``BACKOFF_FIRST``.
QUIET = 30.0
#: Beyond ``timeout_graceful``: how long a stopping worker may take before it gets SIGKILL.
KILL_MARGIN = 5.0
#: After a second SIGTERM/SIGINT: how long workers get to cut their requests before SIGKILL.
FORCE_WAIT = 1.0
#: A replaced worker keeps its idle keep-alive connections open up to this long (or ``timeout_graceful`` if
#: shorter) for the next request, which it answers with ``Connection: close``.
DRAIN_GRACE = 2.0
#: How often a draining worker looks for connections that are between two requests.
#: The stat-polling file watcher's period.
POLL_INTERVAL = 0.5
#: Directories the polling watcher never descends into (besides hidden ones and virtualenvs).
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})

#: Signals the supervisor and the reloader handle (and restore in a forked worker).
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


def supervise(target: str, config: Config) -> int:
    """Serve ``target`` ("module:attr") with worker processes or with ``--reload``; return the exit status.

    ``ConfigError`` (one line for the user) when the sockets cannot be bound or the platform cannot fork."""
    if os.name != "posix" or not hasattr(os, "fork"):
        raise ConfigError("--workers needs fork" if not config.reload else "--reload needs a POSIX system")
    loop_factory(config.loop)  # ``--loop uvloop`` without uvloop: one line now, not one per worker
    tls_context(config)  # unreadable certificate files: the same
    if config.reload:
        bound = bind_sockets(config)
        try:
            return _Reloader(target, config, bound).run()
        finally:
            _close_sockets(bound)
    app = None
    if config.preload:
        try:
            app = import_app(target, factory=config.factory, app_dir=config.app_dir_abs)
        except AppModuleError as exc:  # the same report as the single-process CLI: a line, then the app's traceback
            print(f"asyncwsgi: error: {exc}; the application's traceback follows:", file=sys.stderr)
            cause = exc.__cause__
            if cause is not None:
                traceback.print_exception(type(cause), cause, _app_frames(cause.__traceback__), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        freeze_heap()  # before the forks: the collector never touches (so never copies) the preloaded app's pages
    bound = bind_sockets(config)
    try:
        return _Supervisor(target, config, bound, app).run()
    finally:
        _close_sockets(bound)


# -- shared by the supervisor and the reloader -------------------------------------------------------------------------


def _close_sockets(bound: list[tuple[ListenSpec, socket.socket]]) -> None:
    """Close our listening sockets and remove the unix socket files we created (never a file we were given)."""
    for spec, sock in bound:
        if sock.fileno() < 0:
            continue
        sock.close()
        if spec.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(spec.path)


def _log_listening(bound: list[tuple[ListenSpec, socket.socket]], tls: bool) -> None:
    for _, sock in bound:
        name = sock.getsockname()
        logger.info(
            "listening on %s",
            _describe(tuple(name[:2]) if isinstance(name, tuple) else name, tls=tls),
        )


def _exit_description(status: int) -> tuple[int, str]:
    """``os.waitpid``'s status -> (exit code, or -signal; words for a log line)."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return code, f"killed by {name}"
    return code, f"exit status {code}"


def _app_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    from .cli import app_frames  # the CLI's rule: start at the app's own frames (imported late: cli imports us)

    return app_frames(tb)


def _log_import_error(exc: ConfigError, prefix: str) -> None:
    """Report an app that cannot be loaded like the CLI does: one line, plus the app's traceback when its module
    raised."""
    cause = exc.__cause__
    if isinstance(exc, AppModuleError) and cause is not None:
        text = "".join(traceback.format_exception(type(cause), cause, _app_frames(cause.__traceback__)))
        logger.error("%s%s; the application's traceback follows:\n%s", prefix, exc, text.rstrip("\n"))
    else:
        logger.error("%s%s", prefix, exc)


class _SignalLoop:
    """A ``selectors`` loop that is woken by signals: Python-level handlers record the signal, and
    ``signal.set_wakeup_fd`` makes the selector return at once (no polling)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.pending: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._previous: dict[int, Any] = {}
        self._previous_wakeup = -1

    def install_signals(self) -> None:
        def record(signum: int, frame: types.FrameType | None) -> None:
            self.pending.append(signum)

        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, record)
        self._previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def restore_signals(self) -> None:
        """Put back the handlers and wakeup fd that were there before ``install_signals``."""
        if not self._previous:
            return
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def restore_in_child(self) -> None:
        """In a forked worker: the handlers as they were before the supervisor's, and none of its descriptors."""
        self.restore_signals()
        self.selector.close()  # closes our copy of the epoll/kqueue descriptor only: no unregistering
        os.close(self._wake_r)
        os.close(self._wake_w)

    def wait(self, timeout: float | None) -> list[Any]:
        """Block until a signal, a registered descriptor or ``timeout``; return the ``data`` of ready descriptors."""
        ready = []
        for key, _ in self.selector.select(timeout):
            if key.fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
            else:
                ready.append(key.data)
        return ready

    def close(self) -> None:
        self.restore_signals()
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _timeout(deadlines: list[float]) -> float | None:
    if not deadlines:
        return None
    return max(0.0, min(deadlines) - time.monotonic())


# -- workers -----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Worker:
    pid: int
    chan: socket.socket | None  # the supervisor's end of the socketpair
    started: float
    ready: bool = False
    retiring: bool = False  # served its --max-requests: replace it
    outdated: bool = False  # SIGHUP: replace it
    stopping: bool = False  # told to stop (replaced, or the supervisor stops)
    kill_at: float | None = None  # SIGKILL it if it is still alive then
    killed: bool = False

    @property
    def replaceable(self) -> bool:
        return (self.retiring or self.outdated) and not self.stopping

    @property
    def counted(self) -> bool:
        """One of the ``--workers`` we keep (not being replaced, not stopping)."""
        return not (self.retiring or self.outdated or self.stopping)


class _Supervisor(_SignalLoop):
    def __init__(self, target: str, config: Config, bound: list[tuple[ListenSpec, socket.socket]], app: Any) -> None:
        super().__init__()
        self.target = target
        self.config = config
        self.bound = bound
        self.app = app
        self.size = config.workers
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.forced = False
        self.unclean = False
        self.failures = 0  # quick deaths in a row (forgotten after QUIET seconds without one)
        self.last_failure = 0.0
        self.next_spawn = 0.0
        self.spawn_waiting = False
        self.ever_ready = False
        self.load_failures = 0  # workers that could not load the app before any worker was ever ready

    # -- main loop ---------------------------------------------------------------------------------------------------

    def run(self) -> int:
        _log_listening(self.bound, bool(self.config.ssl_certfile))
        logger.info(
            "supervisor pid %d, %d workers%s",
            os.getpid(),
            self.size,
            " (app preloaded)" if self.app is not None else "",
        )
        self.install_signals()
        try:
            while True:
                while self.pending:
                    self._on_signal(self.pending.popleft())
                self._reap()
                if self.stopping and not self.workers:
                    break
                self._reconcile()
                self._enforce_deadlines()
                deadlines = [w.kill_at for w in self.workers.values() if w.kill_at is not None]
                if self.spawn_waiting:
                    deadlines.append(self.next_spawn)
                for worker in self.wait(_timeout(deadlines)):
                    self._on_message(worker)
        finally:
            self._kill_all()
            self.close()
        return 1 if self.unclean or self.forced else 0

    # -- events ------------------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGCHLD:
            return  # reaped right after
        if signum == signal.SIGHUP:
            if self.stopping:
                return
            old = [w for w in self.workers.values() if not w.stopping]
            logger.info("received SIGHUP: replacing %d worker(s) one by one", len(old))
            for w in old:
                w.outdated = True
            return
        if not self.stopping:
            logger.info(
                "received %s: stopping %d worker(s) gracefully (up to %gs)",
                name,
                len(self.workers),
                self.config.timeout_graceful,
            )
            self._begin_stop()
        elif not self.forced:
            logger.warning("received %s again: stopping the workers now", name)
            self.forced = True
            deadline = time.monotonic() + FORCE_WAIT
            for w in self.workers.values():
                if w.chan is not None:
                    with contextlib.suppress(OSError):
                        w.chan.send(MSG_CUT)
                w.kill_at = min(w.kill_at or deadline, deadline)

    def _on_message(self, worker: _Worker) -> None:
        chan = worker.chan
        if chan is None:
            return
        try:
            data = chan.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the worker exited (its status comes with SIGCHLD) or closed its end
            self._drop_chan(worker)
            return
        if MSG_READY in data and not worker.ready:
            worker.ready = True
            self.ever_ready = True
        if MSG_RETIRE in data and not worker.retiring and not worker.stopping and not self.stopping:
            worker.retiring = True
            logger.info("worker pid %d reached --max-requests: starting its replacement", worker.pid)

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is lost
                pid, status = worker.pid, 255 << 8
            if pid == worker.pid:
                self._on_exit(worker, status)

    def _on_exit(self, worker: _Worker, status: int) -> None:
        del self.workers[worker.pid]
        self._drop_chan(worker)
        code, words = _exit_description(status)
        if self.stopping or worker.stopping:
            if code == -signal.SIGTERM and not worker.killed:
                # Our SIGTERM's default action: the worker was still loading the app, or had already finished its
                # shutdown (its handlers are installed only while it serves). Nothing was lost either way.
                code = 0
            if code != 0 or worker.killed:
                if self.stopping:
                    self.unclean = True
                logger.warning("worker pid %d stopped (%s)", worker.pid, words)
            else:
                logger.info("worker pid %d stopped", worker.pid)
            return
        now = time.monotonic()
        quick = not worker.ready or now - worker.started < QUICK_DEATH
        if code == EXIT_NO_APP and not worker.ready and not self.ever_ready:
            self.load_failures += 1
            if self.load_failures >= self.size:
                logger.error(
                    "worker pid %d could not load the application; it failed in all %d worker(s) at their first "
                    "start: giving up",
                    worker.pid,
                    self.size,
                )
                self.unclean = True
                self._begin_stop()
                return
        delay = 0.0
        if quick:
            if now - self.last_failure > QUIET:
                self.failures = 0
            self.last_failure = now
            self.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
            self.next_spawn = max(self.next_spawn, now + delay)
        else:
            self.failures = 0
        logger.error(
            "worker pid %d died (%s)%s; starting a new one%s",
            worker.pid,
            words,
            " before it was ready" if not worker.ready else "",
            f" in {delay:.1f}s" if delay else "",
        )

    # -- decisions ---------------------------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Keep ``--workers`` counted workers; stop the ones being replaced once their replacements are ready."""
        self.spawn_waiting = False
        if self.stopping:
            return
        workers = list(self.workers.values())
        replaceable = sorted((w for w in workers if w.replaceable), key=lambda w: w.started)
        for w in [w for w in replaceable if not w.ready]:  # outdated before it even started serving
            self._stop(w)
            replaceable.remove(w)
        counted = [w for w in workers if w.counted]
        ready = sum(1 for w in counted if w.ready)
        # Stop as many old workers as keeps ``size`` ready acceptors (old + new) at all times.
        for w in replaceable[: max(0, ready + len(replaceable) - self.size)]:
            self._stop(w)
        missing = self.size - len(counted)
        if missing <= 0:
            return
        if replaceable:  # a rolling replacement: one new worker starting at a time
            starting = sum(1 for w in counted if not w.ready)
            missing = min(missing, max(0, 1 - starting))
        if missing <= 0:
            return
        if time.monotonic() < self.next_spawn:
            self.spawn_waiting = True
            return
        for _ in range(missing):
            self._spawn()

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for w in self.workers.values():
            if w.kill_at is not None and w.kill_at <= now:
                logger.warning("worker pid %d did not stop in time: killing it", w.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                w.kill_at = None
                w.killed = True

    def _begin_stop(self) -> None:
        self.stopping = True
        deadline = time.monotonic() + self.config.timeout_graceful + KILL_MARGIN
        for w in self.workers.values():
            # Draining ones too: SIGTERM ends their drain (nobody is left to take their clients' next requests).
            w.stopping = True
            with contextlib.suppress(ProcessLookupError):  # not reaped yet, so the pid is still ours
                os.kill(w.pid, signal.SIGTERM)
            w.kill_at = min(w.kill_at or deadline, deadline)
        # Close our copies of the listening sockets: once the workers close theirs, new connections are refused
        # instead of waiting in a backlog nobody will accept from.
        _close_sockets(self.bound)

    def _stop(self, worker: _Worker) -> None:
        """Graceful stop of one worker that is being replaced: it drains, then shuts down."""
        worker.stopping = True
        worker.kill_at = time.monotonic() + DRAIN_GRACE + self.config.timeout_graceful + KILL_MARGIN
        try:
            assert worker.chan is not None
            worker.chan.send(MSG_QUIT)
        except (AssertionError, OSError):  # its end is gone: it is exiting anyway, or a plain stop will do
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)

    def _drop_chan(self, worker: _Worker) -> None:
        if worker.chan is not None:
            self.selector.unregister(worker.chan)
            worker.chan.close()
            worker.chan = None

    def _kill_all(self) -> None:
        """Only on the way out of an unexpected error: no worker outlives its supervisor."""
        for w in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
            self._drop_chan(w)
            self.unclean = True
        self.workers.clear()

    # -- forking -----------------------------------------------------------------------------------------------------

    def _spawn(self) -> None:
        max_requests = None
        if self.config.max_requests is not None:
            max_requests = self.config.max_requests + random.randint(0, self.config.max_requests_jitter)
        ours, theirs = socket.socketpair()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # Block our signals across fork(): the child must not run our handlers (they would wake *our* loop).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            self.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
            self.next_spawn = time.monotonic() + delay
            logger.error("cannot start a worker: %s; trying again in %.1fs", exc, delay)
            return
        if pid == 0:  # the worker
            code = EXIT_INTERNAL
            try:
                self.restore_in_child()
                # Until it serves (and installs its own handlers): a terminal's Ctrl-C must not become a
                # KeyboardInterrupt traceback in the middle of the app's import; the supervisor's SIGTERM stops us.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                ours.close()
                for w in self.workers.values():
                    if w.chan is not None:
                        w.chan.close()
                code = _worker_main(
                    self.target, self.config, self.app, [s for _, s in self.bound], theirs, max_requests
                )
            except BaseException:
                with contextlib.suppress(BaseException):
                    logger.exception("worker pid %d crashed", os.getpid())
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(BaseException):
                        stream.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(pid, ours, time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)


def _worker_main(
    target: str,
    config: Config,
    app: Any,
    sockets: list[socket.socket],
    chan: socket.socket,
    max_requests: int | None,
) -> int:
    """Everything a worker does; returns its exit status (the caller ``os._exit``\\ s with it)."""
    pid = os.getpid()
    if app is None:
        try:
            app = import_app(target, factory=config.factory, app_dir=config.app_dir_abs)
        except ConfigError as exc:
            _log_import_error(exc, f"worker pid {pid}: ")
            return EXIT_NO_APP
    loop_name, factory = loop_factory(config.loop)
    freeze_heap()
    loop = factory()
    try:
        return loop.run_until_complete(_serve_worker(app, config, sockets, chan, max_requests, loop_name))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _serve_worker(
    app: Any,
    config: Config,
    sockets: list[socket.socket],
    chan: socket.socket,
    max_requests: int | None,
    loop_name: str,
) -> int:
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    server = Server(app, config, sockets=sockets, max_requests=max_requests)
    server.multiprocess = config.workers > 1  # wsgi.multiprocess
    stop = asyncio.Event()
    hurry = asyncio.Event()  # stop without draining (or end a drain early)
    cutting: list[asyncio.Future[int]] = []

    def on_signal(signum: int) -> None:
        if not hurry.is_set():
            logger.info(
                "worker pid %d: received %s, shutting down gracefully (up to %gs)",
                pid,
                signal.Signals(signum).name,
                config.timeout_graceful,
            )
        hurry.set()
        stop.set()

    def on_chan() -> None:
        try:
            data = chan.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(chan.fileno())
            if not hurry.is_set():
                logger.warning("worker pid %d: the supervisor is gone: shutting down", pid)
            hurry.set()
            stop.set()
            return
        if MSG_QUIT in data and not stop.is_set():
            logger.info("worker pid %d: replaced: finishing its connections, then shutting down", pid)
            stop.set()
        if MSG_CUT in data and not cutting:
            logger.warning("worker pid %d: told to stop now: cutting in-flight requests", pid)
            hurry.set()
            stop.set()
            cutting.append(asyncio.ensure_future(server.shutdown(0)))

    def tell(message: bytes) -> None:
        with contextlib.suppress(OSError):
            chan.send(message)

    async def retire() -> None:
        await server.retiring.wait()
        logger.info(
            "worker pid %d served %d requests (--max-requests %d): asking for a replacement",
            pid,
            server.requests_done,
            max_requests,
        )
        tell(MSG_RETIRE)

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
        installed.append(sig)
    chan.setblocking(False)
    retire_task: asyncio.Task[None] | None = None
    reading = False
    try:
        try:
            await server.start()
        except ConfigError as exc:
            logger.error("worker pid %d: %s", pid, exc)
            return EXIT_NO_APP
        loop.add_reader(chan.fileno(), on_chan)
        reading = True
        tell(MSG_READY)
        logger.info(
            "worker pid %d ready (loop %s, up to %d threads%s)",
            pid,
            loop_name,
            config.threads,
            f", --max-requests {max_requests}" if max_requests is not None else "",
        )
        if max_requests is not None:
            retire_task = loop.create_task(retire())
        await stop.wait()
        if not hurry.is_set():
            draining = asyncio.ensure_future(server.drain(min(DRAIN_GRACE, config.timeout_graceful)))
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait([draining, hurried], return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            if not draining.done():
                draining.cancel()
        cut = await server.shutdown(config.timeout_graceful)
    finally:
        if retire_task is not None:
            retire_task.cancel()
        if reading:
            loop.remove_reader(chan.fileno())
        for sig in installed:
            loop.remove_signal_handler(sig)  # puts back SIG_DFL...
            signal.signal(sig, signal.SIG_IGN)  # ...but we are leaving anyway: a late SIGTERM must not kill us
    if cut:
        logger.error("worker pid %d: shutdown cut %d request(s) that did not finish in time", pid, cut)
        return EXIT_CUT
    return EXIT_OK


# -- --reload ----------------------------------------------------------------------------------------------------------


class _PollWatcher:
    """``*.py`` files under ``root`` by (mtime, size), compared every ``POLL_INTERVAL`` seconds."""

    description = f"polling every {POLL_INTERVAL}s"

    def __init__(self, root: str) -> None:
        self.root = root
        self.snapshot = self._scan()
        self.next_check = time.monotonic() + POLL_INTERVAL

    def _scan(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".")
                and d not in SKIP_DIRS
                and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
            ]
            for name in filenames:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    found[path] = (st.st_mtime_ns, st.st_size)
        return found

    def deadline(self) -> float:
        return self.next_check

    def changes(self) -> list[str]:
        if time.monotonic() < self.next_check:
            return []
        new = self._scan()
        changed = sorted(p for p in new.keys() | self.snapshot.keys() if new.get(p) != self.snapshot.get(p))
        self.snapshot = new
        self.next_check = time.monotonic() + POLL_INTERVAL
        return changed

    def close(self) -> None:
        pass


class _WatchfilesWatcher:
    """watchfiles (inotify/FSEvents) in a thread; it wakes the reloader's selector through a pipe."""

    description = "watchfiles"

    def __init__(self, root: str, watchfiles: Any, selector: selectors.BaseSelector) -> None:
        self._watchfiles = watchfiles
        self._root = root
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changed: list[str] = []
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._selector = selector
        selector.register(self._read, selectors.EVENT_READ, self)
        self._thread = threading.Thread(target=self._run, name="asyncwsgi-reload-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for changes in self._watchfiles.watch(
                self._root,
                watch_filter=self._watchfiles.PythonFilter(),
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                with self._lock:
                    self._changed.extend(path for _, path in changes)
                with contextlib.suppress(OSError):
                    os.write(self._write, b"c")
        except Exception as exc:
            if not self._stop.is_set():
                logger.error("the file watcher stopped: %s; code changes will not restart the server", exc)

    def deadline(self) -> float | None:
        return None

    def changes(self) -> list[str]:
        with contextlib.suppress(OSError):
            while os.read(self._read, 512):
                pass
        with self._lock:
            changed, self._changed = sorted(set(self._changed)), []
        return changed

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self._selector.unregister(self._read)
        os.close(self._read)
        os.close(self._write)


@dataclasses.dataclass(eq=False)
class _Child:
    proc: subprocess.Popen[bytes]
    stopping: bool = False
    kill_at: float | None = None
    killed: bool = False


def _child_options(config: Config, fds: list[int]) -> list[str]:
    """The command line of the server process: the same options, minus ``--reload``, on inherited sockets."""
    args: list[str] = []
    skip = {"host", "port", "uds", "fd", "bind", "reload", "app_dir"}
    for f in dataclasses.fields(Config):
        if not f.metadata or f.metadata.get("cli") is False or f.name in skip:
            continue
        value = getattr(config, f.name)
        if value == f.default:
            continue
        flag = (f.metadata["flags"] or ("--" + f.name.replace("_", "-"),))[-1]
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    args += ["--app-dir", config.app_dir_abs]
    for fd in fds:
        args += ["--bind", f"fd://{fd}"]
    return args


class _Reloader(_SignalLoop):
    def __init__(self, target: str, config: Config, bound: list[tuple[ListenSpec, socket.socket]]) -> None:
        super().__init__()
        self.config = config
        self.bound = bound
        self.fds = [sock.fileno() for _, sock in bound]
        self.argv = [sys.executable, "-m", "asyncwsgi", "serve", target, *_child_options(config, self.fds)]
        self.children: list[_Child] = []
        self.current: _Child | None = None
        self.stopping = False
        self.forced = False
        self.unclean = False

    def run(self) -> int:
        _log_listening(self.bound, bool(self.config.ssl_certfile))
        root = self.config.app_dir_abs
        watcher: _PollWatcher | _WatchfilesWatcher
        try:
            watchfiles = importlib.import_module("watchfiles")
        except ImportError:
            watcher = _PollWatcher(root)
        else:
            watcher = _WatchfilesWatcher(root, watchfiles, self.selector)
        logger.info("reloader pid %d watching %s for changes to *.py (%s)", os.getpid(), root, watcher.description)
        self.install_signals()
        try:
            self._start()
            while True:
                while self.pending:
                    self._on_signal(self.pending.popleft())
                self._reap()
                if self.stopping and not self.children:
                    break
                if not self.stopping:
                    changed = watcher.changes()
                    if changed:
                        logger.info("change detected in %s, restarting", os.path.relpath(changed[0], root))
                        self._restart()
                self._enforce_deadlines()
                deadlines = [c.kill_at for c in self.children if c.kill_at is not None]
                watch_deadline = watcher.deadline()
                if watch_deadline is not None and not self.stopping:
                    deadlines.append(watch_deadline)
                self.wait(_timeout(deadlines))
        finally:
            watcher.close()
            for child in self.children:  # only on an unexpected error
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait()
                self.unclean = True
            self.close()
        return 1 if self.unclean or self.forced else 0

    def _start(self) -> None:
        try:
            # A session of its own: a terminal's Ctrl-C must reach only us (we forward one SIGTERM).
            proc = subprocess.Popen(self.argv, pass_fds=self.fds, start_new_session=True)
        except OSError as exc:
            logger.error("cannot start the server process: %s; waiting for a file change", exc)
            return
        logger.info("started server process pid %d", proc.pid)
        self.current = _Child(proc)
        self.children.append(self.current)

    def _restart(self) -> None:
        if self.current is not None:
            self._stop(self.current)
        self._start()

    def _stop(self, child: _Child) -> None:
        if not child.stopping:
            child.stopping = True
            child.kill_at = time.monotonic() + self.config.timeout_graceful + KILL_MARGIN
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        if child is self.current:
            self.current = None

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGCHLD:
            return
        if signum == signal.SIGHUP:
            if not self.stopping:
                logger.info("received SIGHUP: restarting the server process")
                self._restart()
            return
        if not self.stopping:
            logger.info("received %s: stopping the server process gracefully", name)
            self.stopping = True
            for child in self.children:
                self._stop(child)
            _close_sockets(self.bound)
        elif not self.forced:
            logger.warning("received %s again: stopping the server process now", name)
            self.forced = True
            deadline = time.monotonic() + FORCE_WAIT
            for child in self.children:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)  # its second signal: it cuts what is left
                child.kill_at = min(child.kill_at or deadline, deadline)

    def _reap(self) -> None:
        for child in list(self.children):
            code = child.proc.poll()
            if code is None:
                continue
            self.children.remove(child)
            words = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
            if child.stopping or self.stopping:
                if code != 0 or child.killed:
                    if self.stopping:
                        self.unclean = True
                    logger.warning("server process pid %d stopped (%s)", child.proc.pid, words)
                continue
            if child is self.current:
                self.current = None
            logger.error(
                "server process pid %d exited (%s); it will be restarted when a file changes", child.proc.pid, words
            )

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.kill_at is not None and child.kill_at <= now:
                logger.warning("server process pid %d did not stop in time: killing it", child.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.kill_at = None
                child.killed = True
