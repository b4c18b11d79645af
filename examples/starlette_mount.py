"""A Starlette app that mounts an existing Flask app through ``asyncwsgi.to_asgi``, served by uvicorn.

The native routes are async Starlette endpoints; everything under ``/legacy`` is the Flask app, run on the adapter's
worker threads (``to_asgi(flask_app, threads=32)``), so a slow Flask view never blocks the event loop or the native
routes. Flask sees the mount as ``SCRIPT_NAME``: its ``url_for`` and redirects carry the ``/legacy`` prefix.

Run it from the repository root (``pip install -e . flask starlette uvicorn``)::

    python examples/starlette_mount.py            # port 8000
    python examples/starlette_mount.py 8080       # the port as an argument
    PORT=0 python examples/starlette_mount.py     # any free port; uvicorn logs "Uvicorn running on http://..."

or with uvicorn's own command line: ``uvicorn examples.starlette_mount:app --port 8000``. Then::

    curl http://127.0.0.1:8000/                        # native
    curl http://127.0.0.1:8000/legacy/                 # Flask
    curl -d name=Ada http://127.0.0.1:8000/legacy/form # Flask form POST
    curl http://127.0.0.1:8000/legacy/stream?n=3       # Flask streamed response

Ctrl-C or SIGTERM stops uvicorn gracefully.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from flask import Flask, Response, jsonify, redirect, request, url_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from asyncwsgi import to_asgi

# -- the existing WSGI application ---------------------------------------------------------------------------------

flask_app = Flask(__name__)


@flask_app.get("/")
def legacy_index() -> Response:
    return jsonify(app="flask", script_root=request.script_root, path=request.path, form=url_for("legacy_form"))


@flask_app.route("/form", methods=["GET", "POST"])
def legacy_form() -> Response:
    if request.method == "POST":
        return jsonify(hello=request.form.get("name", "anonymous"))
    return redirect(url_for("legacy_index"))


@flask_app.get("/stream")
def legacy_stream() -> Response:
    count = request.args.get("n", type=int, default=5)

    def lines() -> Iterator[str]:
        for i in range(count):
            yield f"flask line {i}\n"

    return Response(lines(), mimetype="text/plain")


# -- the async application around it ---------------------------------------------------------------------------------


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("native starlette; the Flask app is under /legacy/\n")


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"app": "starlette", "pong": True})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/api/ping", ping),
        Mount("/legacy", app=to_asgi(flask_app, threads=32)),
    ]
)


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("PORT", "8000"))
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=port, log_level="info")
