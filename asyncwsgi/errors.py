"""The error family.

Everything a client can do wrong is a ``ProtocolError`` carrying the HTTP status the server answers with; the
connection turns it into a small canned response and a close, in one place (``protocol.connection``). Everything a
user can configure wrong is a ``ConfigError``, which the CLI prints as one line before exiting non-zero.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "AppImportError",
    "ClientDisconnected",
    "ConfigError",
    "ProtocolError",
    "RequestBodyTimeout",
]


class ProtocolError(Exception):
    """The client sent something we refuse; answer with ``status`` and close the connection."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


class ClientDisconnected(OSError):
    """Raised in a worker thread (``wsgi.input.read()``, ``write()``) when the client has gone away."""


class RequestBodyTimeout(ClientDisconnected):
    """The client stopped sending the request body for longer than the body timeout."""


class ConfigError(Exception):
    """Bad configuration: the message is one line meant for the user, never a traceback."""


class AppImportError(ConfigError):
    """The application named on the command line could not be loaded."""
