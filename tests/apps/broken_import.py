"""A module that raises while being imported: the command line must show its traceback (it is the app's bug)."""

from __future__ import annotations


def _load_settings() -> dict[str, str]:
    raise RuntimeError("broken_import exploded while loading settings: 5f0c9a")


SETTINGS = _load_settings()


def app(environ: object, start_response: object) -> list[bytes]:  # never reached
    return [b""]
