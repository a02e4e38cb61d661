"""The ``polycorn`` command, run as a real child process and talked to over real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from polycorn.config import cli_flag, option_fields
from polycorn.version import __version__
from tests.conftest import free_port, run_cli
from tests.fixture_apps.process import FIXTURE_DIR, Child, polycorn, wait_port

APP_DIR = ("--app-dir", FIXTURE_DIR)


def _single_error_line(stderr: str) -> str:
    """The whole stderr is one 'Error: ...' line, with no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    return lines[0]


# -- help and version -----------------------------------------------------------------------------


def test_help_lists_every_option_of_the_table() -> None:
    result = run_cli("--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    # The option column: tokens of the lines that start with an option name.
    shown: set[str] = set()
    for line in result.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            for token in stripped.replace(",", " ").split():
                if token.startswith("--"):
                    shown.add(token)
    fields = option_fields()
    assert len(fields) > 20
    for f in fields:
        flag = cli_flag(f)
        assert flag in shown, f"{flag} missing from --help"
        if f.metadata["kind"] == "bool":
            assert "--no-" + flag[2:] in shown, f"--no-{flag[2:]} missing from --help"
        assert f.metadata["help"].split()[0] in result.stdout
    assert "--version" in shown and "--help" in shown
    assert "APP" in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"polycorn {__version__} (")
    assert result.stdout.count("\n") == 1


# -- serving the demo app -------------------------------------------------------------------------


def _exercise_demo(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        r = client.get("/")
        assert r.status_code == 200
        assert r.text == "Hello, world!"
        assert r.headers["server"] == "polycorn"
        r = client.get("/json")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"message": "Hello, world!", "server": "polycorn"}
        r = client.get("/stream")
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert r.text == "".join(f"chunk {i}\n" for i in range(10))
        payload = os.urandom(100_000)
        r = client.post("/echo", content=payload)
        assert r.status_code == 200
        assert r.content == payload
        assert client.get("/missing").status_code == 404


def test_python_dash_m_serves_the_demo_app() -> None:
    port = free_port()
    child = polycorn("polycorn.demo:app", "--port", str(port))
    try:
        url = child.url()
        assert url == f"http://127.0.0.1:{port}"
        _exercise_demo(url)
    finally:
        rc = child.stop()
    assert rc == 0, child.output
    assert "finished server process" in child.stderr


def test_console_script_serves_the_demo_app() -> None:
    script = Path(sys.executable).parent / "polycorn"
    assert script.exists(), script
    child = Child([str(script), "polycorn.demo:app", "--port", "0"])
    try:
        _exercise_demo(child.url())
    finally:
        rc = child.stop(signal.SIGINT)
    assert rc == 0, child.output
    assert "Traceback" not in child.output


def test_app_from_the_environment_variable() -> None:
    child = polycorn("--port", "0", env={"POLYCORN_APP": "polycorn.demo:app"})
    try:
        assert httpx.get(child.url() + "/", timeout=10).text == "Hello, world!"
    finally:
        assert child.stop() == 0, child.output


# -- start-up errors: one line on stderr, a meaningful exit code -----------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("nocolon",), "module:attribute"),
        (("no_such_module_xyz:app",), "no_such_module_xyz"),
        (("polycorn.demo:no_such_attribute",), "no_such_attribute"),
        (("broken_import:app", *APP_DIR), "RuntimeError: kaboom at import time"),
        (("factories:broken_factory", "--factory", *APP_DIR), "ValueError: factory exploded"),
        (("factories:make_app.nope", *APP_DIR), "make_app.nope"),
    ],
    ids=[
        "no-colon",
        "missing-module",
        "missing-attribute",
        "raises-at-import",
        "factory-raises",
        "missing-sub-attribute",
    ],
)
def test_app_load_errors_exit_4(args: tuple[str, ...], needle: str) -> None:
    result = run_cli(*args, "--port", "0")
    assert result.returncode == 4, result.stderr
    line = _single_error_line(result.stderr)
    assert needle in line


def test_factory_flag_builds_the_app() -> None:
    child = polycorn("factories:make_app", "--factory", "--port", "0", *APP_DIR)
    try:
        assert httpx.get(child.url(), timeout=10).text == "built by the factory"
    finally:
        assert child.stop() == 0, child.output


