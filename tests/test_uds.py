"""``--uds`` with ``--uds-perms``: the socket file has exactly the mode asked for, whatever the umask."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator

import pytest

from tests.conftest import read_response, run_cli
from tests.fixture_apps.process import polycorn


@pytest.fixture
def sock_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="pc-uds-")  # short: AF_UNIX paths are limited to 107 bytes
    yield os.path.join(directory, "s.sock")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


def _get(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(30)
        client.connect(path)
        client.sendall(b"GET / HTTP/1.1\r\nHost: polycorn\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(client)
    assert status == 200
    return body


@pytest.mark.parametrize(
    ("workers", "perms", "umask", "expected"),
    [
        ("1", "600", 0o000, 0o600),  # tighter than the umask leaves it
        ("2", "666", 0o077, 0o666),  # looser than the umask leaves it
        ("1", "0o640", 0o022, 0o640),  # Python's octal spelling
        ("2", "660", 0o022, 0o660),
    ],
)
def test_socket_file_has_the_mode_asked_for(
    sock_path: str, workers: str, perms: str, umask: int, expected: int
) -> None:
    child = polycorn("polycorn.demo:app", "--uds", sock_path, "--uds-perms", perms, "--workers", workers, umask=umask)
    try:
        assert child.listening(60) == f"unix:{sock_path}"
        mode = os.stat(sock_path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == expected, oct(mode)
        if workers != "1":
            child.wait_for(f"all {workers} workers ready", 60)
        assert _get(sock_path) == b"Hello, world!"
    finally:
        rc = child.stop()
    assert rc == 0, child.output
    assert not os.path.exists(sock_path), "the socket file is removed at exit"


def test_without_uds_perms_the_umask_decides(sock_path: str) -> None:
    child = polycorn("polycorn.demo:app", "--uds", sock_path, umask=0o027)
    try:
        child.listening(60)
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o750
    finally:
        assert child.stop() == 0, child.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--uds-perms", "999"), "--uds-perms: expected octal permissions such as 660, got '999'"),
        (("--uds-perms", "rw-rw----"), "--uds-perms: expected octal permissions"),
        (("--uds-perms", "1777"), "--uds-perms: expected octal permissions"),
        (("--uds-perms", ""), "--uds-perms: expected octal permissions"),
    ],
)
def test_bad_uds_perms_exit_2_with_one_line(sock_path: str, args: tuple[str, ...], message: str) -> None:
    result = run_cli("polycorn.demo:app", "--uds", sock_path, *args)
    assert result.returncode == 2, result.stderr
    assert _one_error_line(result.stderr).startswith(f"Error: {message}")
    assert not os.path.exists(sock_path)


def test_uds_perms_without_uds_exits_2() -> None:
    result = run_cli("polycorn.demo:app", "--port", "0", "--uds-perms", "660")
    assert result.returncode == 2, result.stderr
    assert _one_error_line(result.stderr) == "Error: --uds-perms: only used with --uds"


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]
