"""Run a real nginx, configured from the snippets in ``docs/deploy.md``, as a child process of the tests.

The ``upstream`` and ``server`` blocks are read out of the ```` ```nginx ```` fences of docs/deploy.md and used as
they are, with only their addresses replaced (the upstream's ``server`` line, the ``listen`` line and the static
``alias``), so that the documented ``location /`` block is what the tests exercise. The ``asyncwsgi serve`` command
lines next to them are parsed with asyncwsgi's own argument parser into ``Config`` options for the in-process server.

nginx runs unprivileged-style (``master_process off``, every path under the test's temporary directory) and is ended
by its pid.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from asyncwsgi.cli import build_parser, config_from_args
from asyncwsgi.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_MD = REPO_ROOT / "docs" / "deploy.md"

#: How long nginx may take to start listening, and how many fresh ports are tried when its bind fails.
START_TIMEOUT = 10.0
PORT_ATTEMPTS = 5


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(g) for g in match.groups()) if match else (0, 0, 0)


# -- docs/deploy.md ------------------------------------------------------------------------------------------------


def fences(text: str, lang: str) -> list[str]:
    """The bodies of the ```` ```lang ```` fences of a Markdown text, in order."""
    return re.findall(rf"^```{re.escape(lang)}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.M | re.S)


def top_level_blocks(conf: str) -> list[tuple[str, str]]:
    """``(header, whole block text)`` for each top-level ``header { ... }`` of an nginx snippet (comments skipped
    when matching braces; the text is kept verbatim)."""
    blocks: list[tuple[str, str]] = []
    depth = 0
    start = 0
    i = 0
    while i < len(conf):
        ch = conf[i]
        if ch == "#":
            end = conf.find("\n", i)
            i = len(conf) if end < 0 else end
            continue
        if ch == "{":
            if depth == 0:
                line_start = conf.rfind("\n", 0, i) + 1
                start = line_start
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced '}' in an nginx snippet of docs/deploy.md")
            if depth == 0:
                block = conf[start : i + 1]
                header = block[: block.index("{")].strip()
                blocks.append((header, block))
        i += 1
    if depth:
        raise ValueError("unbalanced '{' in an nginx snippet of docs/deploy.md")
    return blocks


def substitute_once(text: str, pattern: str, replacement: str, what: str) -> str:
    """Replace the single match of ``pattern`` (a regex with groups 1 and 3 around the value) or fail loudly: if
    docs/deploy.md changes shape, the tests must say so rather than test something else."""
    new, count = re.subn(pattern, lambda m: m.group(1) + replacement + m.group(3), text, flags=re.M)
    if count != 1:
        raise AssertionError(f"docs/deploy.md: expected exactly one {what} to replace, found {count} in:\n{text}")
    return new


def location_block(server_block: str, path: str) -> str:
    """The ``location PATH { ... }`` block inside a server block, verbatim."""
    inner = server_block[server_block.index("{") + 1 : server_block.rindex("}")]
    for header, block in top_level_blocks(inner):
        if header.split() == ["location", path]:
            return block
    raise AssertionError(f"docs/deploy.md: no 'location {path}' block in:\n{server_block}")


