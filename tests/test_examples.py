"""The programs in ``examples/``, each run as a subprocess the way its docstring says and exercised over HTTP.

- ``examples/asyncio_service.py`` (``python examples/asyncio_service.py PORT``): the Flask admin UI answers while the
  ticker task beats on the same loop; a request waiting on the ticker is in flight when SIGTERM arrives, finishes,
  and the program exits 0 (SIGINT too, port from ``PORT``).
- ``examples/starlette_mount.py`` (``python examples/starlette_mount.py``, uvicorn): native routes and the mounted
  Flask app, with ``/legacy`` in Flask's URLs; SIGTERM shuts uvicorn down with its lifespan.
- ``examples/django_project`` (``asyncwsgi serve mysite.wsgi:application --app-dir examples/django_project``): a page,
  a CSRF-protected form and JSON endpoint, a streamed response; ``manage.py check``.
- ``examples/middleware_stack.py`` (``asyncwsgi serve examples.middleware_stack:app``): ProxyFix, DispatcherMiddleware
  and a hand-written middleware around Flask, with and without forwarded headers.
- ``examples/frameworks/`` (``asyncwsgi serve examples.frameworks.X:app``): Pyramid, Bottle and Falcon: GET, a form
  POST and a streamed response each.

Readiness is the line a program prints or logs when it listens, read by a reader thread and waited for with a bounded
condition wait; every process is ended by its own pid when its test (or module) is done.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from .cli_helpers import REPO_ROOT, ServerProcess, ServerProcesses

TIMEOUT = 10.0
EXAMPLES = REPO_ROOT / "examples"


class ExampleProcess:
    """``python <script>`` with stdout and stderr merged and collected line by line."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        full_env.pop("PYTHONPATH", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._eof = False
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, name=f"example-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self._lines:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise AssertionError(f"no line matched {pattern!r}; output was:\n{self.output}")

    def wait(self, timeout: float = TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        finally:
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def examples() -> Iterator[list[ExampleProcess]]:
    started: list[ExampleProcess] = []
    yield started
    for proc in started:
        proc.close()


def start_example(started: list[ExampleProcess], args: Sequence[str], env: dict[str, str] | None = None) -> Any:
    proc = ExampleProcess(args, env)
    started.append(proc)
    return proc


@pytest.fixture(scope="module")
def procs() -> Iterator[ServerProcesses]:
    with ServerProcesses() as p:
        yield p


# -- asyncio_service.py ------------------------------------------------------------------------------------------------

LISTENING = r"^listening on http://127\.0\.0\.1:(\d+)$"


def test_asyncio_service(examples: list[ExampleProcess]) -> None:
    proc = start_example(examples, [str(EXAMPLES / "asyncio_service.py"), "0"], {"TICK_INTERVAL": "0.01"})
    port = proc.wait_for(LISTENING).group(1)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        status = client.get("/api/status").json()
        assert status["interval"] == 0.01
        assert isinstance(status["beats"], int)

        page = client.get("/")
        assert page.status_code == 200
        assert re.search(r'<p id="beats">\d+ beats, one every 0\.01 s</p>', page.text), page.text

        bad = client.post("/api/interval", data={"interval": "fast"})
        assert (bad.status_code, bad.json()) == (400, {"error": "interval: a number of seconds is required"})
        assert client.post("/api/interval", data={"interval": "1000"}).status_code == 400
        changed = client.post("/api/interval", data={"interval": "0.02"})
        assert changed.status_code == 200 and changed.json()["interval"] == 0.02
        assert client.get("/api/status").json()["interval"] == 0.02

        # The view waits in its worker thread on beats counted by the loop's ticker task: the loop is not blocked.
        # SIGTERM while it waits: the server lets it finish (the ticker still runs), then the program exits 0.
        target = client.get("/api/status").json()["beats"] + 15
        with client.stream("GET", "/api/wait", params={"beats": target, "timeout": 5}) as resp:
            lines = resp.iter_lines()
            assert json.loads(next(lines)) == {"waiting_for": target}
            proc.proc.send_signal(signal.SIGTERM)
            last = json.loads(next(lines))
            assert list(lines) == []
    assert last["reached"] is True and last["beats"] >= target
    assert proc.wait() == 0, proc.output
    out = proc.output
    assert "shutting down" in out
    assert re.search(r"^stopped after \d+ beats; 0 request\(s\) cut$", out, re.M), out


def test_asyncio_service_port_from_env_and_sigint(examples: list[ExampleProcess]) -> None:
    proc = start_example(examples, [str(EXAMPLES / "asyncio_service.py")], {"PORT": "0", "TICK_INTERVAL": "0.05"})
    port = int(proc.wait_for(LISTENING).group(1))
    assert port != 8000
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(f"http://127.0.0.1:{port}/api/status").json()["interval"] == 0.05
    proc.proc.send_signal(signal.SIGINT)
    assert proc.wait() == 0, proc.output
    assert "Traceback" not in proc.output


# -- starlette_mount.py ------------------------------------------------------------------------------------------------


UVICORN_RUNNING = r"Uvicorn running on http://127\.0\.0\.1:(\d+) "


def test_starlette_mount(examples: list[ExampleProcess]) -> None:
    proc = start_example(examples, [str(EXAMPLES / "starlette_mount.py")], {"PORT": "0"})
    url = f"http://127.0.0.1:{proc.wait_for(UVICORN_RUNNING).group(1)}"
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        native = client.get("/")
        assert (native.status_code, native.text) == (200, "native starlette; the Flask app is under /legacy/\n")
        assert client.get("/api/ping").json() == {"app": "starlette", "pong": True}

        legacy = client.get("/legacy/")
        assert legacy.json() == {"app": "flask", "script_root": "/legacy", "path": "/", "form": "/legacy/form"}
        redirected = client.get("/legacy/form")
        assert (redirected.status_code, redirected.headers["location"]) == (302, "/legacy/")
        posted = client.post("/legacy/form", data={"name": "Ada"})
        assert posted.json() == {"hello": "Ada"}
        streamed = client.get("/legacy/stream", params={"n": 30})
        assert streamed.headers.get("transfer-encoding") == "chunked"
        assert streamed.text == "".join(f"flask line {i}\n" for i in range(30))
        assert client.get("/legacy/missing").status_code == 404
        assert client.get("/missing").status_code == 404
    proc.proc.send_signal(signal.SIGTERM)
    rc = proc.wait()
    # uvicorn re-raises the signal once its graceful shutdown is done, so the exit reads as "killed by SIGTERM".
    assert rc in (0, -signal.SIGTERM), proc.output
    assert "Application shutdown complete." in proc.output
    assert "Traceback" not in proc.output


# -- django_project ----------------------------------------------------------------------------------------------------

CSRF_RE = re.compile(r'<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">')


@pytest.fixture(scope="module")
def django_example(procs: ServerProcesses) -> ServerProcess:
    return procs.start(["mysite.wsgi:application", "--app-dir", "examples/django_project", "--port", "0"])


def test_django_page(django_example: ServerProcess) -> None:
    with httpx.Client(base_url=django_example.url, timeout=TIMEOUT) as client:
        resp = client.get("/")
    assert resp.status_code == 200
    assert '<p id="where">GET /</p>' in resp.text
    assert '<a href="/notes/">notes</a>' in resp.text


def test_django_form_with_csrf(django_example: ServerProcess) -> None:
    with httpx.Client(base_url=django_example.url, timeout=TIMEOUT) as client:
        form = client.get("/notes/")
        token = CSRF_RE.search(form.text)
        assert token, form.text
        assert client.cookies.get("csrftoken")
        saved = client.post("/notes/", data={"csrfmiddlewaretoken": token.group(1), "note": "café & <tea>"})
        assert saved.status_code == 200
        assert '<p id="saved">Saved: café &amp; &lt;tea&gt;</p>' in saved.text
        echo = client.post("/api/echo/", json={"n": [1, 2]}, headers={"X-CSRFToken": client.cookies["csrftoken"]})
        assert echo.json() == {"echo": {"n": [1, 2]}, "script_name": ""}
    with httpx.Client(base_url=django_example.url, timeout=TIMEOUT) as fresh:
        refused = fresh.post("/notes/", data={"note": "no token"})
    assert refused.status_code == 403


def test_django_stream(django_example: ServerProcess) -> None:
    with httpx.Client(base_url=django_example.url, timeout=TIMEOUT) as client:
        resp = client.get("/stream/", params={"n": 200})
    assert resp.status_code == 200
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert resp.text == "".join(f"django line {i}\n" for i in range(200))


def test_django_manage_check() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=EXAMPLES / "django_project",
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"System check identified no issues" in result.stdout


# -- middleware_stack.py -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def middleware_example(procs: ServerProcesses) -> ServerProcess:
    return procs.start(["examples.middleware_stack:app", "--port", "0"])


def test_middleware_stack_direct(middleware_example: ServerProcess) -> None:
    with httpx.Client(base_url=middleware_example.url, timeout=TIMEOUT) as client:
        first = client.get("/whoami")
        second = client.get("/whoami")
    host = f"127.0.0.1:{middleware_example.port}"
    body = first.json()
    assert body == {
        "remote_addr": "127.0.0.1",
        "scheme": "http",
        "host": host,
        "script_root": "",
        "url": f"http://{host}/whoami",
        "request_id": first.headers["x-request-id"],
    }
    assert re.fullmatch(r"req-\d+", body["request_id"])
    assert second.json()["request_id"] == second.headers["x-request-id"] != body["request_id"]


def test_middleware_stack_behind_proxy(middleware_example: ServerProcess) -> None:
    forwarded = {
        "X-Forwarded-For": "198.51.100.1, 203.0.113.7",  # only the last hop (the proxy's view) is trusted: x_for=1
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "example.com",
        "X-Forwarded-Prefix": "/app",
    }
    with httpx.Client(base_url=middleware_example.url, timeout=TIMEOUT, headers=forwarded) as client:
        who = client.get("/whoami")
        health = client.get("/health")
    assert who.status_code == 200
    body = who.json()
    assert {k: body[k] for k in ("remote_addr", "scheme", "host", "script_root", "url")} == {
        "remote_addr": "203.0.113.7",
        "scheme": "https",
        "host": "example.com",
        "script_root": "/app",
        "url": "https://example.com/app/whoami",
    }
    assert body["request_id"] == who.headers["x-request-id"]
    # DispatcherMiddleware moved /health from PATH_INFO to SCRIPT_NAME, after ProxyFix put /app in front.
    assert (health.status_code, health.text) == (200, "ok /app/health\n")
    assert health.headers["x-request-id"].startswith("req-")


# -- frameworks/ -------------------------------------------------------------------------------------------------------

FRAMEWORKS = {"pyramid": "Pyramid", "bottle": "Bottle", "falcon": "Falcon"}


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest, procs: ServerProcesses) -> tuple[str, ServerProcess]:
    name: str = request.param
    if importlib.util.find_spec(name) is None:  # looked up, not imported (WebOb warns on import)
        pytest.skip(f"{name} is not installed")
    return name, procs.start([f"examples.frameworks.{name}_app:app", "--port", "0"])


def test_framework_get(framework: tuple[str, ServerProcess]) -> None:
    name, proc = framework
    with httpx.Client(base_url=proc.url, timeout=TIMEOUT) as client:
        named = client.get("/", params={"name": "Ada Lovelace"})
        default = client.get("/")
    assert named.status_code == 200
    assert named.headers["content-type"].startswith("text/plain")
    assert named.text == f"Hello, Ada Lovelace, from {FRAMEWORKS[name]}\n"
    assert default.text == f"Hello, world, from {FRAMEWORKS[name]}\n"


def test_framework_form_post(framework: tuple[str, ServerProcess]) -> None:
    name, proc = framework
    with httpx.Client(base_url=proc.url, timeout=TIMEOUT) as client:
        resp = client.post("/form", data={"name": "Zoë & co"})
    assert resp.status_code == 200
    assert resp.json() == {"framework": name, "name": "Zoë & co"}


def test_framework_stream(framework: tuple[str, ServerProcess]) -> None:
    name, proc = framework
    with httpx.Client(base_url=proc.url, timeout=TIMEOUT) as client:
        resp = client.get("/stream", params={"n": 100})
    assert resp.status_code == 200
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert resp.text == "".join(f"{name} line {i}\n" for i in range(100))
