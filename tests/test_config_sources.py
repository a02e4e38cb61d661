"""Where options come from: the command line, POLYCORN_* variables, a .env file, polycorn.toml or
pyproject.toml's [tool.polycorn], and the defaults, in that order of precedence.

Every test runs the real command in a child process (``python -m polycorn``) in a fresh working
directory. ``--print-config`` shows the effective values, parsed back with tomllib; the serving tests
answer real requests on the port the sources chose.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from polycorn.config import cli_flag, option_fields
from tests.conftest import free_port, run_cli
from tests.fixture_apps.process import FIXTURE_DIR, Child, polycorn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: No source leaks in from the environment the tests themselves run in.
_CLEAN = {
    name: ""
    for name in os.environ
    if name.startswith("POLYCORN_") or name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")
}


def _run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={**_CLEAN, **(env or {})}, cwd=str(cwd), timeout=60)


def _print_config(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """The effective configuration as parsed TOML, and the raw text (for the source comments)."""
    result = _run(cwd, "--print-config", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return tomllib.loads(result.stdout), result.stdout


def _source(text: str, key: str) -> str | None:
    """The ``# from ...`` comment of ``key``'s line, or None when it has its default."""
    for line in text.splitlines():
        if line.startswith(f"{key} = ") or line.startswith(f"# {key} = "):
            match = re.search(r"  # from (.+)$", line)
            return match.group(1) if match else None
    raise AssertionError(f"{key} missing from:\n{text}")


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


# -- each source alone ---------------------------------------------------------------------------


def test_defaults_when_there_is_no_source(tmp_path: Path) -> None:
    values, text = _print_config(tmp_path, "main:app")
    assert values["app"] == "main:app"
    assert values["port"] == 8000
    assert values["timeout-keep-alive"] == 5.0
    assert values["access-log"] is True
    assert values["header"] == []
    assert "no config file read" in text
    # Only APP was given: no other line names a source.
    assert [line for line in text.splitlines() if "# from" in line] == ['app = "main:app"  # from the command line']


def test_every_option_is_printed(tmp_path: Path) -> None:
    values, text = _print_config(tmp_path, "main:app")
    for f in option_fields():
        key = cli_flag(f)[2:]
        if f.default is None:
            assert f"# {key} = (not set)" in text
        else:
            assert key in values, key


def test_command_line_alone(tmp_path: Path) -> None:
    values, text = _print_config(tmp_path, "main:app", "--port", "8123", "--no-access-log", "--timeout-keep-alive", "9")
    assert values["port"] == 8123
    assert values["access-log"] is False
    assert values["timeout-keep-alive"] == 9.0
    assert _source(text, "port") == "--port"
    assert _source(text, "access-log") == "--no-access-log"
    assert _source(text, "backlog") is None


def test_environment_alone(tmp_path: Path) -> None:
    env = {
        "POLYCORN_APP": "main:app",
        "POLYCORN_PORT": "8124",
        "POLYCORN_TIMEOUT_KEEP_ALIVE": "2.5",
        "POLYCORN_LOOP": "asyncio",
        "POLYCORN_LOG_LEVEL": "WARNING",
    }
    values, text = _print_config(tmp_path, env=env)
    assert values["app"] == "main:app"
    assert values["port"] == 8124
    assert values["timeout-keep-alive"] == 2.5
    assert values["loop"] == "asyncio"
    assert values["log-level"] == "warning"
    assert _source(text, "port") == "$POLYCORN_PORT"
    assert _source(text, "app") == "$POLYCORN_APP"


