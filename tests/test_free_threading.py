"""On a free-threaded CPython (3.13t and later) Polycorn must keep the GIL off.

The interpreter turns the GIL back on, with a RuntimeWarning, when it imports a C extension that has
not declared free-threading support; ``PYTHON_GIL=0`` (as CI's free-threaded leg runs the suite)
overrides that. So one test checks, inside a request on every stack, that the serving process runs
without the GIL, and another imports the server's runtime dependencies in a fresh interpreter with no
``PYTHON_GIL`` override and RuntimeWarnings as errors, which fails if any of them would re-enable it.

On a regular (GIL) build the same tests check the opposite, so both builds assert something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from typing import Any

import httpx

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

#: What ``pip install polycorn`` brings in (uvloop and httptools are the C extensions among them).
RUNTIME_MODULES = [
    "polycorn",
    "polycorn.loops.server",
    "polycorn.cli.main",
    "uvloop",
    "httptools",
    "h11",
    "click",
    "websockets",
]


def gil_enabled() -> bool:
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def test_requests_run_without_the_gil_on_a_free_threaded_build(serve: Any, stack: dict[str, str]) -> None:
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(gil_enabled())
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    srv = serve(app, **stack)
    response = httpx.get(srv.url + "/")
    assert response.status_code == 200
    assert response.text == "ok"
    assert len(seen) == 1  # the app ran, in the server's thread
    if FREE_THREADED:
        assert seen == [False], "the GIL is enabled while serving a request on a free-threaded build"
        # orjson has no free-threaded build: nothing on the serving path may pull it in.
        assert "orjson" not in sys.modules
    else:
        assert seen == [True]


def test_runtime_dependencies_keep_the_gil_off() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHON_GIL"}
    code = (
        "import importlib, sys\n"
        f"for name in {RUNTIME_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(getattr(sys, '_is_gil_enabled', lambda: True)())\n"
    )
    # The RuntimeWarning of an extension without free-threading support is fatal here.
    child = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str(not FREE_THREADED), child.stderr
