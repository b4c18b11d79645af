"""PEP 3333 "environ Variables": every CGI key the server must provide and its exact value, the ``wsgi.*`` keys,
native strings throughout ("A Note On String Types", "Unicode Issues"), and the environ as a whole passing
``wsgiref.validate``. Requests are sent byte for byte over a raw socket so that nothing is normalised on the way."""

from __future__ import annotations

import logging
import socket
import threading
import warnings
from typing import Any
from wsgiref.validate import check_environ, validator

import pytest

from .support import WAIT, EnvironRecorder, chunked, request_bytes


def environ_for(server, raw, request: bytes, method: str = "GET", **options: Any) -> dict[str, Any]:
    """Start a server with a validated recording app, send ``request`` and return the environ the app saw."""
    recorder = EnvironRecorder()
    handle = server(validator(recorder), **options)
    client = raw(handle)
    client.send(request)
    resp = client.read_response(method)
    assert resp.status == 200, resp
    assert resp.body == (b"" if method == "HEAD" else b"ok")
    assert len(recorder.environs) == 1
    return recorder.last


# -- request line ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_method(server, raw, method):
    """REQUEST_METHOD is the request's method, exactly ("environ Variables")."""
    env = environ_for(server, raw, request_bytes(method, "/m", [("Content-Length", "0")]), method)
    assert env["REQUEST_METHOD"] == method


def test_script_name_empty_by_default(server, raw):
    """SCRIPT_NAME may be empty when the app is mounted at the root; PATH_INFO is then the whole path
    ("environ Variables")."""
    env = environ_for(server, raw, request_bytes("GET", "/x/y"))
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/x/y"


def test_path_info_is_slash_for_root(server, raw):
    """With SCRIPT_NAME empty, a request for ``/`` gives PATH_INFO ``/`` (wsgiref.validate: PATH_INFO should at least
    be '/')."""
    env = environ_for(server, raw, request_bytes("GET", "/"))
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/"


@pytest.mark.parametrize(
    ("target", "path_info"),
    [("/api/users", "/users"), ("/api/users/7", "/users/7"), ("/api/", "/"), ("/api", "")],
)
def test_root_path_becomes_script_name(server, raw, target, path_info):
    """``root_path`` is the mount point: SCRIPT_NAME is the prefix and PATH_INFO the rest, so that
    SCRIPT_NAME + PATH_INFO is the request path ("environ Variables", "URL Reconstruction")."""
    env = environ_for(server, raw, request_bytes("GET", target), root_path="/api")
    assert env["SCRIPT_NAME"] == "/api"
    assert env["PATH_INFO"] == path_info
    assert env["SCRIPT_NAME"] + env["PATH_INFO"] == target


def test_root_path_is_stripped_only_on_a_segment_boundary(server, raw):
    """``/apiary`` is not under the mount point ``/api``: PATH_INFO must not become ``ary``."""
    env = environ_for(server, raw, request_bytes("GET", "/apiary"), root_path="/api")
    assert env["PATH_INFO"] == "/apiary"


@pytest.mark.parametrize(
    ("target", "raw_path"),
    [
        ("/caf%C3%A9", "/café".encode()),
        ("/a%2Fb", b"/a/b"),
        ("/a%3Fb", b"/a?b"),
        ("/100%25", b"/100%"),
        ("/sp%20ace/x", b"/sp ace/x"),
        ("/plain/path", b"/plain/path"),
        ("/%E2%82%AC", "/€".encode()),
    ],
)
def test_path_info_is_percent_decoded_bytes_as_latin1(server, raw, target, raw_path):
    """PATH_INFO is the URL-decoded path; its bytes are carried in a native str one byte per code point (decoded as
    latin-1), never decoded as UTF-8 ("Unicode Issues", "A Note On String Types")."""
    env = environ_for(server, raw, request_bytes("GET", target))
    assert type(env["PATH_INFO"]) is str
    assert env["PATH_INFO"] == raw_path.decode("latin-1")
    assert env["PATH_INFO"].encode("latin-1") == raw_path