def test_polycorn_toml_alone(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text(
        'app = "main:app"\nport = 8125\ntimeout-keep-alive = 7\nlog_level = "DEBUG"\nworkers = "auto"\nhttp = "H11"\n'
    )
    values, text = _print_config(tmp_path)
    assert values["app"] == "main:app"
    assert values["port"] == 8125
    assert values["timeout-keep-alive"] == 7.0  # an integer for a float option
    assert values["log-level"] == "debug"
    assert values["workers"] == "auto"
    assert values["http"] == "h11"  # choices are matched case-insensitively, as on the command line
    assert _source(text, "port") == "polycorn.toml"
    assert "read from polycorn.toml" in text


# -- precedence ----------------------------------------------------------------------------------


def test_command_line_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text(
        'app = "from_file:app"\nport = 8201\ntimeout-keep-alive = 11\nlog-level = "debug"\n'
    )
    env = {"POLYCORN_PORT": "8202", "POLYCORN_TIMEOUT_KEEP_ALIVE": "12", "POLYCORN_APP": "from_env:app"}
    values, text = _print_config(tmp_path, "--port", "8203", env=env)
    assert values["port"] == 8203  # all three: the command line
    assert values["timeout-keep-alive"] == 12.0  # environment and file: the environment
    assert values["log-level"] == "debug"  # the file alone
    assert values["backlog"] == 2048  # nobody: the default
    assert values["app"] == "from_env:app"
    assert _source(text, "port") == "--port"
    assert _source(text, "timeout-keep-alive") == "$POLYCORN_TIMEOUT_KEEP_ALIVE"
    assert _source(text, "log-level") == "polycorn.toml"
    assert _source(text, "backlog") is None

    values, _ = _print_config(tmp_path, "from_cli:app", env=env)
    assert values["app"] == "from_cli:app"


def test_a_file_value_is_overridden_by_a_command_line_bool(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text("access-log = false\nserver-header = false\n")
    values, _ = _print_config(tmp_path, "main:app", "--access-log", env={"POLYCORN_SERVER_HEADER": "on"})
    assert values["access-log"] is True
    assert values["server-header"] is True


# -- file lookup and --config ----------------------------------------------------------------------


def test_pyproject_tool_polycorn_table_is_found_in_cwd(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.polycorn]\napp = "main:app"\nport = 8301\nreload = true\n'
        'reload-dir = ["src", "lib dir"]\n\n[tool.other]\nport = "ignored"\n'
    )
    values, text = _print_config(tmp_path)
    assert values["app"] == "main:app"
    assert values["port"] == 8301
    assert values["reload-dir"] == ["src", "lib dir"]
    assert _source(text, "port") == "pyproject.toml"
    assert "read from pyproject.toml [tool.polycorn]" in text


def test_pyproject_without_the_table_is_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n\n[tool.ruff]\nline-length = 1\n')
    values, text = _print_config(tmp_path, "main:app")
    assert values["port"] == 8000
    assert "no config file read" in text


def test_polycorn_toml_is_preferred_to_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.polycorn]\nport = 8401\nbacklog = 10\n")
    (tmp_path / "polycorn.toml").write_text("port = 8402\n")
    values, _ = _print_config(tmp_path, "main:app")
    assert values["port"] == 8402
    assert values["backlog"] == 2048  # one file is read, not both


def test_explicit_config_file(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text("port = 8501\n")  # not read: --config names another file
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "staging.toml").write_text("port = 8502\nhost = '0.0.0.0'\n")
    values, text = _print_config(tmp_path, "main:app", "--config", "conf/staging.toml")
    assert values["port"] == 8502
    assert values["host"] == "0.0.0.0"
    assert _source(text, "port") == "conf/staging.toml"

    values, _ = _print_config(tmp_path, "main:app", env={"POLYCORN_CONFIG": str(conf / "staging.toml")})
    assert values["port"] == 8502

    (conf / "pyproject.toml").write_text("[tool.polycorn]\nport = 8503\n")
    values, text = _print_config(tmp_path, "main:app", "--config", str(conf / "pyproject.toml"))
    assert values["port"] == 8503
    assert "[tool.polycorn]" in text


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("polycorn.toml", "prot = 8000\n", ["polycorn.toml", "unknown option 'prot'", "did you mean 'port'"]),
        ("polycorn.toml", 'port = "8000"\n', ["polycorn.toml", "port", "expected an integer", "string '8000'"]),
        ("polycorn.toml", "access-log = 1\n", ["polycorn.toml", "access-log", "true or false"]),
        ("polycorn.toml", "header = 'X-A: 1'\n", ["polycorn.toml", "header", "array of strings or a table"]),
        ("polycorn.toml", "port = 80\nhost = \n", ["polycorn.toml", "invalid TOML", "line 2"]),
        ("polycorn.toml", 'loop = "fast"\n', ["polycorn.toml", "loop", "'fast' is not one of auto, uvloop, asyncio"]),
        ("polycorn.toml", "port = 1\nport_ = 2\n", ["unknown option 'port_'"]),
        ("polycorn.toml", "timeout-keep-alive = 1\ntimeout_keep_alive = 2\n", ["set the same option"]),
        ("polycorn.toml", "port = 70000\n", ["--port: must be at most 65535, got 70000 (from polycorn.toml)"]),
        ("pyproject.toml", "[tool.polycorn]\nworkers = true\n", ["pyproject.toml", "workers", "integer or a string"]),
        ("pyproject.toml", "[tool.polycorn]\nbogus = 1\n", ["pyproject.toml", "'bogus'", "[tool.polycorn]"]),
        ("pyproject.toml", "[tool\n", ["pyproject.toml", "invalid TOML", "line 1"]),
    ],
    ids=[
        "unknown-key",
        "string-for-int",
        "int-for-bool",
        "string-for-array",
        "bad-toml",
        "bad-choice",
        "near-miss-key",
        "same-option-twice",
        "out-of-range",
        "pyproject-bool-for-workers",
        "pyproject-unknown-key",
        "pyproject-bad-toml",
    ],
)
def test_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, name: str, content: str, needles: list[str]) -> None:
    (tmp_path / name).write_text(content)
    for args in (("main:app", "--print-config"), ("main:app",)):  # the same for printing and serving
        result = _run(tmp_path, *args)
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr)
        for needle in needles:
            assert needle in line, line


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    result = _run(tmp_path, "main:app", "--config", "nowhere.toml")
    assert result.returncode == 2, result.stderr
    assert "--config: no such file 'nowhere.toml'" in _one_error_line(result.stderr)

    result = _run(tmp_path, "main:app", env={"POLYCORN_CONFIG": "also-nowhere.toml"})
    assert result.returncode == 2, result.stderr
    assert "also-nowhere.toml" in _one_error_line(result.stderr)


