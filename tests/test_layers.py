"""The layering rules: engine/ (polycorn) < loops/ (polycorn.loops) < cli/ (polycorn.cli).

The engine is pure protocol and app logic: no threads, processes, signals, and no reaching up into
the loops or CLI layers. Only the package facade (``__init__``), the ``python -m`` shim
(``__main__``) and the gunicorn worker path (``workers``) may point upwards, lazily.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER_PACKAGES = {"engine": "polycorn", "loops": "polycorn.loops", "cli": "polycorn.cli"}

ENGINE_FORBIDDEN = ("threading", "multiprocessing", "signal", "polycorn.loops", "polycorn.cli")
#: Entry points on top of everything that reach up lazily: the package facade, the ``python -m``
#: shim, and ``polycorn.workers`` (the path gunicorn users name for the worker classes).
ENGINE_FACADE = {"__init__.py", "__main__.py", "workers.py"}
LOOPS_FORBIDDEN = ("polycorn.cli",)


def imported_modules(path: Path, package: str) -> Iterator[tuple[int, str]]:
    """Every module an import statement anywhere in the file names, relative ones resolved.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                # Level 1 is the file's own package, whether the file is a module or its __init__.
                drop = node.level - 1
                if drop >= len(parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above the top package")
                base = ".".join(parts[: len(parts) - drop])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and _called_name(node) in ("import_module", "__import__"):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def violations(folder: str, forbidden: tuple[str, ...], exempt: frozenset[str] | set[str] = frozenset()) -> list[str]:
    found = []
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}/"
    for path in files:
        if path.name in exempt and path.parent == ROOT / folder:
            continue
        for lineno, module in imported_modules(path, LAYER_PACKAGES[folder]):
            for bad in forbidden:
                if module == bad or module.startswith(bad + "."):
                    found.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    return found


def test_engine_imports_no_threads_signals_processes_or_upper_layers() -> None:
    assert violations("engine", ENGINE_FORBIDDEN, ENGINE_FACADE) == []


def test_loops_do_not_import_the_cli() -> None:
    assert violations("loops", LOOPS_FORBIDDEN) == []


def test_the_facade_reaches_upper_layers_only_lazily() -> None:
    """``engine/__init__.py`` may name the upper layers only inside functions or TYPE_CHECKING."""
    tree = ast.parse((ROOT / "engine" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                assert not name.startswith(("polycorn.loops", "polycorn.cli")), f"eager import of {name}"


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import threading\n", "threading"),
        ("from multiprocessing import Process\n", "multiprocessing"),
        ("def f():\n    import signal\n", "signal"),
        ("from polycorn.loops.server import Server\n", "polycorn.loops.server"),
        ("from polycorn import cli\n", "polycorn.cli"),
        ("from .loops import sockets\n", "polycorn.loops"),
        ("from . import cli\n", "polycorn.cli"),
        ("import importlib\nimportlib.import_module('polycorn.cli.main')\n", "polycorn.cli.main"),
    ],
)
def test_the_checker_sees_forbidden_imports(tmp_path: Path, source: str, module: str) -> None:
    path = tmp_path / "sample.py"
    path.write_text(source)
    names = [name for _, name in imported_modules(path, "polycorn")]
    assert module in names
    assert any(name == bad or name.startswith(bad + ".") for name in names for bad in ENGINE_FORBIDDEN)


def test_importing_the_engine_does_not_import_loops_or_cli() -> None:
    engine_modules = sorted(p.stem for p in (ROOT / "engine").glob("*.py") if p.stem not in ("__init__", "__main__"))
    code = (
        "import importlib, sys\n"
        "import polycorn\n"
        f"for name in {engine_modules!r}:\n"
        "    importlib.import_module('polycorn.' + name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('polycorn.loops', 'polycorn.cli', 'click'))))\n"
        "polycorn.Server\n"
        "print('polycorn.loops.server' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == "[]"
    assert second == "True"  # the facade's lazy attribute does reach the loops layer
