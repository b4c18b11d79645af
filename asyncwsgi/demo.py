"""The built-in demo app: ``asyncwsgi serve asyncwsgi.demo:app``.

A small page showing the request it received (method, path, headers, body) and the server's settings. ``POST`` a
form to see the body read back; ``/stream`` streams a chunked response.
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["app"]

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>asyncwsgi demo</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;
vertical-align:top;font-family:monospace}}h2{{margin-top:1.5rem}}</style></head>
<body><h1>asyncwsgi is serving</h1>
<p>{method} <code>{path}</code> over {protocol} from {remote}</p>
<form method="post" action="{script}/echo"><input name="message" value="hello">
<button type="submit">POST a form</button></form>
<p><a href="{script}/stream">a streamed (chunked) response</a></p>
{body}
<h2>Request headers</h2><table>{headers}</table>
<h2>WSGI environ</h2><table>{environ}</table>
<h2>Server settings</h2><table>{settings}</table>
</body></html>
"""

StartResponse = Callable[..., Any]


def _rows(pairs: Iterable[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in pairs)


def _stream() -> Iterator[bytes]:
    for i in range(5):
        yield f"chunk {i} at {time.strftime('%H:%M:%S')}\n".encode()
        time.sleep(0.2)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return _stream()
    body_html = ""
    if environ["REQUEST_METHOD"] == "POST":
        data = environ["wsgi.input"].read()
        body_html = (
            f"<h2>Request body ({len(data)} bytes)</h2><pre>{html.escape(data.decode('utf-8', 'replace'))}</pre>"
        )
    headers = sorted((k[5:].replace("_", "-").title(), v) for k, v in environ.items() if k.startswith("HTTP_"))
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if key in environ:
            headers.append((key.replace("_", "-").title(), environ[key]))
    cgi = sorted((k, v) for k, v in environ.items() if k.isupper() and not k.startswith("HTTP_"))
    wsgi = sorted((k, v) for k, v in environ.items() if k.startswith("wsgi."))
    config = environ.get("asyncwsgi.config")
    settings = dataclasses.asdict(config).items() if config is not None else [("(not asyncwsgi)", "")]
    page = _PAGE.format(
        method=html.escape(environ["REQUEST_METHOD"]),
        path=html.escape(environ.get("SCRIPT_NAME", "") + path),
        protocol=html.escape(environ.get("SERVER_PROTOCOL", "")),
        remote=html.escape(environ.get("REMOTE_ADDR") or "a local socket"),
        script=html.escape(environ.get("SCRIPT_NAME", "")),
        body=body_html,
        headers=_rows(headers),
        environ=_rows(cgi + wsgi),
        settings=_rows(settings),
    ).encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))])
    return [page]
