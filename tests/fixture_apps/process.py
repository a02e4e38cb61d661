"""A ``polycorn`` child process with its output collected while it runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FIXTURE_DIR = str(Path(__file__).resolve().parent)

_LISTENING = re.compile(r"listening on (http://\S+|unix:\S+)")


class Child:
    """``Popen`` with stdout/stderr drained by threads, so the child never blocks on a full pipe."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None, **popen: Any
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd, **popen
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._lock = threading.Lock()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _drain(self, stream: Any, into: list[str]) -> None:
        with stream:  # closed at EOF: no ResourceWarning for the pipe
            for line in stream:
                with self._lock:
                    into.append(line)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._err)

    @property
    def output(self) -> str:
        return self.stderr + self.stdout

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        """Wait until ``text`` appears in stdout or stderr; fail if the child exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the readers catch the last lines
                if text in self.output:
                    break
                raise AssertionError(f"child exited ({self.proc.returncode}) before {text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r}:\n{self.output}")
            time.sleep(0.01)
        return self.output

    def listening(self, timeout: float = 15.0) -> str:
        """The address from the 'listening on ...' log line (the real port when 0 was asked for)."""
        self.wait_for("listening on", timeout)
        match = _LISTENING.search(self.output)
        assert match, self.output
        return match.group(1)

    def url(self, timeout: float = 15.0) -> str:
        address = self.listening(timeout)
        assert address.startswith("http://"), address
        return address

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status; killed in any case, so nothing outlives a test."""
        self.send_signal(sig)
        try:
            return self.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for t in self._readers:
            t.join(5)


def polycorn(*args: str, **kwargs: Any) -> Child:
    """Start ``python -m polycorn ARGS``."""
    return Child([sys.executable, "-m", "polycorn", *args], **kwargs)


def wait_port(port: int, timeout: float = 15.0, child: Child | None = None) -> None:
    """Wait until 127.0.0.1:port accepts connections (for runs whose logs are silenced)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if child is not None and child.proc.poll() is not None:
                raise AssertionError(f"child exited ({child.proc.returncode}):\n{child.output}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
