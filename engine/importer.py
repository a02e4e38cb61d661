"""Turn 'module:attribute' into an ASGI callable, with one-line errors."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from polycorn.errors import AppLoadError


def import_from_string(spec: str) -> Any:
    """Import ``module:attr.sub`` and return the attribute."""
    module_name, sep, attrs = spec.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f"app must be given as 'module:attribute', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing *target* module is "not found"; a missing dependency inside it is the
        # module's own import error and is reported as such.
        if (
            exc.name
            and module_name.startswith(exc.name)
            and (exc.name == module_name or module_name.startswith(exc.name + "."))
        ):
            raise AppLoadError(f"could not import module {module_name!r}: no such module") from None
        raise AppLoadError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(f"error while importing {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError(f"attribute {attrs!r} not found in module {module_name!r}") from None
    return obj


def load_app(app: Any, *, factory: bool = False, app_dir: str | None = None) -> Any:
    """Resolve the configured app into an ASGI 3 callable."""
    if app_dir is not None and isinstance(app, str):
        import os

        path = os.path.abspath(app_dir)
        if path not in sys.path:
            sys.path.insert(0, path)
    obj = import_from_string(app) if isinstance(app, str) else app
    if factory:
        if not callable(obj):
            raise AppLoadError(f"--factory: {app!r} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise AppLoadError(f"the app factory {app!r} failed: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise AppLoadError(f"{app!r} is not an ASGI application (not callable)")
    if inspect.isclass(obj):
        raise AppLoadError(
            f"{app!r} is a class; ASGI 2 (double-callable) apps are not supported, pass an ASGI 3 callable"
        )
    return obj
