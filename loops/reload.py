"""--reload: watch the source tree with watchfiles and report batches of changed files."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import AsyncIterator

from polycorn.config import Config
from polycorn.errors import ConfigError

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*", "*~")


def check_available() -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError("--reload needs watchfiles (pip install 'polycorn[reload]')") from None


class ChangeFilter:
    """Keep files matching an include glob and no exclude glob (by file name or relative path)."""

    def __init__(self, config: Config, roots: list[str]) -> None:
        self.includes = config.reload_includes or DEFAULT_INCLUDES
        self.excludes = config.reload_excludes or DEFAULT_EXCLUDES
        self.roots = roots

    def __call__(self, change: object, path: str) -> bool:
        name = os.path.basename(path)
        rel = [os.path.relpath(path, root) for root in self.roots if path.startswith(root)]
        candidates = [name, *rel]
        if any(fnmatch.fnmatch(c, pattern) for c in candidates for pattern in self.excludes):
            return False
        return any(fnmatch.fnmatch(c, pattern) for c in candidates for pattern in self.includes)


async def watch_changes(config: Config) -> AsyncIterator[list[str]]:
    import watchfiles

    roots = [os.path.abspath(d) for d in (config.reload_dirs or (config.app_dir,))]
    async for changes in watchfiles.awatch(*roots, watch_filter=ChangeFilter(config, roots)):
        yield sorted({path for _, path in changes})
