"""Views: a page; a form (GET shows it with a CSRF token, POST reads it back); a streamed response; a file
download (``FileResponse``, sent through ``wsgi.file_wrapper``), optionally from an offset into the file."""

from __future__ import annotations

from pathlib import Path

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template import engines
from django.views.decorators.http import require_GET, require_http_methods

_PAGE = engines["django"].from_string(
    """<!doctype html>
<html><head><title>Django on asyncwsgi</title></head>
<body><h1>Django on asyncwsgi</h1>
<p id="where">{{ request.method }} {{ request.path }} (script {{ request.META.SCRIPT_NAME|default:"none" }})</p>
<a href="{% url 'form' %}">the form</a>
</body></html>
"""
)

_FORM = engines["django"].from_string(
    """<!doctype html>
<html><head><title>Django form</title></head>
<body>{% if name %}<p id="thanks">Thanks, {{ name }} ({{ count }} characters)</p>{% endif %}
<form method="post" action="{% url 'form' %}">{% csrf_token %}
<input name="name" value=""><button type="submit">Send</button></form>
</body></html>
"""
)


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_PAGE.render({}, request))


@require_http_methods(["GET", "POST"])
def form(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "") if request.method == "POST" else ""
    return HttpResponse(_FORM.render({"name": name, "count": len(name)}, request))


#: The file ``/download/`` sends: this module's own source.
SOURCE = Path(__file__)


@require_GET
def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))
    return StreamingHttpResponse((f"django line {i}\n" for i in range(count)), content_type="text/plain")


@require_GET
def download(request: HttpRequest) -> FileResponse:
    f = SOURCE.open("rb")
    f.seek(int(request.GET.get("offset", "0")))
    return FileResponse(f, content_type="text/plain")
