"""A tiny Bottle app: ``GET /`` (a greeting), ``POST /form`` (a form field read back), ``GET /stream`` (a streamed
response: the route returns a generator).

Serve it from the repository root (``pip install -e . bottle``)::

    asyncwsgi serve examples.frameworks.bottle_app:app --port 8000
    curl 'http://127.0.0.1:8000/?name=Ada'
    curl -d name=Ada http://127.0.0.1:8000/form
    curl 'http://127.0.0.1:8000/stream?n=3'
"""

from __future__ import annotations

from collections.abc import Iterator

import bottle

app = bottle.Bottle()


@app.get("/")
def hello() -> str:
    bottle.response.content_type = "text/plain"
    return f"Hello, {bottle.request.query.getunicode('name', default='world')}, from Bottle\n"


@app.post("/form")
def form() -> dict[str, str]:
    return {"framework": "bottle", "name": bottle.request.forms.getunicode("name", default="")}


@app.get("/stream")
def stream() -> Iterator[str]:
    count = int(bottle.request.query.get("n", "5"))
    bottle.response.content_type = "text/plain"

    def lines() -> Iterator[str]:
        for i in range(count):
            yield f"bottle line {i}\n"

    return lines()
