"""Worker processes: ``--workers N``, ``--max-requests``, SIGHUP reloads, ``--reload``. (Being written.)"""

from __future__ import annotations

from .config import Config
from .errors import ConfigError

__all__ = ["supervise"]


def supervise(target: str, config: Config) -> int:
    raise ConfigError("--workers and --reload are not available yet")
