"""--proxy-headers: Forwarded (RFC 7239) and X-Forwarded-* are applied only for trusted peers, right-most untrusted
hop first; unit tests of ``asyncwsgi.proxy`` and end to end through the server."""

from __future__ import annotations

from typing import Any
from wsgiref.validate import validator

import pytest

from asyncwsgi.errors import ConfigError
from asyncwsgi.proxy import ProxyTrust, apply_forwarded, parse_forwarded


def env(**headers: str) -> dict[str, Any]:
    e: dict[str, Any] = {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "5555",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "internal:8000",
        "SERVER_PORT": "8000",
    }
    e.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return e


LOCAL = ProxyTrust("127.0.0.1")


def test_trust_spec() -> None:
    t = ProxyTrust("127.0.0.1, 10.0.0.0/8,::1")
    assert t.trusts("10.1.2.3") and t.trusts("127.0.0.1") and t.trusts("::1") and t.trusts("::ffff:10.0.0.1")
    assert not t.trusts("11.0.0.1") and not t.trusts("unknown")
    assert ProxyTrust("*").trusts("8.8.8.8")
    with pytest.raises(ConfigError, match="not an IP"):
        ProxyTrust("127.0.0.1,proxy.example")


def test_parse_forwarded() -> None:
    assert parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"') == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8:cafe::17]:4711"},
    ]
    assert parse_forwarded('for="a,b;c"') == [{"for": "a,b;c"}]


def test_x_forwarded_single_proxy() -> None:
    e = env(
        x_forwarded_for="203.0.113.7",
        x_forwarded_proto="https",
        x_forwarded_host="shop.example",
        x_forwarded_port="443",
    )
    apply_forwarded(e, LOCAL)
    assert (e["REMOTE_ADDR"], e["wsgi.url_scheme"], e["HTTPS"], e["HTTP_HOST"], e["SERVER_PORT"]) == (
        "203.0.113.7",
        "https",
        "on",
        "shop.example",
        "443",
    )
    assert "REMOTE_PORT" not in e  # the proxy did not say: no stale port of the proxy's connection


def test_x_forwarded_for_right_most_untrusted_hop_wins() -> None:
    # A client may send its own X-Forwarded-For; the proxies append. Only the hops our proxies added are believed.
    e = env(x_forwarded_for="1.1.1.1, 203.0.113.7, 10.0.0.2")
    apply_forwarded(e, ProxyTrust("127.0.0.1,10.0.0.0/8"))
    assert e["REMOTE_ADDR"] == "203.0.113.7"


def test_all_hops_trusted_gives_the_left_most() -> None:
    e = env(x_forwarded_for="10.0.0.5, 10.0.0.2")
    apply_forwarded(e, ProxyTrust("127.0.0.1,10.0.0.0/8"))
    assert e["REMOTE_ADDR"] == "10.0.0.5"


def test_forwarded_family_uses_the_chosen_element_and_ignores_x_forwarded() -> None:
    e = env(
        forwarded="for=1.1.1.1;proto=http, for=198.51.100.9:1234;proto=https;host=app.example",
        x_forwarded_for="6.6.6.6",
    )
    apply_forwarded(e, ProxyTrust("127.0.0.1", "forwarded"))
    assert (e["REMOTE_ADDR"], e["REMOTE_PORT"], e["wsgi.url_scheme"], e["HTTP_HOST"]) == (
        "198.51.100.9",
        "1234",
        "https",
        "app.example",
    )


def test_x_forwarded_family_ignores_a_forwarded_header_the_client_sent() -> None:
    # nginx appends to X-Forwarded-For and passes a client's own Forwarded header through untouched.
    e = env(forwarded="for=6.6.6.6;proto=https;host=evil.example", x_forwarded_for="203.0.113.7")
    apply_forwarded(e, LOCAL)
    assert (e["REMOTE_ADDR"], e["wsgi.url_scheme"], e["HTTP_HOST"]) == ("203.0.113.7", "http", "internal:8000")


def test_forwarded_host_is_kept_as_sent_and_the_port_goes_to_server_port() -> None:
    e = env(x_forwarded_for="203.0.113.7", x_forwarded_host="shop.example:8443", x_forwarded_port="8443")
    apply_forwarded(e, LOCAL)
    assert (e["HTTP_HOST"], e["SERVER_PORT"]) == ("shop.example:8443", "8443")


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="forwarded-header"):
        ProxyTrust("127.0.0.1", "x-real-ip")


def test_garbage_values_are_ignored() -> None:
    e = env(
        x_forwarded_for="not-an-ip",
        x_forwarded_proto="gopher",
        x_forwarded_host="evil.example/path",
        x_forwarded_port="eighty",
    )
    apply_forwarded(e, LOCAL)
    assert (e["REMOTE_ADDR"], e["wsgi.url_scheme"], e["HTTP_HOST"], e["SERVER_PORT"]) == (
        "127.0.0.1",
        "http",
        "internal:8000",
        "8000",
    )


def _recorder() -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append({k: environ.get(k) for k in ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_HOST", "HTTPS")})
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    return validator(app), seen


REQUEST = (
    b"GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n\r\n"
)


def test_through_the_server_from_a_trusted_peer(server, raw) -> None:  # type: ignore[no-untyped-def]
    app, seen = _recorder()
    c = raw(server(app, proxy_headers=True))
    c.send(REQUEST)
    assert c.read_response().status == 200
    assert seen == [
        {"REMOTE_ADDR": "203.0.113.7", "wsgi.url_scheme": "https", "HTTP_HOST": "shop.example", "HTTPS": "on"}
    ]


@pytest.mark.parametrize(
    "options", [{"proxy_headers": False}, {"proxy_headers": True, "forwarded_allow_ips": "10.9.9.9"}]
)
def test_through_the_server_ignored_unless_on_and_trusted(server, raw, options) -> None:  # type: ignore[no-untyped-def]
    app, seen = _recorder()
    c = raw(server(app, **options))
    c.send(REQUEST)
    assert c.read_response().status == 200
    assert seen == [{"REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "HTTP_HOST": "internal", "HTTPS": None}]
