"""A tiny Pyramid app: ``GET /`` (a greeting), ``POST /form`` (a form field read back), ``GET /stream`` (a streamed
response, ``app_iter`` a generator).

Serve it from the repository root (``pip install -e . pyramid``)::

    asyncwsgi serve examples.frameworks.pyramid_app:app --port 8000
    curl 'http://127.0.0.1:8000/?name=Ada'
    curl -d name=Ada http://127.0.0.1:8000/form
    curl 'http://127.0.0.1:8000/stream?n=3'
"""

from __future__ import annotations

from collections.abc import Iterator

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response


def hello(request: Request) -> Response:
    return Response(f"Hello, {request.params.get('name', 'world')}, from Pyramid\n", content_type="text/plain")


def form(request: Request) -> Response:
    return Response(json_body={"framework": "pyramid", "name": request.POST.get("name", "")})


def stream(request: Request) -> Response:
    count = int(request.params.get("n", "5"))

    def lines() -> Iterator[bytes]:
        for i in range(count):
            yield f"pyramid line {i}\n".encode()

    return Response(app_iter=lines(), content_type="text/plain")


def make_app() -> object:
    with Configurator() as config:
        config.add_route("hello", "/", request_method="GET")
        config.add_route("form", "/form", request_method="POST")
        config.add_route("stream", "/stream", request_method="GET")
        config.add_view(hello, route_name="hello")
        config.add_view(form, route_name="form")
        config.add_view(stream, route_name="stream")
        return config.make_wsgi_app()


app = make_app()
