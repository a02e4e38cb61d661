"""The generated settings docs (docs/settings.md, the README options table) match the option table."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path
from typing import Any

import pytest

from polycorn.config import cli_flag, option_fields

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "gen_settings.py"


@pytest.fixture(scope="module")
def gen() -> dict[str, Any]:
    """The generator's functions, loaded in-process (``__main__`` is not run)."""
    return runpy.run_path(str(SCRIPT), run_name="gen_settings")


def test_generated_docs_are_up_to_date(gen: dict[str, Any]) -> None:
    stale = [str(p.relative_to(ROOT)) for p in gen["outdated"]()]
    assert stale == [], f"{stale} out of date: run `python docs/gen_settings.py` and commit the result"


def test_check_mode_exits_zero(gen: dict[str, Any]) -> None:
    assert gen["main"](["--check"]) == 0


def test_every_flag_is_documented() -> None:
    settings = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("<!-- options:start -->") : readme.index("<!-- options:end -->")]
    for f in option_fields():
        flag = cli_flag(f)
        assert f"`{flag}`" in settings, f"{flag} missing from docs/settings.md"
        assert f"`{flag}`" in table, f"{flag} missing from the README options table"
        assert f.metadata["help"] in settings, f"help text of {flag} missing from docs/settings.md"


def test_check_detects_and_write_fixes_stale_files(gen: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(ROOT / "docs" / "settings.md", tmp_path / "docs" / "settings.md")
    assert gen["outdated"](tmp_path) == []

    settings = tmp_path / "docs" / "settings.md"
    settings.write_text(settings.read_text(encoding="utf-8").replace("--port", "--prot"), encoding="utf-8")
    readme = tmp_path / "README.md"
    text = readme.read_text(encoding="utf-8")
    start = text.index("<!-- options:start -->") + len("<!-- options:start -->")
    readme.write_text(text[:start] + "\n" + text[text.index("<!-- options:end -->") :], encoding="utf-8")
    assert sorted(gen["outdated"](tmp_path)) == sorted([settings, readme])

    assert sorted(gen["write"](tmp_path)) == sorted([settings, readme])
    assert gen["outdated"](tmp_path) == []
    assert readme.read_text(encoding="utf-8") == (ROOT / "README.md").read_text(encoding="utf-8")


def test_missing_markers_are_an_error(gen: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="markers"):
        gen["outdated"](tmp_path)