def test_port_in_use_exits_1() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = run_cli("polycorn.demo:app", "--port", str(port))
    assert result.returncode == 1, result.stderr
    line = _single_error_line(result.stderr)
    assert f"127.0.0.1:{port}" in line
    assert "in use" in line.lower()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--port", "abc"), "--port"),
        (("--loop", "nope"), "--loop"),
        (("--http", "spdy"), "--http"),
        (("--timeout-keep-alive", "soon"), "--timeout-keep-alive"),
        (("--no-such-flag",), "--no-such-flag"),
    ],
    ids=["port-abc", "loop-nope", "http-spdy", "float-word", "unknown-flag"],
)
def test_click_usage_errors_exit_2(args: tuple[str, ...], needle: str) -> None:
    result = run_cli("polycorn.demo:app", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    assert needle in error_lines[0]


def test_missing_app_argument_is_a_usage_error() -> None:
    result = run_cli(env={"POLYCORN_APP": ""})
    assert result.returncode == 2, result.stderr
    assert "APP" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--header", "no-colon-here"), "Name:Value"),
        (("--header", "bad name:x"), "not a valid header name"),
        (("--uds", "/tmp/polycorn-never.sock", "--fd", "3"), "--uds and --fd"),
        (("--env-file", "/nonexistent/polycorn.env"), "/nonexistent/polycorn.env"),
        (("--port", "70000"), "65535"),
        (("--port", "-1"), "--port"),
        (("--timeout-graceful-shutdown", "-1"), "--timeout-graceful-shutdown"),
        (("--root-path", "api"), "--root-path"),
        (("--forwarded-allow-ips", "10.0.0.300"), "--forwarded-allow-ips"),
        (("--log-config", "/nonexistent/logging.json"), "--log-config"),
    ],
    ids=[
        "header-no-colon",
        "header-bad-name",
        "uds-and-fd",
        "env-file-missing",
        "port-too-big",
        "port-negative",
        "negative-timeout",
        "root-path",
        "forwarded-ips",
        "log-config-missing",
    ],
)
def test_config_errors_exit_2_with_one_line(args: tuple[str, ...], needle: str) -> None:
    result = run_cli("polycorn.demo:app", *args)
    assert result.returncode == 2, result.stderr
    line = _single_error_line(result.stderr)
    assert needle in line


# -- application options ----------------------------------------------------------------------------


def test_env_file_is_loaded_before_the_app_is_imported(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    env_file.write_text("# comment\nPOLYCORN_TEST_GREETING='hello from the env file'\n")
    child = polycorn(
        "env_app:app",
        "--port",
        "0",
        "--env-file",
        str(env_file),
        *APP_DIR,
        env={"POLYCORN_TEST_GREETING": "from the parent"},
    )
    try:
        assert httpx.get(child.url(), timeout=10).text == "hello from the env file"
    finally:
        assert child.stop() == 0, child.output


def test_app_dir_puts_the_directory_on_sys_path(tmp_path: Path) -> None:
    (tmp_path / "my_app_dir_module.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'from app-dir'})\n"
    )
    # Without --app-dir the module is not importable from an unrelated working directory.
    missing = run_cli("my_app_dir_module:app", "--port", "0", cwd=tempfile.gettempdir())
    assert missing.returncode == 4, missing.stderr
    child = polycorn("my_app_dir_module:app", "--port", "0", "--app-dir", str(tmp_path), cwd=tempfile.gettempdir())
    try:
        assert httpx.get(child.url(), timeout=10).text == "from app-dir"
    finally:
        assert child.stop() == 0, child.output


def test_root_path_is_prefixed() -> None:
    child = polycorn("scope_app:app", "--port", "0", "--root-path", "/api", *APP_DIR)
    try:
        r = httpx.get(child.url() + "/items/1?x=y", timeout=10)
        assert r.json()["root_path"] == "/api"
        assert r.json()["path"] == "/api/items/1"
        assert r.json()["raw_path"] == "/api/items/1"
    finally:
        assert child.stop() == 0, child.output


# -- sockets ----------------------------------------------------------------------------------------


def test_uds_serves_over_a_unix_socket() -> None:
    directory = tempfile.mkdtemp(prefix="pc-")
    path = os.path.join(directory, "s.sock")
    child = polycorn("polycorn.demo:app", "--uds", path)
    try:
        assert child.listening() == f"unix:{path}"
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, base_url="http://polycorn", timeout=10) as client:
            assert client.get("/").text == "Hello, world!"
            assert client.post("/echo", content=b"over unix").content == b"over unix"
    finally:
        rc = child.stop()
    assert rc == 0, child.output
    assert not os.path.exists(path), "the socket file is removed at exit"
    os.rmdir(directory)


def test_fd_serves_on_an_inherited_socket() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    try:
        child = polycorn("polycorn.demo:app", "--fd", str(sock.fileno()), pass_fds=(sock.fileno(),))
        try:
            assert child.url() == f"http://127.0.0.1:{port}"
            assert httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json()["server"] == "polycorn"
        finally:
            assert child.stop() == 0, child.output
    finally:
        sock.close()