def test_root_path_with_percent_encoded_path(server, raw):
    """The mount prefix is removed from the decoded path; the rest keeps its latin-1 form."""
    env = environ_for(server, raw, request_bytes("GET", "/api/caf%C3%A9"), root_path="/api")
    assert env["SCRIPT_NAME"] == "/api"
    assert env["PATH_INFO"] == "/café".encode().decode("latin-1")


@pytest.mark.parametrize(
    ("target", "query"),
    [
        ("/q?a=%20b&c=d+e", "a=%20b&c=d+e"),
        ("/q?caf%C3%A9=%2F&x", "caf%C3%A9=%2F&x"),
        ("/q%3Fnot-query?real=1", "real=1"),
        ("/q?a=1?b=2", "a=1?b=2"),
    ],
)
def test_query_string_is_raw(server, raw, target, query):
    """QUERY_STRING is the part of the URL after the first ``?``, exactly as sent: not percent-decoded
    ("environ Variables")."""
    env = environ_for(server, raw, request_bytes("GET", target))
    assert env["QUERY_STRING"] == query


@pytest.mark.parametrize("target", ["/q", "/q?"])
def test_query_string_empty_when_none(server, raw, target):
    """QUERY_STRING "may be empty or absent" when the URL has no query ("environ Variables")."""
    env = environ_for(server, raw, request_bytes("GET", target))
    assert env.get("QUERY_STRING", "") == ""
    assert env["PATH_INFO"] == "/q"


def test_absolute_form_target(server, raw):
    """An absolute-form request target (RFC 9112 section 3.2.2): the path and query come from the target, and its
    authority replaces the Host header (the server MUST ignore the received Host)."""
    env = environ_for(server, raw, request_bytes("GET", "http://example.com/x?y", host="ignored.test"), method="GET")
    assert env["PATH_INFO"] == "/x"
    assert env["QUERY_STRING"] == "y"
    assert env["HTTP_HOST"] == "example.com"


def test_absolute_form_target_with_port_and_encoding(server, raw):
    """The authority keeps its port; the path is percent-decoded like an origin-form path."""
    env = environ_for(server, raw, request_bytes("GET", "http://example.com:8080/caf%C3%A9?q=%20", host="other.test"))
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["PATH_INFO"] == "/café".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "q=%20"


def test_absolute_form_target_without_path(server, raw):
    """``http://example.com?q=1`` has an empty path: PATH_INFO is ``/`` (RFC 9112 section 3.2.1: an empty path is
    sent as "/")."""
    env = environ_for(server, raw, request_bytes("GET", "http://example.com?q=1", host="other.test"))
    assert env["PATH_INFO"] == "/"
    assert env["QUERY_STRING"] == "q=1"
    assert env["HTTP_HOST"] == "example.com"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_server_protocol(server, raw, version):
    """SERVER_PROTOCOL is the protocol version the client used, e.g. ``HTTP/1.0`` ("environ Variables")."""
    env = environ_for(server, raw, request_bytes("GET", "/", version=version))
    assert env["SERVER_PROTOCOL"] == f"HTTP/{version}"


# -- body headers ----------------------------------------------------------------------------------------------------


def test_content_type_and_length_present_when_sent(server, raw):
    """CONTENT_TYPE and CONTENT_LENGTH carry the request's headers, without an HTTP_ prefix ("environ Variables")."""
    body = b'{"a": 1}'
    env = environ_for(
        server,
        raw,
        request_bytes(
            "POST",
            "/c",
            [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))],
            body,
        ),
    )
    assert env["CONTENT_TYPE"] == "application/json; charset=utf-8"
    assert env["CONTENT_LENGTH"] == str(len(body))
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env