def test_explicit_pyproject_needs_the_table(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = _run(tmp_path, "main:app", "--config", "sub/pyproject.toml")
    assert result.returncode == 2, result.stderr
    assert "sub/pyproject.toml: has no [tool.polycorn] table" in _one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("POLYCORN_PORT", "eighty", "'--port' (env var: 'POLYCORN_PORT')"),
        ("POLYCORN_TIMEOUT_KEEP_ALIVE", "soon", "(env var: 'POLYCORN_TIMEOUT_KEEP_ALIVE')"),
        ("POLYCORN_ACCESS_LOG", "maybe", "(env var: 'POLYCORN_ACCESS_LOG')"),
        ("POLYCORN_RELOAD", "perhaps", "(env var: 'POLYCORN_RELOAD')"),
        ("POLYCORN_LOOP", "fast", "(env var: 'POLYCORN_LOOP')"),
    ],
    ids=["int", "float", "bool", "flag", "choice"],
)
def test_bad_environment_value_is_a_usage_error_naming_the_variable(
    tmp_path: Path, variable: str, value: str, needle: str
) -> None:
    result = _run(tmp_path, "main:app", "--print-config", env={variable: value})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0] and repr(value) in errors[0], errors[0]


def test_value_errors_name_the_environment_variable(tmp_path: Path) -> None:
    result = _run(tmp_path, "main:app", env={"POLYCORN_PORT": "70000"})
    assert result.returncode == 2, result.stderr
    assert _one_error_line(result.stderr) == "Error: --port: must be at most 65535, got 70000 (from $POLYCORN_PORT)"


