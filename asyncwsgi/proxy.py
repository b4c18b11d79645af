"""Behind a reverse proxy: take the client's address, scheme, host and port from ``Forwarded`` (RFC 7239) or
``X-Forwarded-For/-Proto/-Host/-Port``, but only from a trusted peer.

``--proxy-headers`` turns it on; ``--forwarded-header`` says which family the proxy maintains (only that one is
read); ``--forwarded-allow-ips`` lists the trusted proxies (IPs, CIDR networks, or ``*``;
connections over a unix socket are trusted, since the socket's permissions decide who can connect). For a request from
a trusted peer the forwarding chain is read right to left, skipping trusted proxies; the first untrusted hop is the
client. Headers from an untrusted peer change nothing.

Pure functions; ``apply_forwarded`` runs on the worker thread, on the environ of one request.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import ConfigError

__all__ = ["ProxyTrust", "apply_forwarded", "parse_forwarded"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyTrust:
    """Which peers may tell us about the client: ``"127.0.0.1,10.0.0.0/8"``, or ``"*"`` for any."""

    def __init__(self, spec: str, family: str = "x-forwarded") -> None:
        if family not in ("x-forwarded", "forwarded"):
            raise ConfigError(f"--forwarded-header must be x-forwarded or forwarded, not {family!r}")
        self.spec = spec
        #: which headers the proxy maintains: "x-forwarded" (X-Forwarded-For/-Proto/-Host/-Port) or "forwarded"
        self.family = family
        self.any = False
        self.networks: list[Network] = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            if item == "*":
                self.any = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"--forwarded-allow-ips: {item!r} is not an IP address or network") from None

    def trusts(self, host: str) -> bool:
        if self.any:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 elements, in order: ``for=1.2.3.4;proto=https, for="[::1]:80"`` -> ``[{"for": ...}, ...]``."""
    elements: list[dict[str, str]] = []
    for element in _split_outside_quotes(value, ","):
        pairs: dict[str, str] = {}
        for pair in _split_outside_quotes(element, ";"):
            name, sep, val = pair.partition("=")
            if not sep:
                continue
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1].replace('\\"', '"')
            pairs[name.strip().lower()] = val
        elements.append(pairs)
    return elements


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _node_host(node: str) -> tuple[str, str | None]:
    """``1.2.3.4:80`` / ``[::1]:80`` / ``::1`` / ``unknown`` -> (host, port or None)."""
    node = node.strip()
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:].isdigit() else None
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        return host, port if port.isdigit() else None
    return node, None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pick(values: list[str], index: int, total: int) -> str | None:
    """The value for hop ``index`` of ``total``: the same position when the lists line up, else the right-most."""
    if not values:
        return None
    return values[index] if len(values) == total else values[-1]


def apply_forwarded(environ: dict[str, Any], trust: ProxyTrust) -> None:
    """Rewrite REMOTE_ADDR/REMOTE_PORT, wsgi.url_scheme/HTTPS, HTTP_HOST and SERVER_PORT from the forwarding headers
    of a request that came from a trusted peer (the caller checked the peer).

    Only one header family is read, the one the proxy maintains (``trust.family``):
    a proxy that appends to X-Forwarded-For passes a client's own ``Forwarded`` header through untouched, and the
    other way round, so reading the other family would let a client forge its address."""
    client: str | None = None
    client_port: str | None = None
    proto: str | None = None
    host: str | None = None
    port: str | None = None
    if trust.family == "forwarded":
        forwarded = environ.get("HTTP_FORWARDED")
        if not forwarded:
            return
        hops = parse_forwarded(forwarded)
        chosen = None
        for element in reversed(hops):
            chosen = element
            node = _node_host(element.get("for", ""))[0]
            if not trust.trusts(node):
                break
        if chosen is not None:
            client, client_port = _node_host(chosen.get("for", ""))
            proto = chosen.get("proto")
            host = chosen.get("host")
    else:
        xff = environ.get("HTTP_X_FORWARDED_FOR")
        if xff:
            chain = [part.strip() for part in xff.split(",") if part.strip()]
            index = 0
            for i in range(len(chain) - 1, -1, -1):
                index = i
                if not trust.trusts(_node_host(chain[i])[0]):
                    break
            if chain:
                client, client_port = _node_host(chain[index])
            total = len(chain)
        else:
            index, total = 0, 1
        proto = _pick(_csv(environ.get("HTTP_X_FORWARDED_PROTO")), index, total)
        host = _pick(_csv(environ.get("HTTP_X_FORWARDED_HOST")), index, total)
        port = _pick(_csv(environ.get("HTTP_X_FORWARDED_PORT")), index, total)
    if client and _is_ip(client):
        environ["REMOTE_ADDR"] = client
        if client_port:
            environ["REMOTE_PORT"] = client_port
        else:
            environ.pop("REMOTE_PORT", None)
    if proto:
        proto = proto.lower()
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
            if proto == "https":
                environ["HTTPS"] = "on"
            else:
                environ.pop("HTTPS", None)
    if host and all(c not in host for c in " /\\@"):
        environ["HTTP_HOST"] = host  # as the client sent it, port included (the proxy should pass $http_host)
    if port and port.isdigit():
        environ["SERVER_PORT"] = port


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()] if value else []