def test_content_type_and_length_absent_without_headers(server, raw):
    """A request without a body or a Content-Type has no CONTENT_TYPE/CONTENT_LENGTH ("may be empty or absent")."""
    env = environ_for(server, raw, request_bytes("GET", "/nobody"))
    assert env.get("CONTENT_TYPE", "") == ""
    assert env.get("CONTENT_LENGTH", "") == ""


def test_chunked_request_has_no_content_length(server, raw):
    """A chunked body has no length: CONTENT_LENGTH is absent (or empty), and wsgi.input is terminated."""
    env = environ_for(
        server,
        raw,
        request_bytes(
            "POST", "/chunked", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")], chunked(b"abc")
        ),
    )
    assert env.get("CONTENT_LENGTH", "") == ""
    assert env["CONTENT_TYPE"] == "text/plain"
    assert env["wsgi.input_terminated"] is True


def test_content_length_zero(server, raw):
    """``Content-Length: 0`` is passed on as CONTENT_LENGTH ``0``."""
    env = environ_for(server, raw, request_bytes("POST", "/empty", [("Content-Length", "0")]))
    assert env["CONTENT_LENGTH"] == "0"


# -- connection ------------------------------------------------------------------------------------------------------


def test_server_name_and_port(server, raw):
    """SERVER_NAME and SERVER_PORT are non-empty native strings naming the listening socket ("environ Variables":
    they "can never be empty strings")."""
    recorder = EnvironRecorder()
    handle = server(validator(recorder))
    client = raw(handle)
    client.send(request_bytes("GET", "/"))
    assert client.read_response().status == 200
    env = recorder.last
    assert env["SERVER_NAME"] == handle.host == "127.0.0.1"
    assert env["SERVER_PORT"] == str(handle.port)
    assert type(env["SERVER_PORT"]) is str


