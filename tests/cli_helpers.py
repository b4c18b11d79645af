"""Run ``asyncwsgi serve`` in a subprocess and follow its log.

Readiness is the server's own ``listening on ...`` log line, read from its stderr by a reader thread and waited
for with a bounded ``threading.Condition`` wait: never a sleep. Every process is killed (by its own pid) and its
pipe closed when the ``ServerProcesses`` context exits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The ``asyncwsgi`` console script of the virtualenv running the tests.
CONSOLE_SCRIPT = Path(sys.executable).parent / "asyncwsgi"
LISTENING_RE = re.compile(r"INFO listening on (?:http://(127\.0\.0\.1|\[::1\]):(\d+)|unix:(\S+))$")
READY_TIMEOUT = 20.0


class ServerProcess:
    """One ``asyncwsgi serve`` process; its stderr is collected line by line."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        console_script: bool = False,
        cwd: str | os.PathLike[str] = REPO_ROOT,
        env: dict[str, str] | None = None,
        pass_fds: Iterable[int] = (),
    ) -> None:
        launcher = [str(CONSOLE_SCRIPT)] if console_script else [sys.executable, "-m", "asyncwsgi"]
        self.argv = [*launcher, "serve", *args]
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)  # the import path must come from the server's own rules only
        full_env.update(env or {})
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._eof = False
        self.proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=tuple(pass_fds),
        )
        self._reader = threading.Thread(target=self._read, name=f"stderr-{self.proc.pid}", daemon=True)
        self._reader.start()
        #: Every address from the ``listening on`` lines: ("127.0.0.1" or "[::1]", port), or the unix socket path.
        self.addresses: list[Any] = []

    # -- stderr ------------------------------------------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        for raw in iter(stream.readline, b""):
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def _wait(self, check: Callable[[list[str]], Any], timeout: float, what: str) -> Any:
        """Wait up to ``timeout`` seconds until ``check(lines)`` returns something truthy, and return it; fail with
        the whole stderr if that does not happen in time or the process ends first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = check(self._lines)
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
            output = "\n".join(self._lines)
        why = "the process ended" if self._eof else f"{timeout}s passed"
        raise AssertionError(f"{why} before {what}; stderr was:\n{output}")

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """The first stderr line matching ``pattern`` (``re.search``), waiting up to ``timeout`` seconds for it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def check(lines: list[str]) -> re.Match[str] | None:
            return next((m for m in map(regex.search, lines) if m is not None), None)

        match: re.Match[str] = self._wait(check, timeout, f"a stderr line matched {regex.pattern!r}")
        return match

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    def wait_ready(self, listeners: int = 1, timeout: float = READY_TIMEOUT) -> ServerProcess:
        """Wait for ``listeners`` ``listening on`` lines; record their addresses."""

        def check(lines: list[str]) -> list[re.Match[str]] | None:
            found = [m for m in map(LISTENING_RE.search, lines) if m is not None]
            return found if len(found) >= listeners else None

        matches: list[re.Match[str]] = self._wait(check, timeout, f"{listeners} 'listening on' line(s)")
        self.addresses = [(m.group(1), int(m.group(2))) if m.group(1) else m.group(3) for m in matches]
        return self

    # -- where it listens --------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        tcp = [a for a in self.addresses if isinstance(a, tuple)]
        assert tcp, f"no TCP listener in {self.addresses}"
        return int(tcp[0][1])

    @property
    def url(self) -> str:
        tcp = [a for a in self.addresses if isinstance(a, tuple)]
        assert tcp, f"no TCP listener in {self.addresses}"
        return f"http://{tcp[0][0]}:{tcp[0][1]}"

    @property
    def uds(self) -> str:
        paths = [a for a in self.addresses if isinstance(a, str)]
        assert paths, f"no unix socket listener in {self.addresses}"
        return str(paths[0])

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, waiting up to ``timeout`` seconds (``subprocess.TimeoutExpired`` otherwise); once it has
        exited, the rest of its stderr is read before this returns."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.send_signal(sig)
        return self.wait(timeout)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


class ServerProcesses:
    """Starts server processes and kills whatever is left of them on exit."""

    def __init__(self) -> None:
        self._procs: list[ServerProcess] = []

    def start(self, args: Sequence[str], *, ready: bool = True, listeners: int = 1, **kwargs: Any) -> ServerProcess:
        proc = ServerProcess(args, **kwargs)
        self._procs.append(proc)
        if ready:
            proc.wait_ready(listeners)
        return proc

    def run(self, args: Sequence[str], timeout: float = READY_TIMEOUT, **kwargs: Any) -> ServerProcess:
        """Start a process that is expected to exit on its own (a startup error), and wait for it."""
        proc = self.start(args, ready=False, **kwargs)
        proc.wait(timeout)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            proc.close()

    def __enter__(self) -> ServerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_processes() -> Iterator[ServerProcesses]:
    """Body of a pytest fixture: ``yield from server_processes()``."""
    with ServerProcesses() as procs:
        yield procs
