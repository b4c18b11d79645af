"""Listening sockets: parse addresses (``HOST:PORT``, ``[::1]:PORT``, ``unix:PATH``, ``fd://N``) and bind them.

Errors are ``ConfigError`` with one line naming the address and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

from .config import Config
from .errors import ConfigError

__all__ = ["ListenSpec", "bind_sockets", "parse_bind"]


@dataclass(frozen=True)
class ListenSpec:
    kind: str  # "tcp" | "unix" | "fd"
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind(address: str, default_port: int = 8000) -> ListenSpec:
    """Gunicorn's spellings: ``HOST``, ``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT``, ``unix:PATH``, ``fd://N``."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ConfigError(f"--bind {address!r}: no socket path after 'unix:'")
        return ListenSpec("unix", path=path)
    if address.startswith("fd://"):
        try:
            return ListenSpec("fd", fd=int(address[5:]))
        except ValueError:
            raise ConfigError(f"--bind {address!r}: fd:// needs a file descriptor number") from None
    host, port_text = address, ""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise ConfigError(f"--bind {address!r}: missing ']' after the IPv6 address")
        host, rest = address[1:end], address[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"--bind {address!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError(f"--bind {address!r}: {port_text!r} is not a port number")
        port = int(port_text)
    return ListenSpec("tcp", host=host or "0.0.0.0", port=port)


SD_LISTEN_FDS_START = 3


def systemd_fds(environ: dict[str, str] | None = None) -> list[int]:
    """The sockets systemd passed us (socket activation: LISTEN_FDS, for this process per LISTEN_PID)."""
    env = os.environ if environ is None else environ
    try:
        count = int(env.get("LISTEN_FDS", "0"))
        pid = int(env.get("LISTEN_PID", "0"))
    except ValueError:
        return []
    if count <= 0 or pid != os.getpid():
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def listen_specs(config: Config) -> list[ListenSpec]:
    if config.bind:
        return [parse_bind(b, config.port) for b in config.bind]
    if config.fd is not None:
        return [ListenSpec("fd", fd=config.fd)]
    if config.uds:
        return [ListenSpec("unix", path=config.uds)]
    activated = systemd_fds()
    if activated:
        return [ListenSpec("fd", fd=fd) for fd in activated]
    return [ListenSpec("tcp", host=config.host, port=config.port)]


def _bind_tcp(spec: ListenSpec, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror}") from None
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {spec}: {reason}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(spec: ListenSpec, backlog: int, mode: int | None = None) -> socket.socket:
    path = spec.path
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            # A socket file left behind: remove it unless a live server still answers on it.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                raise ConfigError(f"cannot listen on {spec}: another server is listening there")
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _adopt_fd(spec: ListenSpec) -> socket.socket:
    try:
        sock = socket.socket(fileno=spec.fd)
    except OSError as exc:
        raise ConfigError(f"cannot use {spec}: {exc.strerror or exc}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ConfigError(f"cannot use {spec}: it is not a listening stream socket")
    sock.setblocking(False)
    return sock


def bind_sockets(config: Config) -> list[tuple[ListenSpec, socket.socket]]:
    """Bind every address the config names; on any failure close what was bound and raise ``ConfigError``."""
    bound: list[tuple[ListenSpec, socket.socket]] = []
    try:
        for spec in listen_specs(config):
            if spec.kind == "tcp":
                bound.append((spec, _bind_tcp(spec, config.backlog)))
            elif spec.kind == "unix":
                mode = int(config.uds_mode, 8) if config.uds_mode else None
                bound.append((spec, _bind_unix(spec, config.backlog, mode)))
            else:
                bound.append((spec, _adopt_fd(spec)))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound
