"""``asyncwsgi serve APP [options]``: argv -> Config -> runner. ``main(argv)`` returns the exit status.

The options are generated from ``Config``'s fields, so the CLI, ``Server(**options)`` and the README's table can
never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import traceback
import types
import typing
from collections.abc import Sequence
from typing import Any

from . import __version__, importer
from .config import Config
from .errors import ConfigError
from .importer import AppModuleError, import_app

_IMPORT_MACHINERY = {importer.__file__, importlib.__file__}

__all__ = ["build_parser", "console_main", "main"]


def _field_type(f: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(Config)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
        t = args[0]
    if typing.get_origin(t) is typing.Literal:
        return str
    return t


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Config):
        meta = dict(f.metadata)
        if not meta or meta.get("cli") is False:
            continue
        flags = meta.pop("flags") or (_flag(f.name),)
        help_text = meta.pop("help")
        t = _field_type(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if t is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = f"{help_text} (default: {'on' if f.default else 'off'})"
        else:
            kwargs.update(meta)
            if kwargs.get("action") != "append":
                kwargs["type"] = t if t in (int, float, str) else str
            elif t is not str:
                kwargs["type"] = str
            default = f.default
            kwargs["help"] = help_text if default in (None, (), "") else f"{help_text} (default: {default})"
        parser.add_argument(*flags, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncwsgi", description="A production WSGI server hosted on asyncio.")
    parser.add_argument("--version", action="version", version=f"asyncwsgi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve a WSGI application",
        description="Serve a WSGI application, e.g. 'asyncwsgi serve myproject.wsgi:application'.",
    )
    serve.add_argument("app", metavar="APP", help="the application as 'module:attribute' (e.g. app:app)")
    _add_config_options(serve)
    return parser


def config_from_args(ns: argparse.Namespace) -> Config:
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(Config) if hasattr(ns, f.name)}
    if "bind" in values:
        values["bind"] = tuple(values["bind"])
    return Config(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status. Errors are one line on stderr, not tracebacks."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse reports usage errors (status 2) and --help/--version (0) this way
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    if ns.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    try:
        config = config_from_args(ns)
    except ConfigError as exc:
        print(f"asyncwsgi: error: {exc}", file=sys.stderr)
        return 2

    from .runner import configure_logging, run, tune_allocator

    try:
        configure_logging(config.log_level, config.log_config)
    except ConfigError as exc:
        print(f"asyncwsgi: error: {exc}", file=sys.stderr)
        return 2
    tune_allocator()  # before any fork: workers inherit it
    if config.workers > 1 or config.reload or config.max_requests is not None:
        from .supervisor import supervise

        try:
            return supervise(ns.app, config)
        except ConfigError as exc:
            print(f"asyncwsgi: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # a Ctrl-C before the signal handlers were installed
            return 130
    try:
        app = import_app(ns.app, factory=config.factory, app_dir=config.app_dir_abs)
    except AppModuleError as exc:
        print(f"asyncwsgi: error: {exc}; the application's traceback follows:", file=sys.stderr)
        cause = exc.__cause__
        if cause is not None:
            traceback.print_exception(type(cause), cause, app_frames(cause.__traceback__), file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"asyncwsgi: error: {exc}", file=sys.stderr)
        return 1
    try:
        return run(app, config)
    except ConfigError as exc:
        print(f"asyncwsgi: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C before the signal handlers were installed
        return 130


def app_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from the app's own code on: our importer's and importlib's frames are noise to the user."""
    start = tb
    while start is not None:
        filename = start.tb_frame.f_code.co_filename
        if filename not in _IMPORT_MACHINERY and not filename.startswith("<frozen importlib"):
            return start
        start = start.tb_next
    return tb


def console_main() -> int:
    """Entry point of the ``asyncwsgi`` console script."""
    return main()