def test_fd_that_is_not_open_exits_1() -> None:
    result = run_cli("polycorn.demo:app", "--fd", "987")
    assert result.returncode == 1, result.stderr
    assert "--fd 987" in _single_error_line(result.stderr)


def test_backlog_is_accepted() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", "--backlog", "16")
    try:
        assert httpx.get(child.url(), timeout=10).status_code == 200
    finally:
        assert child.stop() == 0, child.output


def test_custom_default_headers_are_sent() -> None:
    child = polycorn(
        "polycorn.demo:app",
        "--port",
        "0",
        "--header",
        "X-Team: polycorn",
        "--header",
        "X-Other:2",
        "--no-server-header",
    )
    try:
        r = httpx.get(child.url(), timeout=10)
        assert r.headers["x-team"] == "polycorn"
        assert r.headers["x-other"] == "2"
        assert "server" not in r.headers
    finally:
        assert child.stop() == 0, child.output


# -- logging ----------------------------------------------------------------------------------------


def test_log_config_json(tmp_path: Path) -> None:
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"custom": {"format": "JSONFMT|%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "custom", "stream": "ext://sys.stderr"}},
        "loggers": {"polycorn": {"handlers": ["h"], "level": "INFO", "propagate": False}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    child = polycorn("polycorn.demo:app", "--port", "0", "--log-config", str(path))
    try:
        url = child.url()
        httpx.get(url + "/json", timeout=10)
        child.wait_for('"GET /json HTTP/1.1" 200')
    finally:
        assert child.stop() == 0, child.output
    assert "JSONFMT|INFO|polycorn.error|listening on" in child.stderr
    assert "JSONFMT|INFO|polycorn.access|" in child.stderr


def test_log_config_ini(tmp_path: Path) -> None:
    path = tmp_path / "logging.ini"
    path.write_text(
        "[loggers]\nkeys=root,polycorn\n\n"
        "[handlers]\nkeys=err\n\n"
        "[formatters]\nkeys=custom\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=\n\n"
        "[logger_polycorn]\nlevel=INFO\nhandlers=err\nqualname=polycorn\npropagate=0\n\n"
        "[handler_err]\nclass=StreamHandler\nformatter=custom\nargs=(sys.stderr,)\n\n"
        "[formatter_custom]\nformat=INIFMT %(levelname)s %(message)s\n"
    )
    child = polycorn("polycorn.demo:app", "--port", "0", "--log-config", str(path))
    try:
        child.url()
    finally:
        assert child.stop() == 0, child.output
    assert "INIFMT INFO listening on http://127.0.0.1:" in child.stderr
    assert "INIFMT INFO shutting down" in child.stderr


def test_log_config_invalid_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "logging.json"
    path.write_text("{not json")
    result = run_cli("polycorn.demo:app", "--port", "0", "--log-config", str(path))
    assert result.returncode == 2, result.stderr
    assert "logging.json" in _single_error_line(result.stderr)


def test_access_log_default_and_no_access_log() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0")
    try:
        httpx.get(child.url() + "/json?x=1", timeout=10)
        child.wait_for('"GET /json?x=1 HTTP/1.1" 200')
    finally:
        assert child.stop() == 0, child.output
    assert "polycorn.access" in child.stdout

    quiet = polycorn("polycorn.demo:app", "--port", "0", "--no-access-log")
    try:
        url = quiet.url()
        for _ in range(3):
            assert httpx.get(url + "/json?x=1", timeout=10).status_code == 200
    finally:
        assert quiet.stop() == 0, quiet.output
    assert "finished server process" in quiet.stderr  # the error log still works
    assert "GET /json" not in quiet.output
    assert "polycorn.access" not in quiet.output


def test_log_level_warning_suppresses_info_lines() -> None:
    port = free_port()
    child = polycorn("polycorn.demo:app", "--port", str(port), "--log-level", "warning")
    try:
        wait_port(port, child=child)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "Hello, world!"
    finally:
        rc = child.stop()
    assert rc == 0, child.output
    assert "INFO" not in child.output
    assert "listening on" not in child.output
    assert "GET / HTTP/1.1" not in child.output  # access lines are info too


def test_log_level_debug_is_accepted_case_insensitively() -> None:
    child = polycorn("polycorn.demo:app", "--port", "0", "--log-level", "DEBUG")
    try:
        assert httpx.get(child.url(), timeout=10).status_code == 200
    finally:
        assert child.stop() == 0, child.output
    assert "listening on" in child.stderr
