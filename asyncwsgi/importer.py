"""``"package.module:attribute"`` -> the WSGI callable, with an error that says exactly what went wrong.

- the module cannot be found              -> ``AppImportError`` (one line)
- the module raised while importing        -> ``AppModuleError`` (the CLI prints a line naming the module, then the
                                              app's own traceback: it is the user's bug, they need it)
- the attribute is missing / not callable  -> ``AppImportError`` (one line)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import AppImportError

__all__ = ["AppModuleError", "import_app"]


class AppModuleError(AppImportError):
    """The application's module raised while being imported; ``__cause__`` is the original exception."""


def _find_module_error(exc: ModuleNotFoundError, module: str) -> bool:
    """True if ``exc`` is about ``module`` itself (or a parent package), not something it imports."""
    missing = exc.name or ""
    return missing == module or module.startswith(missing + ".")


def import_app(target: str, factory: bool = False, app_dir: str | None = None) -> Any:
    module_name, sep, attr = target.partition(":")
    if not module_name or (sep and not attr):
        raise AppImportError(f"invalid application {target!r}: expected 'module:attribute', e.g. 'myproject.wsgi:app'")
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _find_module_error(exc, module_name):
            raise AppImportError(f"could not import module {module_name!r}: no module named {exc.name!r}") from None
        raise AppModuleError(f"error while importing module {module_name!r}") from exc
    except Exception as exc:
        raise AppModuleError(f"error while importing module {module_name!r}") from exc

    if not attr:
        for candidate in ("application", "app"):
            if hasattr(module, candidate):
                attr = candidate
                break
        else:
            raise AppImportError(
                f"module {module_name!r} has no 'application' or 'app' attribute; name it as '{module_name}:NAME'"
            )
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        if not callable(obj):
            raise AppImportError(f"factory {target!r} is not callable (it is a {type(obj).__name__})")
        try:
            obj = obj()
        except Exception as exc:
            raise AppModuleError(f"error while calling the application factory {target!r}") from exc
    if not callable(obj):
        raise AppImportError(f"{module_name}:{attr} is not callable (it is a {type(obj).__name__})")
    return obj