def test_help_and_version_work_with_a_broken_config_file(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text("this is not toml\n")
    result = _run(tmp_path, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    words = " ".join(result.stdout.split())  # the help wraps at 100 columns
    assert "POLYCORN_TIMEOUT_KEEP_ALIVE" in words  # every option shows its variable
    assert "POLYCORN_WORKERS, WEB_CONCURRENCY" in words
    assert "--config" in result.stdout and "--print-config" in result.stdout
    assert _run(tmp_path, "--version").returncode == 0


# -- value forms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("true", "false"), [("1", "0"), ("true", "false"), ("yes", "no"), ("on", "off"), ("TRUE", "Off")]
)
def test_boolean_environment_spellings(tmp_path: Path, true: str, false: str) -> None:
    values, _ = _print_config(
        tmp_path,
        "main:app",
        env={
            "POLYCORN_FORWARDED_HOST": true,  # --forwarded-host/--no-forwarded-host, default off
            "POLYCORN_ACCESS_LOG": false,  # default on
            "POLYCORN_FACTORY": true,  # a plain switch
            "POLYCORN_PIN_CPUS": false,
        },
    )
    assert values["forwarded-host"] is True
    assert values["access-log"] is False
    assert values["factory"] is True
    assert values["pin-cpus"] is False


def test_repeatable_options_from_the_environment_one_per_line(tmp_path: Path) -> None:
    env = {
        "POLYCORN_HEADERS": "X-Team: a, b and c\n\nX-Other:2\n",
        "POLYCORN_RELOAD": "1",
        "POLYCORN_RELOAD_DIRS": "src dir\r\nlib,old",
        "POLYCORN_RELOAD_INCLUDES": "*.py",
    }
    values, text = _print_config(tmp_path, "main:app", env=env)
    assert values["header"] == ["X-Team: a, b and c", "X-Other: 2"]
    assert values["reload-dir"] == ["src dir", "lib,old"]
    assert values["reload-include"] == ["*.py"]
    assert _source(text, "header") == "$POLYCORN_HEADERS"
    # The command line replaces the variable's list instead of adding to it.
    values, _ = _print_config(tmp_path, "main:app", "--header", "X-Cli: 1", env=env)
    assert values["header"] == ["X-Cli: 1"]


def test_repeatable_options_from_the_file(tmp_path: Path) -> None:
    (tmp_path / "polycorn.toml").write_text(
        'reload = true\nreload-exclude = ["*.tmp", "build dir/*"]\n\n[header]\nX-Team = "a, b"\nX-Other = "2"\n'
    )
    values, _ = _print_config(tmp_path, "main:app")
    assert values["header"] == ["X-Team: a, b", "X-Other: 2"]
    assert values["reload-exclude"] == ["*.tmp", "build dir/*"]

    (tmp_path / "polycorn.toml").write_text('headers = ["X-A: 1", "X-B:two words"]\n')
    values, _ = _print_config(tmp_path, "main:app")
    assert values["header"] == ["X-A: 1", "X-B: two words"]


def test_secret_is_masked(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not checked by --print-config, only that the file exists\n")
    env = {"POLYCORN_SSL_KEYFILE_PASSWORD": "hunter2-very-secret"}
    result = _run(tmp_path, "main:app", "--ssl-certfile", str(cert), "--print-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "# ssl-keyfile-password = (masked)  # from $POLYCORN_SSL_KEYFILE_PASSWORD" in result.stdout
    assert "ssl-keyfile-password" not in tomllib.loads(result.stdout)  # saved back, it sets no wrong password

    result = _run(
        tmp_path, "main:app", "--ssl-certfile", str(cert), "--ssl-keyfile-password", "s3cr3t", "--print-config"
    )
    assert result.returncode == 0, result.stderr
    assert "s3cr3t" not in result.stdout


def test_web_concurrency_still_sets_workers(tmp_path: Path) -> None:
    values, text = _print_config(tmp_path, "main:app", env={"WEB_CONCURRENCY": "3"})
    assert values["workers"] == 3
    assert _source(text, "workers") == "$WEB_CONCURRENCY"
    values, text = _print_config(tmp_path, "main:app", env={"WEB_CONCURRENCY": "3", "POLYCORN_WORKERS": "2"})
    assert values["workers"] == 2
    assert _source(text, "workers") == "$POLYCORN_WORKERS"
    values, _ = _print_config(tmp_path, "main:app", env={"POLYCORN_WORKERS": "auto"})
    assert values["workers"] == "auto"
    values, _ = _print_config(tmp_path, "main:app", "--workers", "auto")
    assert values["workers"] == "auto"


def test_forwarded_allow_ips_still_read(tmp_path: Path) -> None:
    values, _ = _print_config(tmp_path, "main:app", env={"FORWARDED_ALLOW_IPS": "10.0.0.0/8"})
    assert values["forwarded-allow-ips"] == "10.0.0.0/8"


# -- --print-config --------------------------------------------------------------------------------


def test_print_config_output_is_a_config_file(tmp_path: Path) -> None:
    """Saved as polycorn.toml, the output configures the same values."""
    env = {"POLYCORN_TIMEOUT_KEEP_ALIVE": "3", "POLYCORN_HEADERS": 'X-Quote: say "hi" \\ back'}
    first, output = _print_config(
        tmp_path, "main:app", "--port", "8601", "--no-date-header", "--root-path", "/api", "--uds", "/tmp/x", env=env
    )
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "polycorn.toml").write_text(output)
    second, text = _print_config(saved, "--uds", "/tmp/x")
    assert second == first
    assert second["header"] == ['X-Quote: say "hi" \\ back']
    assert _source(text, "port") == "polycorn.toml"


def test_print_config_neither_imports_the_app_nor_serves(tmp_path: Path) -> None:
    port = free_port()
    result = _run(tmp_path, "no_such_module_anywhere:app", "--port", str(port), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "listening" not in result.stdout + result.stderr
    assert tomllib.loads(result.stdout)["app"] == "no_such_module_anywhere:app"


def test_print_config_without_app(tmp_path: Path) -> None:
    values, text = _print_config(tmp_path)
    assert "app" not in values
    assert "# app = (not set" in text
    result = _run(tmp_path)  # serving still needs one
    assert result.returncode == 2
    assert "Missing argument 'APP'" in result.stderr


def test_print_config_reports_invalid_values(tmp_path: Path) -> None:
    result = _run(tmp_path, "main:app", "--print-config", "--root-path", "api")
    assert result.returncode == 2, result.stderr
    assert "--root-path" in _one_error_line(result.stderr)


# -- --env-file ------------------------------------------------------------------------------------


def test_env_file_configures_polycorn_and_wins_over_the_process_environment(tmp_path: Path) -> None:
    (tmp_path / "prod.env").write_text(
        'POLYCORN_PORT=8701\nPOLYCORN_HEADERS="X-A: 1\nX-B: 2"\nPOLYCORN_ACCESS_LOG=no\nOTHER=x\n'
    )
    (tmp_path / "polycorn.toml").write_text("port = 8700\nbacklog = 77\n")
    values, text = _print_config(tmp_path, "main:app", "--env-file", "prod.env", env={"POLYCORN_PORT": "8702"})
    assert values["port"] == 8701
    assert values["header"] == ["X-A: 1", "X-B: 2"]
    assert values["access-log"] is False
    assert values["backlog"] == 77
    assert _source(text, "port") == "$POLYCORN_PORT in prod.env"
    # The command line still wins.
    values, _ = _print_config(tmp_path, "main:app", "--env-file", "prod.env", "--port", "8703")
    assert values["port"] == 8703


def test_env_file_named_by_the_config_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("POLYCORN_PORT=8711\n")
    (tmp_path / "b.env").write_text("POLYCORN_PORT=8712\n")
    (tmp_path / "polycorn.toml").write_text('env-file = "a.env"\n')
    values, _ = _print_config(tmp_path, "main:app")
    assert values["port"] == 8711
    assert values["env-file"] == "a.env"
    values, _ = _print_config(tmp_path, "main:app", env={"POLYCORN_ENV_FILE": "b.env"})
    assert values["port"] == 8712
    assert values["env-file"] == "b.env"


def test_env_file_cannot_choose_the_sources(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_text("POLYCORN_CONFIG=other.toml\n")
    result = _run(tmp_path, "main:app", "--env-file", "bad.env", "--print-config")
    assert result.returncode == 2, result.stderr
    assert "POLYCORN_CONFIG cannot be set in the --env-file" in _one_error_line(result.stderr)


def test_missing_env_file(tmp_path: Path) -> None:
    result = _run(tmp_path, "main:app", "--print-config", env={"POLYCORN_ENV_FILE": "missing.env"})
    assert result.returncode == 2, result.stderr
    assert "--env-file: no such file 'missing.env'" in _one_error_line(result.stderr)


# -- real serving ----------------------------------------------------------------------------------


def test_serves_on_the_port_of_the_file_then_of_the_environment(tmp_path: Path) -> None:
    file_port = free_port()
    (tmp_path / "polycorn.toml").write_text(
        f'app = "env_app:app"\napp-dir = "{FIXTURE_DIR}"\nport = {file_port}\nheader = ["X-From: the file"]\n'
    )
    env = {**_CLEAN, "POLYCORN_TEST_GREETING": "configured"}
    child = polycorn(cwd=str(tmp_path), env=env)
    try:
        assert child.url(timeout=30) == f"http://127.0.0.1:{file_port}"
        r = httpx.get(f"http://127.0.0.1:{file_port}/", timeout=10)
        assert r.text == "configured"
        assert r.headers["x-from"] == "the file"
    finally:
        assert child.stop() == 0, child.output

    env_port = free_port()
    env = {**env, "POLYCORN_PORT": str(env_port), "POLYCORN_HEADERS": "X-From: the environment, too"}
    child = polycorn(cwd=str(tmp_path), env=env)
    try:
        assert child.url(timeout=30) == f"http://127.0.0.1:{env_port}"
        r = httpx.get(f"http://127.0.0.1:{env_port}/", timeout=10)
        assert r.text == "configured"
        assert r.headers["x-from"] == "the environment, too"
    finally:
        assert child.stop() == 0, child.output


def test_programmatic_run_reads_no_environment_or_file(tmp_path: Path) -> None:
    # Either source, if read, would stop the server: an unknown key, an invalid root path.
    (tmp_path / "polycorn.toml").write_text("prot = 1\n")
    script = "import polycorn; polycorn.run('polycorn.demo:app', port=0)"
    child = Child([sys.executable, "-c", script], cwd=str(tmp_path), env={**_CLEAN, "POLYCORN_ROOT_PATH": "api"})
    try:
        assert httpx.get(child.url() + "/", timeout=10).text == "Hello, world!"
    finally:
        assert child.stop() == 0, child.output
