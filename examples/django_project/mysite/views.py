"""Views: a page, a form protected by CSRF, a JSON endpoint and a streamed response."""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.template import engines
from django.views.decorators.http import require_GET, require_http_methods, require_POST

_engine = engines["django"]

_INDEX = _engine.from_string(
    """<!doctype html>
<html><head><title>Django on asyncwsgi</title></head>
<body><h1>Django on asyncwsgi</h1>
<p id="where">{{ request.method }} {{ request.path }}</p>
<ul><li><a href="{% url 'notes' %}">notes</a></li><li><a href="{% url 'stream' %}?n=5">a stream</a></li></ul>
</body></html>
"""
)

_NOTES = _engine.from_string(
    """<!doctype html>
<html><head><title>Notes</title></head>
<body>{% if note %}<p id="saved">Saved: {{ note }}</p>{% endif %}
<form method="post" action="{% url 'notes' %}">{% csrf_token %}
<textarea name="note"></textarea><button type="submit">Save</button></form>
</body></html>
"""
)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_INDEX.render({}, request))


@require_http_methods(["GET", "POST"])
def notes(request: HttpRequest) -> HttpResponse:
    note = request.POST.get("note", "") if request.method == "POST" else ""
    return HttpResponse(_NOTES.render({"note": note}, request))


@require_POST
def echo(request: HttpRequest) -> JsonResponse:
    """JSON in, JSON out (CSRF applies: send the csrftoken cookie and the X-CSRFToken header)."""
    try:
        payload = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    return JsonResponse({"echo": payload, "script_name": request.META.get("SCRIPT_NAME", "")})


@require_GET
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = min(int(request.GET.get("n", "5")), 10_000)

    def lines() -> Iterator[str]:
        for i in range(count):
            yield f"django line {i}\n"

    return StreamingHttpResponse(lines(), content_type="text/plain")
