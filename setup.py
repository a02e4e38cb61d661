"""The optional compiled build: ``POLYCORN_COMPILE=1`` compiles the request path with mypyc.

Everything else about the package lives in pyproject.toml. By default nothing is compiled and
this file changes nothing. With ``POLYCORN_COMPILE=1`` the modules every request runs through are
compiled to C extensions by mypyc (from the same typed source; the .py files stay beside them),
which takes about a third of the instructions off each request. It needs mypy and a C
compiler at build time, so build without isolation once they are installed:

    pip install 'setuptools>=77' mypy && POLYCORN_COMPILE=1 pip install --no-build-isolation .

Not for editable installs: the extensions would shadow the sources being edited.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

#: The modules each request runs through (docs/deployment.md, "The compiled build").
COMPILED = ["connection", "cycle", "parser_httptools", "parsing", "response", "outbox", "first_byte", "service"]
#: mypyc names a module after its path: engine/ is seen as polycorn/ through a link in here.
STAGE = os.path.join("build", "mypyc-stage")


def _ext_modules() -> list:
    wanted = os.environ.get("POLYCORN_COMPILE", "").strip().lower()
    if wanted in ("", "0", "no", "false"):
        return []
    if {"dist_info", "egg_info", "sdist"} & set(sys.argv):
        return []  # metadata and source archives need no compiling
    if "editable_wheel" in sys.argv:
        sys.exit(
            "POLYCORN_COMPILE is for regular installs: compiled modules would shadow the sources of an editable one"
        )
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "POLYCORN_COMPILE=1 needs mypy (which has mypyc) where the package is built: "
            "pip install 'setuptools>=77' mypy && POLYCORN_COMPILE=1 pip install --no-build-isolation ."
        )
    link = os.path.join(STAGE, "polycorn")
    os.makedirs(STAGE, exist_ok=True)
    if not os.path.islink(link):
        os.symlink(os.path.abspath("engine"), link)
    # The dependencies may not be installed yet while the package is built: what is not found is
    # typed Any (nothing on the request path needs more of them).
    flags = ["--ignore-missing-imports", "--no-warn-unused-ignores", "--no-warn-unused-configs"]
    return mypycify([*flags, *(os.path.join(link, name + ".py") for name in COMPILED)], opt_level="3")


setup(ext_modules=_ext_modules())
