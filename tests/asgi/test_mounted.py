"""A Flask app mounted in a Starlette app through ``to_asgi`` (``Mount("/legacy", app=to_asgi(flask_app))``) next to
native async routes, served by uvicorn, hypercorn on asyncio and hypercorn on trio.

Covered through the mount: GET with query strings, a form POST, a multipart upload, a JSON POST, a streamed response
(``stream_with_context``), ``url_for`` and redirects carrying the ``/legacy`` prefix (SCRIPT_NAME from the mount's
``root_path``), Flask's 404 under the mount and Starlette's outside it; and native routes answering while a slow
WSGI request holds its worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from flask import Flask, Response, jsonify, redirect, request, stream_with_context, url_for
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from asyncwsgi import to_asgi

from .conftest import ASGIServer

StartServer = Callable[..., ASGIServer]
TIMEOUT = 5.0


@dataclass
class SlowGate:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    waited: list[bool] = field(default_factory=list)


def make_flask(gate: SlowGate) -> Flask:
    app = Flask("legacy")

    @app.get("/hello")
    def hello() -> Response:
        return jsonify(
            script_root=request.script_root,
            path=request.path,
            full_path=request.full_path,
            args=request.args.to_dict(flat=False),
            form_url=url_for("form"),
            external=url_for("hello", _external=True),
        )

    @app.post("/form")
    def form() -> Response:
        return jsonify(name=request.form["name"], colors=request.form.getlist("color"), mimetype=request.mimetype)

    @app.post("/upload")
    def upload() -> Response:
        f = request.files["doc"]
        data = f.read()
        return jsonify(filename=f.filename, size=len(data), head=data[:16].decode("latin-1"), note=request.form["note"])

    @app.post("/json")
    def json_echo() -> Response:
        payload = request.get_json()
        return jsonify(received=payload, keys=sorted(payload))

    @app.get("/stream")
    def stream() -> Response:
        count = int(request.args.get("n", "5"))

        def lines() -> Iterator[str]:
            for i in range(count):
                yield f"line {i} of {request.path}\n"

        return Response(stream_with_context(lines()), mimetype="text/plain")

    @app.get("/go")
    def go() -> Any:
        return redirect(url_for("hello", who="redirected"))

    @app.get("/slow")
    def slow() -> str:
        gate.entered.set()
        gate.waited.append(gate.release.wait(TIMEOUT * 2))
        return "slow done"

    return app


def make_site(gate: SlowGate) -> Starlette:
    async def native(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"native {request.url.path} {request.query_params.get('i', '-')}")

    async def native_echo(request: Request) -> JSONResponse:
        return JSONResponse({"native": await request.json()})

    return Starlette(
        routes=[
            Route("/native", native),
            Route("/native/echo", native_echo, methods=["POST"]),
            Mount("/legacy", app=to_asgi(make_flask(gate))),
        ]
    )


@pytest.fixture
def site(asgi_server: StartServer) -> tuple[ASGIServer, SlowGate]:
    gate = SlowGate()
    return asgi_server(make_site(gate)), gate


def test_get_through_mount(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/legacy/hello", params={"a": ["1", "2"], "b": "x y"})
    assert resp.status_code == 200
    assert resp.json() == {
        "script_root": "/legacy",
        "path": "/hello",
        "full_path": "/hello?a=1&a=2&b=x+y",
        "args": {"a": ["1", "2"], "b": ["x y"]},
        "form_url": "/legacy/form",
        "external": f"http://{srv.host}:{srv.port}/legacy/hello",
    }


def test_redirect_keeps_prefix(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/legacy/go")
        assert resp.status_code == 302
        assert resp.headers["location"] == "/legacy/hello?who=redirected"
        followed = client.get(srv.url + "/legacy/go", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json()["args"] == {"who": ["redirected"]}


def test_form_post(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(srv.url + "/legacy/form", data={"name": "Zoë & co", "color": ["red", "blue"]})
    assert resp.status_code == 200
    assert resp.json() == {
        "name": "Zoë & co",
        "colors": ["red", "blue"],
        "mimetype": "application/x-www-form-urlencoded",
    }


def test_multipart_upload(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    doc = bytes(range(256)) * 1024  # 256 KiB
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(
            srv.url + "/legacy/upload",
            files={"doc": ("data.bin", doc, "application/octet-stream")},
            data={"note": "binary"},
        )
    assert resp.status_code == 200
    assert resp.json() == {
        "filename": "data.bin",
        "size": len(doc),
        "head": doc[:16].decode("latin-1"),
        "note": "binary",
    }


def test_json_post(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    payload = {"b": [1, 2, 3], "a": {"nested": "é"}, "c": None}
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.post(srv.url + "/legacy/json", json=payload)
        native = client.post(srv.url + "/native/echo", json=payload)
    assert resp.status_code == 200
    assert resp.json() == {"received": payload, "keys": ["a", "b", "c"]}
    assert native.json() == {"native": payload}


def test_streamed_response(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    with httpx.Client(timeout=TIMEOUT) as client:
        resp = client.get(srv.url + "/legacy/stream", params={"n": "40"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert resp.text == "".join(f"line {i} of /stream\n" for i in range(40))


def test_not_found_inside_and_outside_mount(site: tuple[ASGIServer, SlowGate]) -> None:
    srv, _ = site
    with httpx.Client(timeout=TIMEOUT) as client:
        flask_404 = client.get(srv.url + "/legacy/missing")
        starlette_404 = client.get(srv.url + "/missing")
    assert flask_404.status_code == 404
    assert "<h1>Not Found</h1>" in flask_404.text  # Flask's (werkzeug's) page
    assert (starlette_404.status_code, starlette_404.text) == (404, "Not Found")


def test_native_routes_served_while_wsgi_request_in_flight(site: tuple[ASGIServer, SlowGate]) -> None:
    """A WSGI request blocked in its worker thread holds neither the loop nor the native routes: they answer while
    it is still blocked (it is released only after they did)."""
    srv, gate = site
    with httpx.Client(timeout=TIMEOUT) as client, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.get, srv.url + "/legacy/slow")
        try:
            assert gate.entered.wait(TIMEOUT), "the slow WSGI request never started"
            answers = [client.get(srv.url + "/native", params={"i": i}).text for i in range(5)]
            echo = client.post(srv.url + "/native/echo", json={"during": "slow"})
            assert not slow.done()
        finally:
            gate.release.set()
        slow_resp = slow.result(TIMEOUT)
    assert answers == [f"native /native {i}" for i in range(5)]
    assert echo.json() == {"native": {"during": "slow"}}
    assert (slow_resp.status_code, slow_resp.text) == (200, "slow done")
    assert gate.waited == [True]
