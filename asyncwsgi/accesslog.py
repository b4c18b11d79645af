"""The access log line: Apache's combined format by default, gunicorn-style ``%(x)s`` atoms, or JSON.

Atoms: ``h`` remote address, ``l`` ``-``, ``u`` user (``-``), ``t`` time ``[21/Nov/2026:18:06:36 +0000]``,
``r`` request line, ``m`` method, ``U`` path, ``q`` query string, ``H`` protocol, ``s`` status, ``B`` body bytes,
``b`` body bytes or ``-``, ``f`` referer, ``a`` user agent, ``T`` seconds, ``M`` milliseconds, ``D`` microseconds,
``L`` seconds with decimals, ``p`` pid, ``{name}i`` request header, ``{name}o`` response header, ``{key}e`` environ.
Text that comes from the client is escaped (quotes, backslashes, control characters) so it can neither end a quoted
field nor start a line of its own. Runs on the worker thread, after the response, only when the logger is enabled.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .errors import ConfigError

__all__ = ["COMBINED", "AccessLogFormat", "log_escape"]

COMBINED = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def log_escape(text: str) -> str:
    """Client-supplied text made safe for a log line (CWE-117), as Apache escapes it."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.translate(_ESCAPES)


class _Atoms(dict[str, Any]):
    """The values of one request, computed when the format asks for them."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__()
        self.r = record

    def __missing__(self, key: str) -> Any:
        r = self.r
        env: dict[str, Any] = r["environ"]
        value: Any
        if key == "h":
            value = env.get("REMOTE_ADDR") or "-"
        elif key in ("l", "u"):
            value = "-"
        elif key == "t":
            value = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(r["start_wall"]))
        elif key == "r":
            value = log_escape(f"{r['method']} {r['target']} {env.get('SERVER_PROTOCOL', 'HTTP/1.1')}")
        elif key == "m":
            value = r["method"]
        elif key == "U":
            value = log_escape(env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", ""))
        elif key == "q":
            value = log_escape(env.get("QUERY_STRING", ""))
        elif key == "H":
            value = env.get("SERVER_PROTOCOL", "-")
        elif key == "s":
            value = r["status"]
        elif key == "B":
            value = r["bytes"]
        elif key == "b":
            value = r["bytes"] or "-"
        elif key == "f":
            value = log_escape(env.get("HTTP_REFERER", "-"))
        elif key == "a":
            value = log_escape(env.get("HTTP_USER_AGENT", "-"))
        elif key == "T":
            value = int(r["duration"])
        elif key == "M":
            value = int(r["duration"] * 1000)
        elif key == "D":
            value = int(r["duration"] * 1_000_000)
        elif key == "L":
            value = f"{r['duration']:.6f}"
        elif key == "p":
            value = f"<{os.getpid()}>"
        elif key.startswith("{") and key[-2:] in ("}i", "}o", "}e"):
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                value = env.get("HTTP_" + name.upper().replace("-", "_"), "-")
            elif kind == "e":
                value = env.get(name, "-")
            else:
                value = next((v for k, v in r["headers"] if k.lower() == name.lower()), "-")
            value = log_escape(str(value))
        else:
            value = "-"
        self[key] = value
        return value


class AccessLogFormat:
    """``AccessLogFormat(None)`` is the combined format; ``"json"`` gives one JSON object per line."""

    def __init__(self, fmt: str | None) -> None:
        self.json = fmt == "json"
        self.fmt = COMBINED if fmt is None or self.json else fmt

    def check(self) -> None:
        """Raise ``ConfigError`` if the format cannot render a request."""
        sample = {
            "environ": {},
            "method": "GET",
            "target": "/",
            "status": "200",
            "bytes": 0,
            "duration": 0.0,
            "start_wall": 0.0,
            "headers": [],
        }
        try:
            self.line(sample)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"--access-log-format {self.fmt!r}: {exc}") from None

    def line(self, record: dict[str, Any]) -> str:
        """``record``: environ, method, target, status (str), bytes, duration (s), start_wall, headers."""
        if self.json:
            env = record["environ"]
            return json.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record["start_wall"])),
                    "remote_addr": env.get("REMOTE_ADDR") or None,
                    "method": record["method"],
                    "target": record["target"],
                    "protocol": env.get("SERVER_PROTOCOL"),
                    "status": int(record["status"]) if record["status"].isdigit() else None,
                    "bytes": record["bytes"],
                    "duration_ms": round(record["duration"] * 1000, 3),
                    "referer": env.get("HTTP_REFERER"),
                    "user_agent": env.get("HTTP_USER_AGENT"),
                },
                ensure_ascii=True,
            )
        return self.fmt % _Atoms(record)
