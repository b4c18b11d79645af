"""asyncwsgi: a production WSGI server hosted on asyncio."""

from __future__ import annotations

__version__ = "0.1.0"

from .asgi import to_asgi
from .config import Config
from .errors import ClientDisconnected, ConfigError, ProtocolError
from .server import Server, serve

__all__ = [
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "ProtocolError",
    "Server",
    "__version__",
    "serve",
    "to_asgi",
]