def test_server_name_and_port_not_empty_on_unix_socket(server, tmp_path):
    """On a unix socket there is no TCP port, but SERVER_NAME and SERVER_PORT still "can never be empty strings"
    ("environ Variables")."""
    recorder = EnvironRecorder()
    path = str(tmp_path / "s.sock")
    server(validator(recorder), uds=path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(WAIT)
        sock.connect(path)
        sock.sendall(request_bytes("GET", "/u", version="1.0", host="unix.test"))
        data = b""
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    env = recorder.last
    assert type(env["SERVER_NAME"]) is str and env["SERVER_NAME"] != ""
    assert type(env["SERVER_PORT"]) is str and env["SERVER_PORT"] != ""


def test_remote_addr_and_port(server, raw):
    """REMOTE_ADDR / REMOTE_PORT name the client's end of the connection (CGI, RFC 3875 section 4.1.8)."""
    recorder = EnvironRecorder()
    handle = server(validator(recorder))
    client = raw(handle)
    client.send(request_bytes("GET", "/"))
    assert client.read_response().status == 200
    addr, port = client.sock.getsockname()[:2]
    assert recorder.last["REMOTE_ADDR"] == addr == "127.0.0.1"
    assert recorder.last["REMOTE_PORT"] == str(port)


# -- HTTP_ variables -------------------------------------------------------------------------------------------------


def test_http_headers_become_http_variables(server, raw):
    """Each request header becomes ``HTTP_`` + its name upper-cased with dashes as underscores
    ("environ Variables": HTTP_ Variables)."""
    env = environ_for(
        server,
        raw,
        request_bytes(
            "GET",
            "/h",
            [
                ("X-Custom-Header", "one"),
                ("user-agent", "agent/1.0"),
                ("ACCEPT", "*/*"),
                ("X-Empty", ""),
                ("X-Padded", "  padded value  "),
            ],
            host="example.org:8080",
        ),
    )
    assert env["HTTP_HOST"] == "example.org:8080"
    assert env["HTTP_X_CUSTOM_HEADER"] == "one"
    assert env["HTTP_USER_AGENT"] == "agent/1.0"
    assert env["HTTP_ACCEPT"] == "*/*"
    assert env["HTTP_X_EMPTY"] == ""
    # RFC 9110 section 5.5: leading and trailing whitespace is not part of the field value.
    assert env["HTTP_X_PADDED"] == "padded value"


def test_header_value_bytes_are_latin1(server, raw):
    """Header values are native strings holding the raw bytes decoded as latin-1 ("Unicode Issues")."""
    value = "café ünïcode".encode()
    env = environ_for(server, raw, request_bytes("GET", "/h", [("X-Name", value)]))
    assert env["HTTP_X_NAME"] == value.decode("latin-1")
    assert env["HTTP_X_NAME"].encode("latin-1") == value


def test_repeated_headers_joined_with_comma(server, raw):
    """Repeated fields are combined into one variable, in order, separated by ", " (RFC 9110 section 5.3)."""
    env = environ_for(
        server,
        raw,
        request_bytes(
            "GET", "/h", [("Accept", "text/html"), ("X-Multi", "a"), ("Accept", "text/plain"), ("X-Multi", "b")]
        ),
    )
    assert env["HTTP_ACCEPT"] == "text/html, text/plain"
    assert env["HTTP_X_MULTI"] == "a, b"


def test_repeated_cookie_headers_joined_with_semicolon(server, raw):
    """Several Cookie fields form one cookie-string, joined with "; " (RFC 6265 section 5.4)."""
    env = environ_for(server, raw, request_bytes("GET", "/h", [("Cookie", "a=1"), ("Cookie", "b=2; c=3")]))
    assert env["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_headers_with_underscore_are_dropped(server, raw):
    """A header whose name has an underscore would map to the same variable as the dashed spelling (a proxy may
    filter only that one): it is dropped, and cannot overwrite or join the real one."""
    env = environ_for(
        server,
        raw,
        request_bytes("GET", "/h", [("X-Forwarded-For", "10.0.0.1"), ("X_Forwarded_For", "6.6.6.6"), ("Foo_Bar", "x")]),
    )
    assert env["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert "HTTP_FOO_BAR" not in env
    assert not any("6.6.6.6" in v for v in env.values() if isinstance(v, str))


# -- wsgi.* ----------------------------------------------------------------------------------------------------------


def test_wsgi_variables(server, raw):
    """The wsgi.* keys and their values for this server: a multithreaded, single-process, long-running server over
    plain HTTP ("environ Variables"); ``environ`` itself is a builtin dict ("Specification Details")."""
    env = environ_for(server, raw, request_bytes("GET", "/"))
    assert env["wsgi.version"] == (1, 0)
    assert type(env["wsgi.version"]) is tuple
    assert env["wsgi.url_scheme"] == "http"
    assert type(env["wsgi.url_scheme"]) is str
    assert env["wsgi.multithread"] is True
    assert env["wsgi.multiprocess"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert callable(env["wsgi.file_wrapper"])
    for method in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(env["wsgi.input"], method))
    for method in ("write", "writelines", "flush"):
        assert callable(getattr(env["wsgi.errors"], method))


def test_multithread_is_true_to_its_word(server, raw):
    """``wsgi.multithread`` is True: the app may be called by several threads at once ("environ Variables",
    "Thread Support"). Two requests on two connections run at the same time on different threads."""
    barrier = threading.Barrier(2, timeout=WAIT)
    threads: list[int] = []

    def app(environ, start_response):
        assert environ["wsgi.multithread"] is True
        threads.append(threading.get_ident())
        barrier.wait()  # breaks (BrokenBarrierError -> 500) unless both calls are in flight together
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    handle = server(validator(app))
    first, second = raw(handle), raw(handle)
    first.send(request_bytes("GET", "/1"))
    second.send(request_bytes("GET", "/2"))
    assert first.read_response().status == 200
    assert second.read_response().status == 200
    assert len(set(threads)) == 2


def test_environ_is_a_plain_dict(server, raw):
    """ "The environ parameter is a dictionary object ... it must be a builtin Python dictionary (not a subclass)"
    ("Specification Details")."""
    seen: list[type] = []

    def app(environ, start_response):
        seen.append(type(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    assert client.read_response().status == 200
    assert seen == [dict]


def test_wsgi_errors_reach_the_error_logger(server, raw, error_log):
    """wsgi.errors is a text stream with write/writelines/flush ("Input and Error Streams"); here what the app writes
    goes to the ``asyncwsgi.error`` logger, one record per line."""
    marker = f"errors-{id(error_log)}"

    def app(environ, start_response):
        errors = environ["wsgi.errors"]
        errors.write(f"{marker} first\n{marker} second\n")
        errors.writelines([f"{marker} third\n", f"{marker} fourth\n"])
        errors.flush()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/"))
    assert client.read_response().body == b"ok"
    messages = [r.getMessage() for r in error_log.records if r.name == "asyncwsgi.error" and marker in r.getMessage()]
    assert messages == [f"{marker} first", f"{marker} second", f"{marker} third", f"{marker} fourth"]
    assert all(r.levelno >= logging.WARNING for r in error_log.records if marker in r.getMessage())


def test_cgi_values_are_native_strings(server, raw):
    """Every CGI variable (any key without a dot) is a native str, never bytes or None ("A Note On String Types")."""
    body = b"x=1"
    env = environ_for(
        server,
        raw,
        request_bytes(
            "POST",
            "/caf%C3%A9?q=%E2%82%AC",
            [("Content-Type", "application/x-www-form-urlencoded"), ("Content-Length", "3"), ("X-Bin", b"\xff\xfe")],
            body,
        ),
    )
    cgi_keys = [k for k in env if "." not in k]
    assert {"REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT"} <= set(env)
    assert {"SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_HOST", "HTTP_X_BIN"} <= set(env)
    bad = {k: type(env[k]).__name__ for k in cgi_keys if type(env[k]) is not str}
    assert bad == {}
    assert type(env["wsgi.url_scheme"]) is str
    # Native strings hold only code points below 256 (bytes decoded as latin-1).
    for k in cgi_keys:
        env[k].encode("latin-1")


@pytest.mark.parametrize(
    "request_",
    [
        request_bytes("GET", "/v?x=1"),
        request_bytes("HEAD", "/v"),
        request_bytes("POST", "/v/caf%C3%A9", [("Content-Type", "text/plain"), ("Content-Length", "4")], b"body"),
        request_bytes("PUT", "/v", [("Transfer-Encoding", "chunked")], chunked(b"ab", b"cd")),
        request_bytes("GET", "/v", version="1.0", host=None),
    ],
    ids=["get", "head", "post", "chunked-put", "http10-no-host"],
)
def test_environ_passes_wsgiref_check_environ(server, raw, request_):
    """The environ passes ``wsgiref.validate.check_environ``, with its warnings treated as errors."""
    recorder = EnvironRecorder()
    client = raw(server(recorder))
    client.send(request_)
    assert client.read_response("HEAD" if request_.startswith(b"HEAD") else "GET").status == 200
    env = recorder.last
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_environ(env)


def test_environ_is_fresh_for_each_request(server, raw):
    """Each call gets its own environ: what one request's app stored, and its headers, are not in the next one's on
    the same connection."""
    seen: list[dict[str, Any]] = []

    def app(environ, start_response):
        seen.append(environ.copy())
        environ["HTTP_X_LEAK"] = "leaked"
        environ["app.state"] = "leaked"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    client = raw(server(validator(app)))
    client.send(request_bytes("GET", "/one", [("X-Only-First", "1")]))
    assert client.read_response().status == 200
    client.send(request_bytes("GET", "/two"))
    assert client.read_response().status == 200
    assert len(seen) == 2
    assert seen[0]["HTTP_X_ONLY_FIRST"] == "1"
    assert seen[1]["PATH_INFO"] == "/two"
    for key in ("HTTP_X_LEAK", "app.state", "HTTP_X_ONLY_FIRST"):
        assert key not in seen[1]
