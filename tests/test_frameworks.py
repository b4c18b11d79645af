"""Real frameworks end to end: a Flask app and a Django project served through the command line in a subprocess
(``asyncwsgi serve tests.apps.flask_app:app`` / ``tests.apps.djangoproj.wsgi:application``), exercised with
``requests`` and ``httpx``: pages, JSON, forms, multipart uploads, streamed responses, files sent through
``wsgi.file_wrapper`` (Flask's ``send_file`` with ranges, Django's ``FileResponse``), CSRF, errors, 404s and
``--root-path``. The second ("mounted") server of each framework also runs on the stdlib asyncio loop, where files
go out with the loop's sendfile; the first runs on uvloop. The Flask app is also served in-process with the
``server`` fixture.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import requests

from .apps import flask_app
from .cli_helpers import ServerProcess, ServerProcesses
from .helpers import RawClient

DJANGO_ENV = {"DJANGO_SETTINGS_MODULE": "tests.apps.djangoproj.settings"}
CSRF_FIELD_RE = re.compile(r'<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">')


@pytest.fixture(scope="module")
def procs() -> Iterator[ServerProcesses]:
    with ServerProcesses() as p:
        yield p


@pytest.fixture(scope="module")
def flask_cli(procs: ServerProcesses) -> ServerProcess:
    return procs.start(["tests.apps.flask_app:app", "--port", "0"], console_script=True)


@pytest.fixture(scope="module")
def flask_mounted(procs: ServerProcesses) -> ServerProcess:
    return procs.start(
        ["tests.apps.flask_app:app", "--port", "0", "--root-path", "/api", "--loop", "asyncio"], console_script=True
    )


@pytest.fixture(scope="module")
def django_cli(procs: ServerProcesses) -> ServerProcess:
    return procs.start(["tests.apps.djangoproj.wsgi:application", "--port", "0"], console_script=True, env=DJANGO_ENV)


@pytest.fixture(scope="module")
def django_mounted(procs: ServerProcesses) -> ServerProcess:
    return procs.start(
        ["tests.apps.djangoproj.wsgi:application", "--port", "0", "--root-path", "/site", "--loop", "asyncio"],
        env=DJANGO_ENV,
    )


@pytest.fixture(params=["flask_cli", "flask_mounted"], ids=["uvloop", "asyncio-mounted"])
def flask_base(request: pytest.FixtureRequest) -> str:
    """The base URL of either Flask server (the mounted one under /api)."""
    proc = request.getfixturevalue(request.param)
    return proc.url + ("/api" if request.param == "flask_mounted" else "")


@pytest.fixture(params=["django_cli", "django_mounted"], ids=["uvloop", "asyncio-mounted"])
def django_base(request: pytest.FixtureRequest) -> str:
    """The base URL of either Django server (the mounted one under /site)."""
    proc = request.getfixturevalue(request.param)
    return proc.url + ("/site" if request.param == "django_mounted" else "")


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# == Flask through the command line ===================================================================================


def test_flask_page(flask_cli):
    with requests.get(f"{flask_cli.url}/", params={"name": "<b>Ada</b>"}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert int(r.headers["Content-Length"]) == len(r.content)
        assert r.headers["Server"] == "asyncwsgi"
        assert "<h1>Flask on asyncwsgi</h1>" in r.text
        assert '<p id="where">GET / under /</p>' in r.text
        assert '<form method="post" action="/form"><input name="name" value="&lt;b&gt;Ada&lt;/b&gt;"></form>' in r.text


def test_flask_json(flask_cli):
    with httpx.Client(base_url=flask_cli.url, timeout=10, headers={"User-Agent": "fw-test/2"}) as client:
        r = client.get("/json", params=[("a", "1"), ("a", "2"), ("b", "x y/é")])
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc.pop("remote_port").isdigit()
    assert doc == {
        "method": "GET",
        "path": "/json",
        "script_root": "",
        "args": {"a": ["1", "2"], "b": ["x y/é"]},
        "remote_addr": "127.0.0.1",
        "multithread": True,
        "form_url": "/form",
        "user_agent": "fw-test/2",
    }


def test_flask_non_ascii_path_and_query(flask_base):
    """PEP 3333: PATH_INFO holds the URL-decoded bytes as latin-1; Werkzeug turns them back into UTF-8 text."""
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{flask_base}/hello/h%C3%A9llo%20w%C3%B6rld", params={"q": "ünï"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["name"] == "héllo wörld"
    assert doc["path"] == "/hello/héllo wörld"
    assert doc["full_path"] == "/hello/héllo wörld?q=%C3%BCn%C3%AF"
    assert doc["url"] == f"{flask_base}/hello/héllo%20wörld?q=ünï"  # Werkzeug gives an IRI


def test_flask_form(flask_cli):
    data = {"name": "Zoë & co = 1+1", "color": ["red", "blue green"]}
    with requests.Session() as session:
        r = session.post(f"{flask_cli.url}/form", data=data, timeout=10)
        again = session.post(f"{flask_cli.url}/form", data={"name": "second"}, timeout=10)  # same connection
    assert r.status_code == 200
    assert r.json() == {
        "name": "Zoë & co = 1+1",
        "colors": ["red", "blue green"],
        "content_type": "application/x-www-form-urlencoded",
    }
    assert again.json()["name"] == "second"


def test_flask_keep_alive_and_concurrency(flask_cli):
    """requests reuses its connection (same client port seen by the app); 24 clients at once are all answered."""
    with requests.Session() as session:
        ports = {session.get(f"{flask_cli.url}/json", timeout=10).json()["remote_port"] for _ in range(3)}
    assert len(ports) == 1

    def fetch(i: int) -> tuple[int, list[str]]:
        with httpx.Client(timeout=10) as client:
            r = client.get(f"{flask_cli.url}/json", params={"i": str(i)})
        return r.status_code, r.json()["args"]["i"]

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(fetch, range(24)))
    assert results == [(200, [str(i)]) for i in range(24)]


def test_flask_multipart_upload(flask_cli):
    big = payload(300_000, seed=1)
    small = "naïve text\r\n--not-a-boundary\r\n".encode()
    files = [
        ("file", ("data.bin", big, "application/octet-stream")),
        ("file", ("notes.txt", small, "text/plain")),
    ]
    with requests.post(f"{flask_cli.url}/upload", files=files, data={"note": "two files"}, timeout=10) as r:
        assert r.status_code == 200
        assert r.json() == {
            "note": "two files",
            "files": [
                {
                    "field": "file",
                    "filename": "data.bin",
                    "content_type": "application/octet-stream",
                    "size": len(big),
                    "sha256": hashlib.sha256(big).hexdigest(),
                },
                {
                    "field": "file",
                    "filename": "notes.txt",
                    "content_type": "text/plain",
                    "size": len(small),
                    "sha256": hashlib.sha256(small).hexdigest(),
                },
            ],
        }


def test_flask_upload_chunked_request_body(flask_cli):
    """A multipart body sent with Transfer-Encoding: chunked (no Content-Length) from a generator."""
    data = payload(200_000, seed=2)
    boundary = "asyncwsgi-boundary-5e1d"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="gen.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 7000):
            yield body[i : i + 7000]

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{flask_cli.url}/upload", content=chunks(), headers=headers)
    assert r.status_code == 200
    assert r.json()["files"] == [
        {
            "field": "file",
            "filename": "gen.bin",
            "content_type": "application/octet-stream",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    ]


def test_flask_upload_with_expect_100_continue(flask_cli):
    """curl's way for big uploads: the head first, the body only after the server's 100 Continue (RFC 9110 10.1.1),
    which comes when Flask starts reading the form."""
    data = payload(120_000, seed=5)
    boundary = "expect-boundary-77"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload"; filename="e.bin"\r\n\r\n'.encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    client = RawClient("127.0.0.1", flask_cli.port, timeout=10)
    try:
        client.send(
            b"POST /upload HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
            b"Content-Type: multipart/form-data; boundary=" + boundary.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert client.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(body)
        resp = client.read_response("POST")
    finally:
        client.close()
    assert resp.status == 200
    (entry,) = json.loads(resp.body)["files"]
    assert (entry["filename"], entry["size"]) == ("e.bin", len(data))
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_flask_streamed_response_to_an_http_1_0_client(flask_cli):
    """No chunked encoding for HTTP/1.0 (RFC 9112 7.1): the body ends when the server closes."""
    client = RawClient("127.0.0.1", flask_cli.port, timeout=10)
    try:
        client.send(b"GET /stream?n=4 HTTP/1.0\r\nHost: test\r\n\r\n")
        data = client.read_all()
    finally:
        client.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(b"/stream?n=4 line %d\n" % i for i in range(4))


def test_flask_streamed_response(flask_cli):
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{flask_cli.url}/stream?n=7") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in r.headers
        lines = list(r.iter_lines())
    assert lines == [f"/stream?n=7 line {i}" for i in range(7)]


def test_flask_error_route_is_flasks_500(flask_cli):
    with requests.get(f"{flask_cli.url}/error", timeout=10) as r:
        assert r.status_code == 500
        assert "<h1>Internal Server Error</h1>" in r.text
        assert int(r.headers["Content-Length"]) == len(r.content)
    # Flask logs the exception to wsgi.errors, which the server writes to its error log.
    flask_cli.wait_for(r"RuntimeError: flask route exploded: 93be1f")
    with requests.get(f"{flask_cli.url}/json", timeout=10) as after:
        assert after.status_code == 200  # the server is fine afterwards


def test_flask_404(flask_cli):
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{flask_cli.url}/no/such/page")
    assert r.status_code == 404
    assert "<h1>Not Found</h1>" in r.text


def test_flask_head(flask_cli):
    with httpx.Client(timeout=10) as client:
        get = client.get(f"{flask_cli.url}/")
        head = client.head(f"{flask_cli.url}/")
    assert head.status_code == 200
    assert head.content == b""
    # The page names the method: "HEAD" is one character longer than "GET".
    assert int(head.headers["content-length"]) == len(get.content) + len("HEAD") - len("GET")
    assert '<p id="where">GET / under /</p>' in get.text


def test_flask_send_file(flask_base):
    source = flask_app.SOURCE.read_bytes()
    with httpx.Client(timeout=10) as client:
        whole = client.get(f"{flask_base}/source")
        part = client.get(f"{flask_base}/source", headers={"Range": "bytes=100-1099"})
        tail = client.get(f"{flask_base}/source", headers={"Range": "bytes=-50"})
    assert whole.status_code == 200
    assert whole.content == source
    assert whole.headers["content-length"] == str(len(source))
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{len(source)}"
    assert part.content == source[100:1100]
    assert tail.status_code == 206
    assert tail.content == source[-50:]


def test_flask_large_streamed_body(flask_base):
    expected = b"".join(flask_app.big_chunks(48))  # 3 MiB
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{flask_base}/big?blocks=48") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        received = b"".join(r.iter_bytes())
    assert len(received) == len(expected)
    assert hashlib.sha256(received).digest() == hashlib.sha256(expected).digest()


def test_flask_under_root_path(flask_mounted):
    with httpx.Client(base_url=flask_mounted.url, timeout=10) as client:
        r = client.get("/api/json")
        form = client.post("/api/form", data={"name": "mounted"})
        page = client.get("/api/")
    assert r.status_code == 200
    doc = r.json()
    assert (doc["script_root"], doc["path"], doc["form_url"]) == ("/api", "/json", "/api/form")
    assert form.json()["name"] == "mounted"
    assert '<p id="where">GET / under /api</p>' in page.text
    assert 'action="/api/form"' in page.text


# == Django through the command line ==================================================================================


def test_django_page(django_cli):
    with requests.get(f"{django_cli.url}/", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<h1>Django on asyncwsgi</h1>" in r.text
        assert '<p id="where">GET / (script none)</p>' in r.text
        assert '<a href="/form/">the form</a>' in r.text


@pytest.mark.parametrize("client_kind", ["requests", "httpx"])
def test_django_form_with_csrf(django_cli, client_kind):
    name = "Ada Lovelace & <Babbage>"
    if client_kind == "requests":
        with requests.Session() as session:
            form = session.get(f"{django_cli.url}/form/", timeout=10)
            cookie = session.cookies.get("csrftoken")
            token = CSRF_FIELD_RE.search(form.text)
            assert token is not None, form.text
            posted = session.post(
                f"{django_cli.url}/form/", data={"csrfmiddlewaretoken": token.group(1), "name": name}, timeout=10
            )
            status, text = posted.status_code, posted.text
    else:
        with httpx.Client(base_url=django_cli.url, timeout=10) as client:
            form = client.get("/form/")
            cookie = client.cookies.get("csrftoken")
            token = CSRF_FIELD_RE.search(form.text)
            assert token is not None, form.text
            posted = client.post("/form/", data={"csrfmiddlewaretoken": token.group(1), "name": name})
            status, text = posted.status_code, posted.text
    assert form.status_code == 200
    assert cookie  # Django set the CSRF cookie on the GET
    assert status == 200, text
    assert f'<p id="thanks">Thanks, {html.escape(name)} ({len(name)} characters)</p>' in text


def test_django_post_without_csrf_token_is_403(django_cli):
    with httpx.Client(base_url=django_cli.url, timeout=10) as client:
        client.get("/form/")
        r = client.post("/form/", data={"name": "no token"})
    assert r.status_code == 403
    assert "CSRF verification failed" in r.text


def test_django_404(django_cli):
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{django_cli.url}/no/such/page/")
    assert r.status_code == 404
    assert "<h1>Not Found</h1>" in r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"


def test_django_streaming_response(django_base):
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{django_base}/stream/?n=6") as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"django line {i}" for i in range(6)]


@pytest.mark.parametrize("offset", [0, 1000])
def test_django_file_response(django_base, offset):
    """FileResponse goes through wsgi.file_wrapper; from an offset, only the rest of the file is sent."""
    source = views_source()
    with requests.get(f"{django_base}/download/", params={"offset": offset}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(len(source) - offset)
        assert r.content == source[offset:]


def views_source() -> bytes:
    return (Path(flask_app.__file__).parent / "djangoproj" / "views.py").read_bytes()


def test_django_under_root_path(django_mounted):
    with requests.Session() as session:
        page = session.get(f"{django_mounted.url}/site/", timeout=10)
        form = session.get(f"{django_mounted.url}/site/form/", timeout=10)
        token = CSRF_FIELD_RE.search(form.text)
        assert token is not None, form.text
        data = {"csrfmiddlewaretoken": token.group(1), "name": "Grace"}
        posted = session.post(f"{django_mounted.url}/site/form/", data=data, timeout=10)
    assert page.status_code == 200
    assert '<p id="where">GET /site/ (script /site)</p>' in page.text
    assert '<a href="/site/form/">the form</a>' in page.text
    assert 'action="/site/form/"' in form.text
    assert posted.status_code == 200, posted.text
    assert '<p id="thanks">Thanks, Grace (5 characters)</p>' in posted.text


# == Flask in process =================================================================================================


@pytest.fixture
def flask_inproc(server):
    # Not wrapped in wsgiref.validate: Werkzeug reads form bodies with wsgi.input.read() and no size (it relies on
    # wsgi.input_terminated), which the validator rejects.
    return server(flask_app.app)


def test_flask_in_process_form_and_json(flask_inproc):
    with httpx.Client(base_url=flask_inproc.url, timeout=10) as client:
        form = client.post("/form", data={"name": "in process", "color": "teal"})
        doc = client.get("/json?q=1").json()
    assert form.json() == {
        "name": "in process",
        "colors": ["teal"],
        "content_type": "application/x-www-form-urlencoded",
    }
    assert (doc["path"], doc["args"], doc["remote_addr"]) == ("/json", {"q": ["1"]}, "127.0.0.1")


def test_flask_in_process_upload(flask_inproc):
    data = payload(150_000, seed=3)
    with requests.post(f"{flask_inproc.url}/upload", files={"doc": ("a.bin", data)}, timeout=10) as r:
        assert r.status_code == 200
        (entry,) = r.json()["files"]
    assert (entry["field"], entry["filename"], entry["size"]) == ("doc", "a.bin", len(data))
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_flask_in_process_stream_is_chunked_on_the_wire(flask_inproc, raw):
    client = raw(flask_inproc)
    client.send(b"GET /stream?n=3 HTTP/1.1\r\nHost: test\r\n\r\n")
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    expected = b"".join(b"/stream?n=3 line %d\n" % i for i in range(3))
    received = b""
    for _ in range(10):  # at most one chunk per line, plus the last
        size = int(client.file.readline(), 16)
        chunk = client.read_exactly(size + 2)
        assert chunk.endswith(b"\r\n")
        if size == 0:
            break
        received += chunk[:-2]
    assert received == expected
    # The connection stays usable: a second request on it.
    client.send(b"GET /json HTTP/1.1\r\nHost: test\r\n\r\n")
    assert client.read_response().status == 200


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_flask_in_process_send_file(server, loop):
    """Whole files only here (ranges: see the next test), on both loops (asyncio: the loop's sendfile)."""
    handle = server(flask_app.app, loop=loop)
    source = flask_app.SOURCE.read_bytes()
    with httpx.Client(base_url=handle.url, timeout=10) as client:
        whole = client.get("/source")
        head = client.head("/source")
        again = client.get("/source")  # same connection, after a file
    assert (whole.status_code, whole.content) == (200, source)
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", str(len(source)))
    assert (again.status_code, again.content) == (200, source)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("byte_range", [None, "bytes=10-19"], ids=["whole", "range"])
def test_flask_in_process_send_file_closes_the_file(server, loop, byte_range):
    """PEP 3333: the file wrapper's close() closes the file. With a Range, Werkzeug keeps ``iter(wrapper)`` and
    closes that (``_RangeWrapper.close``), as it can with the stdlib's and Werkzeug's own wrappers."""
    handle = server(flask_app.app, loop=loop)
    source = flask_app.SOURCE.read_bytes()
    flask_app.OPENED_FILES.clear()
    try:
        with httpx.Client(base_url=handle.url, timeout=10) as client:
            r = client.get("/source-tracked", headers={"Range": byte_range} if byte_range else {})
        assert r.content == (source[10:20] if byte_range else source)
        handle.stop()  # the app's iterable is closed before the response ends, so surely by now
        (f,) = flask_app.OPENED_FILES
        assert f.closed
    finally:
        for f in flask_app.OPENED_FILES:
            f.close()  # so that a leak fails this test only, not a later one through a ResourceWarning
        flask_app.OPENED_FILES.clear()


def test_flask_in_process_client_gone_closes_the_stream(flask_inproc, raw):
    """The client reads the start of an endless stream and leaves: the server closes the app's iterable, which runs
    the generator's ``finally`` (and Flask's request teardown)."""
    flask_app.ENDLESS_CLOSED.clear()
    client = raw(flask_inproc)
    client.send(b"GET /endless HTTP/1.1\r\nHost: test\r\n\r\n")
    head = client.read_head()
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    size = int(client.file.readline(), 16)
    assert client.read_exactly(size + 2).startswith(b"/endless line 0000000\n")
    client.close()
    assert flask_app.ENDLESS_CLOSED.wait(10)


def test_flask_in_process_error_is_500(flask_inproc):
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{flask_inproc.url}/error")
        ok = client.get(f"{flask_inproc.url}/")
    assert r.status_code == 500
    assert "<h1>Internal Server Error</h1>" in r.text
    assert ok.status_code == 200
