"""A tiny Falcon app: ``GET /`` (a greeting), ``POST /form`` (a form field read back), ``GET /stream`` (a streamed
response: ``resp.stream`` an iterator).

Serve it from the repository root (``pip install -e . falcon``)::

    asyncwsgi serve examples.frameworks.falcon_app:app --port 8000
    curl 'http://127.0.0.1:8000/?name=Ada'
    curl -d name=Ada http://127.0.0.1:8000/form
    curl 'http://127.0.0.1:8000/stream?n=3'
"""

from __future__ import annotations

from collections.abc import Iterator

import falcon


class Hello:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = f"Hello, {req.get_param('name', default='world')}, from Falcon\n"


class Form:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.get_media()  # application/x-www-form-urlencoded is parsed by Falcon's URL-encoded handler
        resp.media = {"framework": "falcon", "name": form.get("name", "")}


class Stream:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        count = req.get_param_as_int("n", default=5)

        def lines() -> Iterator[bytes]:
            for i in range(count):
                yield f"falcon line {i}\n".encode()

        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = lines()


app = falcon.App()
app.add_route("/", Hello())
app.add_route("/form", Form())
app.add_route("/stream", Stream())
