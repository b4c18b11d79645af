"""Fixtures shared by the PEP 3333 tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def error_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` capturing the ``asyncwsgi.error`` logger, even if an earlier test configured it not to propagate
    (the command-line runner does)."""
    log = logging.getLogger("asyncwsgi.error")
    monkeypatch.setattr(log, "propagate", True)
    monkeypatch.setattr(log, "handlers", [])
    with caplog.at_level(logging.DEBUG, logger="asyncwsgi.error"):
        yield caplog
