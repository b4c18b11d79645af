"""Access log formats (combined, gunicorn atoms, JSON) and --log-config files (JSON, TOML, Python)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncwsgi.accesslog import AccessLogFormat
from asyncwsgi.config import Config
from asyncwsgi.errors import ConfigError
from asyncwsgi.runner import configure_logging, load_log_config


def record(**over: Any) -> dict[str, Any]:
    env = {
        "REMOTE_ADDR": "203.0.113.9",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/p",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "a=1",
        "HTTP_REFERER": "http://ref/",
        "HTTP_USER_AGENT": 'agent "quoted"',
        "HTTP_X_REQUEST_ID": "abc",
    }
    r = {
        "environ": env,
        "method": "GET",
        "target": "/p?a=1",
        "status": "200",
        "bytes": 13,
        "duration": 0.0123,
        "start_wall": 0.0,
        "headers": [("Content-Type", "text/plain")],
    }
    r.update(over)
    return r


def test_combined_format_by_default() -> None:
    line = AccessLogFormat(None).line(record())
    assert line.startswith("203.0.113.9 - - [")
    assert line.endswith('] "GET /p?a=1 HTTP/1.1" 200 13 "http://ref/" "agent \\"quoted\\""')


def test_gunicorn_atoms() -> None:
    fmt = AccessLogFormat("%(h)s %(m)s %(U)s %(q)s %(s)s %(B)s %(D)s %(M)s %({x-request-id}i)s %({content-type}o)s")
    assert fmt.line(record()) == "203.0.113.9 GET /p a=1 200 13 12300 12 abc text/plain"
    assert AccessLogFormat("%(b)s").line(record(bytes=0)) == "-"


def test_client_text_cannot_forge_a_line() -> None:
    line = AccessLogFormat(None).line(record(target='/x" 500 1 "\n forged'))
    assert "\n" not in line and '/x\\" 500' in line


def test_json_format() -> None:
    data = json.loads(AccessLogFormat("json").line(record()))
    assert data["status"] == 200 and data["bytes"] == 13 and data["target"] == "/p?a=1"
    assert data["remote_addr"] == "203.0.113.9" and data["duration_ms"] == pytest.approx(12.3)


def test_bad_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="access-log-format"):
        Config(access_log_format="%(h)d")


@pytest.fixture
def restore_loggers():  # type: ignore[no-untyped-def]
    names = ("asyncwsgi.error", "asyncwsgi.access")
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names
    }
    yield
    for n, (handlers, level, propagate) in saved.items():
        log = logging.getLogger(n)
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


LOGGING = {
    "version": 1,
    "handlers": {"mem": {"class": "logging.handlers.BufferingHandler", "capacity": 100}},
    "loggers": {"asyncwsgi.access": {"handlers": ["mem"], "level": "INFO", "propagate": False}},
}


@pytest.mark.parametrize("suffix", [".json", ".toml", ".py"])
def test_log_config_files(tmp_path: Path, suffix: str, restore_loggers: None) -> None:
    if suffix == ".toml" and sys.version_info < (3, 11):
        pytest.skip("TOML log configs need tomllib (Python 3.11+)")
    path = tmp_path / f"logging{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(LOGGING))
    elif suffix == ".toml":
        path.write_text(
            "version = 1\n[handlers.mem]\nclass = 'logging.handlers.BufferingHandler'\ncapacity = 100\n"
            "[loggers.'asyncwsgi.access']\nhandlers = ['mem']\nlevel = 'INFO'\npropagate = false\n"
        )
    else:
        path.write_text(f"LOGGING = {LOGGING!r}\n")
    assert load_log_config(str(path))["version"] == 1
    configure_logging("info", str(path))
    handler = logging.getLogger("asyncwsgi.access").handlers[0]
    assert isinstance(handler, logging.handlers.BufferingHandler)
    logging.getLogger("asyncwsgi.access").info("hello")
    assert [r.getMessage() for r in handler.buffer] == ["hello"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "No such file"),
        ("bad.json", "{", "Expecting"),
        ("list.json", "[1]", "dictConfig mapping"),
        ("conf.yaml", "x: 1", "use a .json"),
    ],
)
def test_bad_log_config_is_one_line(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_log_config(str(path))


def test_access_log_through_the_server(server, raw, caplog, restore_loggers) -> None:  # type: ignore[no-untyped-def]
    from tests.apps.basic import hello

    logging.getLogger("asyncwsgi.access").propagate = True
    caplog.set_level(logging.INFO, logger="asyncwsgi.access")
    c = raw(server(hello, access_log=True, access_log_format="%(m)s %(U)s %(s)s %(B)s"))
    c.send(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert c.read_response().status == 200
    c.close()
    assert wait_for_record(caplog, "GET /x 200 13")


def wait_for_record(caplog, text: str) -> bool:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the line is written by the worker just after the response (bounded)
        if any(r.getMessage() == text for r in caplog.records):
            return True
        time.sleep(0.01)
    return False