@dataclasses.dataclass(frozen=True)
class DeployDocs:
    """The nginx snippets and ``asyncwsgi serve`` command lines of docs/deploy.md's "nginx in front" section."""

    tcp_upstream: str
    server_block: str
    uds_upstream: str
    tcp_command: list[str]
    uds_command: list[str]

    @classmethod
    def load(cls, path: Path = DEPLOY_MD) -> DeployDocs:
        text = path.read_text(encoding="utf-8")
        nginx = fences(text, "nginx")
        if len(nginx) < 2:
            raise AssertionError(f"{path}: expected two ```nginx fences (TCP and unix socket), found {len(nginx)}")
        tcp_blocks = top_level_blocks(nginx[0])
        upstreams = [b for h, b in tcp_blocks if h.split()[:1] == ["upstream"]]
        servers = [b for h, b in tcp_blocks if h == "server"]
        uds_upstreams = [b for h, b in top_level_blocks(nginx[1]) if h.split()[:1] == ["upstream"]]
        if len(upstreams) != 1 or len(servers) != 1 or len(uds_upstreams) != 1:
            raise AssertionError(f"{path}: expected one upstream and one server block, then one upstream block")
        commands = [
            shlex.split(body.replace("\\\n", " "))
            for body in fences(text, "sh")
            if "asyncwsgi serve" in body and "--proxy-headers" in body
        ]
        tcp = [c for c in commands if "--uds" not in c]
        uds = [c for c in commands if "--uds" in c]
        if len(tcp) != 1 or len(uds) != 1:
            raise AssertionError(f"{path}: expected one 'asyncwsgi serve --proxy-headers' line for TCP, one for --uds")
        return cls(upstreams[0], servers[0], uds_upstreams[0], tcp[0], uds[0])

    def upstream(self, *targets: str | tuple[str, int]) -> str:
        """The documented upstream block pointing at ``targets`` (unix socket paths or ``(host, port)``): its one
        ``server`` line becomes one line per target."""
        uds = all(isinstance(t, str) for t in targets)
        if not targets or (not uds and any(isinstance(t, str) for t in targets)):
            raise ValueError("give one or more targets, all unix socket paths or all (host, port)")
        addresses = [f"unix:{t}" if isinstance(t, str) else f"{t[0]}:{t[1]}" for t in targets]
        if uds:
            block, pattern = self.uds_upstream, r"^(\s*server\s+)(unix:\S+?)(\s*;)"
        else:
            block, pattern = self.tcp_upstream, r"^(\s*server\s+)(\S+?)(\s*;)"
        indent = re.search(r"^(\s*)server\s", block, flags=re.M)
        prefix = indent.group(1) if indent else "    "
        lines = f";\n{prefix}server ".join(addresses)
        return substitute_once(block, pattern, lines, "server")

    def server(self, port: int, static_dir: Path) -> str:
        """The documented server block listening on 127.0.0.1:``port``, static files from ``static_dir``."""
        block = substitute_once(self.server_block, r"^(\s*listen\s+)(\S+?)(\s*;)", f"127.0.0.1:{port}", "listen")
        return substitute_once(block, r"^(\s*alias\s+)(\S+?)(\s*;)", f"{static_dir}/", "static alias")

    def server_options(self, uds: str | None = None) -> dict[str, Any]:
        """The documented ``asyncwsgi serve`` flags as ``Config`` options (those that differ from the defaults),
        with the socket path replaced by ``uds`` for the unix-socket line."""
        argv = list(self.uds_command if uds is not None else self.tcp_command)
        if argv[:2] != ["asyncwsgi", "serve"]:
            raise AssertionError(f"docs/deploy.md: not an 'asyncwsgi serve' line: {argv}")
        if uds is not None:
            argv[argv.index("--uds") + 1] = uds
        config = config_from_args(build_parser().parse_args(argv[1:]))
        defaults = Config()
        return {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(Config)
            if getattr(config, f.name) != getattr(defaults, f.name)
        }


# -- the nginx process ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (nginx binds it itself; a lost race is retried by ``Nginx.start``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NGINX_CONF = """\
pid nginx.pid;
error_log error.log notice;
worker_processes 1;

events {{
    worker_connections 256;
}}

http {{
    access_log access.log;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    # nginx's own default is 1m, which the documented server block does not change; the upload tests send 10 MB.
    client_max_body_size 64m;

{upstream}

{server}
}}
"""


class Nginx:
    """One nginx process in front of ``targets`` (unix socket paths or ``(host, port)``), from docs/deploy.md."""

    def __init__(self, binary: str, prefix: Path, docs: DeployDocs, *targets: str | tuple[str, int]) -> None:
        self.binary = binary
        self.prefix = prefix
        self.docs = docs
        self.targets = targets
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.static_dir = prefix / "static"
        self.static_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        #: a file only this nginx serves (from the documented /static/ location): proves who answers on the port
        self.token = secrets.token_hex(8)
        (self.static_dir / "ready.txt").write_text(self.token)
        self.conf_path = prefix / "nginx.conf"
        self.use_e = nginx_version(binary) >= (1, 19, 5)  # -e (the error log used before the config is read)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def config_text(self, port: int) -> str:
        return NGINX_CONF.format(
            upstream=self.docs.upstream(*self.targets), server=self.docs.server(port, self.static_dir)
        )

    def start(self) -> Nginx:
        failures = []
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            self.conf_path.write_text(self.config_text(port))
            argv = [self.binary, "-p", f"{self.prefix}/", "-c", str(self.conf_path)]
            if self.use_e:
                argv += ["-e", str(self.prefix / "error.log")]
            argv += ["-g", "daemon off; master_process off;"]
            with open(self.prefix / "stderr.log", "ab") as stderr:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            self.port = port
            if self._wait_ready():
                return self
            self.stop()
            log = self.error_log()
            failures.append(log)
            if "Address already in use" not in log:
                break  # not a lost race for the port: a real failure
        raise RuntimeError("nginx did not start; its log:\n" + "\n---\n".join(failures))

    def _wait_ready(self) -> bool:
        """Poll-connect until nginx answers the static probe file. nginx gives no readiness signal (no sd_notify, no
        line on stderr), so a bounded polling loop is the one way here; each pause between attempts waits on the
        nginx process itself, so a failed start is seen at once."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        request = b"GET /static/ready.txt HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    sock.sendall(request)
                    data = b""
                    while len(data) < 65536:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                # anything else: someone else answered on this port
                return data.startswith(b"HTTP/1.1 200") and data.endswith(self.token.encode())
            except (ConnectionRefusedError, ConnectionResetError):
                try:
                    self.proc.wait(0.02)
                except subprocess.TimeoutExpired:
                    pass
        return False

    def stop(self) -> None:
        """End nginx by its pid (TERM: fast shutdown; KILL if it lingers)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None
