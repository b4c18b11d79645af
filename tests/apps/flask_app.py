"""A small real Flask application: a page, JSON, a form, a multipart upload, a streamed response, a file sent with
``send_file`` (``wsgi.file_wrapper``, ranges included), a large generated body, an endless stream and an error.

Served through the command line (``asyncwsgi serve tests.apps.flask_app:app``) and in-process by the tests in
``tests/test_frameworks.py``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from flask import Flask, Response, jsonify, render_template_string, request, send_file, stream_with_context, url_for

app = Flask(__name__)

#: The file ``/source`` sends: this module's own source.
SOURCE = Path(__file__)
#: Set when the generator of ``/endless`` is closed (in-process tests wait on it).
ENDLESS_CLOSED = threading.Event()
#: Every file ``/source-tracked`` opened, so a test can check that each was closed.
OPENED_FILES: list[BinaryIO] = []


def big_chunks(count: int) -> Iterator[bytes]:
    """``count`` distinct 64 KiB blocks (the body of ``/big``)."""
    for i in range(count):
        yield hashlib.sha256(b"%d" % i).digest() * 2048


PAGE = """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body><h1>{{ title }}</h1>
<p id="where">{{ method }} {{ path }} under {{ script_root or "/" }}</p>
<form method="post" action="{{ url_for('form') }}"><input name="name" value="{{ name }}"></form>
</body></html>
"""


@app.get("/")
def index() -> str:
    return render_template_string(
        PAGE,
        title="Flask on asyncwsgi",
        method=request.method,
        path=request.path,
        script_root=request.script_root,
        name=request.args.get("name", "<anonymous>"),
    )


@app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify(name=name, path=request.path, full_path=request.full_path, url=request.url)


@app.get("/json")
def json_route() -> Response:
    return jsonify(
        method=request.method,
        path=request.path,
        script_root=request.script_root,
        args=request.args.to_dict(flat=False),
        remote_addr=request.remote_addr,
        remote_port=request.environ.get("REMOTE_PORT"),
        multithread=request.environ["wsgi.multithread"],
        form_url=url_for("form"),
        user_agent=request.headers.get("User-Agent"),
    )


@app.post("/form")
def form() -> Response:
    return jsonify(
        name=request.form["name"],
        colors=request.form.getlist("color"),
        content_type=request.mimetype,
    )


@app.post("/upload")
def upload() -> Response:
    files = []
    for field, storage in request.files.items(multi=True):
        data = storage.read()
        files.append(
            {
                "field": field,
                "filename": storage.filename,
                "content_type": storage.mimetype,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return jsonify(files=files, note=request.form.get("note"))


@app.get("/stream")
def stream() -> Response:
    count = request.args.get("n", 5, type=int)

    @stream_with_context
    def generate():  # type: ignore[no-untyped-def]
        # ``request`` is only usable here because of stream_with_context: the body is produced after the view returns.
        for i in range(count):
            yield f"{request.path}?n={count} line {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/source")
def source() -> Response:
    return send_file(SOURCE, mimetype="text/plain", conditional=True)


@app.get("/source-tracked")
def source_tracked() -> Response:
    """``/source`` with a file this app opens itself (and records), ranges handled by Werkzeug as usual."""
    f = SOURCE.open("rb")
    OPENED_FILES.append(f)
    rv = send_file(f, mimetype="text/plain", conditional=False)
    return rv.make_conditional(request.environ, accept_ranges=True, complete_length=SOURCE.stat().st_size)


@app.get("/big")
def big() -> Response:
    return Response(big_chunks(request.args.get("blocks", 16, type=int)), mimetype="application/octet-stream")


@app.get("/endless")
def endless() -> Response:
    """A stream far longer than any test reads (bounded all the same); its generator records being closed."""

    @stream_with_context
    def generate():  # type: ignore[no-untyped-def]
        try:
            for i in range(1_000_000):
                yield f"{request.path} line {i:07d}\n"
        finally:
            ENDLESS_CLOSED.set()

    return Response(generate(), mimetype="text/plain")


@app.get("/error")
def error() -> str:
    raise RuntimeError("flask route exploded: 93be1f")
