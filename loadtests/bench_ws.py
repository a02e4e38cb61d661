#!/usr/bin/env python3
"""WebSocket echo round trips per second of Polycorn next to uvicorn and granian.

Why: ``bench.py`` measures plain HTTP with wrk, which cannot speak WebSocket. This script measures
the other half of an ASGI server's hot path: many small messages on long-lived connections, where
the cost is frame parsing, masking, the ASGI ``receive``/``send`` hand-off and the event loop, not
the HTTP head.

One command::

    python loadtests/bench_ws.py --rounds 3 --duration 8 --connections 32 --size 32 \\
        --servers polycorn,uvicorn,granian --json loadtests/results/bench_ws.json

How: every server runs the raw-ASGI app of ``loadtests/bench_app.py`` (its WebSocket route echoes
each message, text as text and bytes as bytes) with one worker and no access log, pinned to one
CPU (``taskset -c 0``), started and stopped with ``bench.py``'s own helpers; uvicorn runs
``--ws websockets``, granian ``--interface asgi --ws``. The load generator is this same file run as
``--clients`` Python processes (default 1), each pinned with taskset to ``--client-cpu`` (default
CPU 1; several clients share it unless several CPUs are named), with ``--connections`` split
between them, each on asyncio (uvloop where installed). Each connection sends a ``--size``-byte text
message (``--binary`` for bytes), awaits the echo, checks it, and sends the next one, with no
pipelining. ``--client raw`` (the default) is a minimal RFC 6455 client on ``asyncio.Protocol``: its
own upgrade handshake, one masked frame built once per connection and sent again for every round
trip, a small parser for the echo. It exists because the ``websockets`` library's client
(``--client websockets``) costs more CPU per message than the servers do, which made the load
generator the bottleneck. permessage-deflate is off unless ``--compression`` (websockets client only).

A measurement: a quick handshake-and-echo check (a server that cannot upgrade is reported as
``handshake failed`` and skipped for that round, nothing crashes); the clients open all their
connections and say they are ready; they then run ``--warmup`` unrecorded seconds followed by a
``--duration``-second window that every client shares (Linux's CLOCK_MONOTONIC is system-wide).
Only round trips that start and end inside the window count: round trips/s, p50/p99 round-trip
latency, echo mismatches and closed connections. CPU in that window is shown twice per side: the
processes' own (server: ``bench.ServerProbe``, process tree; clients: getrusage) and how busy the
pinned core was (/proc/stat, softirq included: on loopback much of the TCP work runs there and is
charged to no process). A client core near 100 % means the *load generator* is the bottleneck and
the numbers understate the server (the script says so); ``others`` is CPU that other processes took
(a machine that was not quiet). Peak RSS comes from ``bench.ServerProbe``. Servers are interleaved
over ``--rounds`` (order rotating every round); the summary shows medians and each server's ratio to
uvicorn, both in messages per second and in messages per second of busy server core (the server's
own efficiency, which still compares fairly when the client is the bottleneck).

Linux only (taskset, /proc). Needs ``websockets`` in this interpreter (the echo check, ``--client websockets``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# The sibling script, importable once its folder is on sys.path.
import bench  # noqa: E402
from bench import (  # noqa: E402
    BASELINE,
    ServerProbe,
    ServerSpec,
    csv_choices,
    fmt,
    loadavg,
    pinned,
    running_server,
    wait_until_quiet,
)

#: Path the clients connect to (bench_app.py echoes on every WebSocket path).
WS_PATH = "/ws"
#: The load-generator implementations (--client).
CLIENTS = ("raw", "websockets")
COMPRESSION_NEEDS_WEBSOCKETS = "--compression needs --client websockets (the raw client offers no extensions)"


# --------------------------------------------------------------------------------------------
# Servers: bench.py's command lines, adapted for WebSocket
# --------------------------------------------------------------------------------------------
def server_commands(args: argparse.Namespace) -> dict[str, ServerSpec]:
    """server name -> (module that must be installed, command line for a port)."""
    polycorn_extra = shlex.split(args.polycorn_args)
    uvicorn_extra = ["--ws", args.uvicorn_ws, *shlex.split(args.uvicorn_args)]
    granian_extra = shlex.split(args.granian_args)

    def polycorn(port: int) -> list[str]:
        return bench.polycorn_command(port, polycorn_extra)

    def uvicorn(port: int) -> list[str]:
        return bench.uvicorn_command(port, uvicorn_extra)

    def granian(port: int) -> list[str]:
        return bench.granian_command(port, granian_extra, websockets=True)

    return {
        "polycorn": ServerSpec("polycorn", polycorn),
        "uvicorn": ServerSpec("uvicorn", uvicorn),
        "granian": ServerSpec("granian", granian),
    }


# --------------------------------------------------------------------------------------------
# The load generator (this file, run as `bench_ws.py client ...` in a pinned process)
# --------------------------------------------------------------------------------------------
def _payload(size: int, binary: bool) -> str | bytes:
    return b"x" * size if binary else "x" * size


def _connect_kwargs(compression: bool, open_timeout: float) -> dict[str, Any]:
    # proxy=None: never tunnel through an HTTP(S)_PROXY from the environment to 127.0.0.1.
    # ping_interval=None: no keep-alive pings mixed into the measurement.
    return {
        "compression": "deflate" if compression else None,
        "open_timeout": open_timeout,
        "ping_interval": None,
        "max_size": None,
        "proxy": None,
    }


def describe_failure(exc: BaseException) -> str:
    """One line for a failed connection attempt: 'handshake failed: ...' or 'connect failed: ...'."""
    if isinstance(exc, (HandshakeError, TimeoutError, asyncio.TimeoutError)):
        return f"handshake failed: {str(exc) or type(exc).__name__}"
    from websockets.exceptions import InvalidHandshake

    if isinstance(exc, InvalidHandshake):
        return f"handshake failed: {str(exc) or type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"connect failed: {exc}"
    return f"connect failed: {type(exc).__name__}: {exc}"


@dataclass
class ConnectionStats:
    round_trips: int = 0
    mismatches: int = 0
    closed: str | None = None
    latencies_s: list[float] = field(default_factory=list)


async def _pump(ws: Any, payload: str | bytes, start: float, end: float, stats: ConnectionStats) -> None:
    """Send, await the echo, check it, repeat until ``end``; count what lies inside [start, end]."""
    from websockets.exceptions import ConnectionClosed

    clock = time.monotonic
    latencies = stats.latencies_s
    try:
        while True:
            sent = clock()
            if sent >= end:
                return
            await ws.send(payload)
            reply = await ws.recv()
            received = clock()
            if reply != payload:
                stats.mismatches += 1
            if sent >= start and received <= end:
                latencies.append(received - sent)
    except ConnectionClosed as exc:
        stats.closed = f"connection closed: {exc}"
    finally:
        stats.round_trips = len(latencies)


async def _window_cpu(start: float, end: float) -> float:
    """CPU seconds this process uses between the monotonic instants ``start`` and ``end``."""

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    await asyncio.sleep(max(0.0, start - time.monotonic()))
    before = cpu()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return cpu() - before


def _wait_for_start() -> float | None:
    """Say ready on stdout, then read the window's start (a monotonic instant) from stdin; None: abort."""
    print(json.dumps({"ready": True}), flush=True)
    line = sys.stdin.readline()  # blocks the loop on purpose: the connections are idle meanwhile
    return float(line) if line.strip() else None


def _open_error(failures: Sequence[BaseException], total: int) -> dict[str, Any]:
    return {"error": f"{describe_failure(failures[0])} ({len(failures)}/{total} connections)"}


def _result(stats: Sequence[ConnectionStats], cpu_s: float) -> dict[str, Any]:
    return {
        "error": None,
        "round_trips": sum(s.round_trips for s in stats),
        "mismatches": sum(s.mismatches for s in stats),
        "closed": [s.closed for s in stats if s.closed],
        "cpu_s": cpu_s,
        "latencies_us": [round(x * 1e6, 1) for s in stats for x in s.latencies_s],
    }


async def client(opts: argparse.Namespace) -> dict[str, Any]:
    """Open the connections, report readiness on stdout, read the window start from stdin, run.

    The two clients differ only in how a connection is opened, driven through the window and
    closed; the window itself is this one function.
    """
    if opts.client == "raw":
        payload = b"x" * opts.size  # ASCII: its text is the same bytes

        def open_one() -> Any:
            return open_raw(opts.url, payload, opts.binary, opts.open_timeout)

        async def drive(conns: list[Any], start: float, end: float) -> list[ConnectionStats]:
            for conn in conns:
                conn.run(start, end)
            await asyncio.gather(*(conn.done for conn in conns))
            return [conn.stats for conn in conns]

        def close(conn: Any) -> Any:
            return conn.close(timeout=2)

    else:
        from websockets.asyncio.client import connect

        kwargs = _connect_kwargs(opts.compression, opts.open_timeout)
        text_or_bytes = _payload(opts.size, opts.binary)

        def open_one() -> Any:
            return connect(opts.url, **kwargs)

        async def drive(conns: list[Any], start: float, end: float) -> list[ConnectionStats]:
            stats = [ConnectionStats() for _ in conns]
            await asyncio.gather(*(_pump(ws, text_or_bytes, start, end, s) for ws, s in zip(conns, stats, strict=True)))
            return stats

        def close(conn: Any) -> Any:
            return conn.close()

    opened = await asyncio.gather(*(open_one() for _ in range(opts.connections)), return_exceptions=True)
    conns = [c for c in opened if not isinstance(c, BaseException)]
    failures = [c for c in opened if isinstance(c, BaseException)]
    try:
        if failures:
            return _open_error(failures, len(opened))
        start = _wait_for_start()
        if start is None:
            return {"error": "aborted before the start"}
        end = start + opts.duration
        cpu_task = asyncio.ensure_future(_window_cpu(start, end))
        stats = await drive(conns, start, end)
        return _result(stats, await cpu_task)
    finally:
        await asyncio.gather(*(close(conn) for conn in conns), return_exceptions=True)


# --------------------------------------------------------------------------------------------
# The raw client (--client raw): RFC 6455 by hand on asyncio.Protocol
# --------------------------------------------------------------------------------------------
#: RFC 6455's GUID for Sec-WebSocket-Accept.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Largest upgrade response head the raw client reads.
MAX_RESPONSE_HEAD = 64 * 1024


class HandshakeError(Exception):
    """The server did not accept the upgrade the way RFC 6455 requires."""


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (RFC 6455 section 5.3), as one big-integer XOR."""
    size = len(payload)
    if not size:
        return b""
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def _frame_head(opcode: int, size: int, masked: bool) -> bytes:
    """FIN + opcode, then the 7-, 16- or 64-bit payload length (mask bit set when ``masked``)."""
    mask_bit = 0x80 if masked else 0
    if size < 126:
        return bytes((0x80 | opcode, mask_bit | size))
    if size < 1 << 16:
        return bytes((0x80 | opcode, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((0x80 | opcode, mask_bit | 127)) + size.to_bytes(8, "big")


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One unfragmented frame as a client must send it: masked (with a random key unless ``key``)."""
    key = os.urandom(4) if key is None else key
    return _frame_head(opcode, len(payload), masked=True) + key + mask_payload(payload, key)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked frame: what a server's echo of ``payload`` normally looks like."""
    return _frame_head(opcode, len(payload), masked=False) + payload


def accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to Sec-WebSocket-Key ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


def upgrade_request(netloc: str, target: str, key: str) -> bytes:
    """The HTTP/1.1 upgrade request; no extensions and no subprotocol offered."""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode("ascii")


def check_upgrade_response(head: bytes, key: str) -> None:
    """Raise HandshakeError unless ``head`` (status line and headers, no blank line) accepts ``key``."""
    status, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status.partition(" ")
    if not version.startswith("HTTP/1.") or rest.split(" ", 1)[0] != "101":
        raise HandshakeError(f"server answered {status!r}, not 101 Switching Protocols")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HandshakeError(f"malformed header line {line!r}")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"Upgrade: {headers.get('upgrade')!r}, not websocket")
    if "upgrade" not in (token.strip().lower() for token in headers.get("connection", "").split(",")):
        raise HandshakeError(f"Connection: {headers.get('connection')!r} lacks upgrade")
    if headers.get("sec-websocket-accept") != accept_value(key):
        raise HandshakeError(f"wrong Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError(f"extensions none was offered: {headers['sec-websocket-extensions']!r}")


class RawConnection(asyncio.Protocol):
    """One connection of the raw client.

    After the upgrade, ``run`` sends the pre-built masked frame; every echo that arrives (in
    ``data_received``, no coroutine or future per message) is checked and timed and the frame is
    sent again, until the window ends or the connection closes. ``done`` then resolves.
    """

    def __init__(self, netloc: str, target: str, payload: bytes, binary: bool) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()  # the server accepted the upgrade
        self.done: asyncio.Future[None] = loop.create_future()  # no more round trips
        self.lost: asyncio.Future[None] = loop.create_future()  # connection_lost ran
        self.stats = ConnectionStats()
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._request = upgrade_request(netloc, target, self._key)
        self._transport: asyncio.Transport | None = None
        self._head: bytearray | None = bytearray()  # the response head; None once the upgrade is done
        self._buffer = bytearray()  # bytes of an incomplete frame
        self._opcode = OP_BINARY if binary else OP_TEXT
        self._payload = payload
        self._frame = client_frame(self._opcode, payload)  # masked once, with one random key
        self._echo = server_frame(self._opcode, payload)  # the whole echo frame, for a quick comparison
        self._fragments: list[bytes] = []
        self._fragments_opcode = 0
        self._waiting = False  # an echo is due
        self._closing = False  # we closed at the end: closes and losses no longer count
        self._sent = self._start = self._end = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._handshake(data)
        elif not self._buffer and data == self._echo:
            self._echoed(True)  # the usual case: exactly one whole echo frame in one read
        else:
            self._buffer += data
            self._parse()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError(f"connection closed during the handshake ({exc or 'EOF'})"))
        self._closed(f"connection lost without a close frame: {exc or 'EOF'}")
        if not self.lost.done():
            self.lost.set_result(None)

    # -- the round trips -----------------------------------------------------------------------
    def run(self, start: float, end: float) -> None:
        """Round trips until the monotonic instant ``end``; those inside [start, end] are recorded."""
        self._start, self._end = start, end
        if self.stats.closed is None:
            self._send()

    def _send(self) -> None:
        sent = time.monotonic()
        if sent >= self._end:
            self._finish()
            return
        assert self._transport is not None
        self._sent = sent
        self._waiting = True
        self._transport.write(self._frame)

    def _echoed(self, matches: bool) -> None:
        received = time.monotonic()
        if not self._waiting:  # a message nobody asked for
            self.stats.mismatches += 1
            return
        self._waiting = False
        if not matches:
            self.stats.mismatches += 1
        sent = self._sent
        if sent >= self._start and received <= self._end:
            self.stats.latencies_s.append(received - sent)
        self._send()

    def _finish(self) -> None:
        self._waiting = False
        self.stats.round_trips = len(self.stats.latencies_s)
        if not self.done.done():
            self.done.set_result(None)

    def _closed(self, reason: str) -> None:
        """The connection ended early (close frame, loss, protocol error): count it and stop."""
        if not self._closing and self.opened.done() and self.stats.closed is None:
            self.stats.closed = reason
        self._finish()

    # -- handshake and frames ------------------------------------------------------------------
    def _handshake(self, data: bytes) -> None:
        assert self._head is not None and self._transport is not None
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._fail_open(HandshakeError("response head too large"))
            return
        head, rest = bytes(self._head[:end]), self._head[end + 4 :]
        self._head = None
        try:
            check_upgrade_response(head, self._key)
        except HandshakeError as exc:
            self._fail_open(exc)
            return
        self.opened.set_result(None)
        if rest:
            self._buffer += rest
            self._parse()

    def _fail_open(self, exc: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        assert self._transport is not None
        self._transport.abort()

    def _parse(self) -> None:
        """Handle every complete frame in the buffer; leave a partial one there for the next read."""
        buf = self._buffer
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            if second & 0x80:
                self._protocol_error("masked frame from the server")
                return
            if first & 0x70:
                self._protocol_error("reserved bits set though no extension was negotiated")
                return
            size, offset = second & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, offset = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, offset = int.from_bytes(buf[2:10], "big"), 10
            stop = offset + size
            if len(buf) < stop:
                return
            payload = bytes(buf[offset:stop])
            del buf[:stop]
            self._frame_received(bool(first & 0x80), first & 0x0F, payload)

    def _frame_received(self, fin: bool, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        if opcode == OP_CLOSE:
            self._close_received(payload)
            return
        if opcode == OP_PING:
            self._transport.write(client_frame(OP_PONG, payload))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CONTINUATION:
            if not self._fragments:
                self._protocol_error("continuation frame outside a fragmented message")
                return
            self._fragments.append(payload)
            if not fin:
                return
            opcode, payload, self._fragments = self._fragments_opcode, b"".join(self._fragments), []
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments:
                self._protocol_error("new message inside a fragmented one")
                return
            if not fin:
                self._fragments_opcode, self._fragments = opcode, [payload]
                return
        else:
            self._protocol_error(f"unknown opcode {opcode:#x}")
            return
        self._echoed(opcode == self._opcode and payload == self._payload)

    def _close_received(self, payload: bytes) -> None:
        assert self._transport is not None
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        reason = payload[2:].decode("utf-8", "replace")
        if not self._closing:
            self._transport.write(client_frame(OP_CLOSE, payload[:2]))  # answer with the same code
        self._closed(f"connection closed: received close frame {code} {reason!r}".rstrip())
        self._buffer.clear()
        self._transport.close()

    def _protocol_error(self, what: str) -> None:
        assert self._transport is not None
        self._closed(f"protocol error: {what}")
        self._buffer.clear()
        self._transport.abort()

    # -- the end -------------------------------------------------------------------------------
    async def close(self, timeout: float) -> None:
        """Send a close frame (1000) and wait up to ``timeout`` s for the server to end the connection."""
        if self._transport is None or self.lost.done():
            return
        if self.opened.done() and not self.opened.cancelled() and self.opened.exception() is None:
            if not self._closing:
                self._closing = True
                self._transport.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        self._transport.abort()

    def abort(self) -> None:
        if not self.opened.done():
            self.opened.cancel()  # nobody will await it: no "exception never retrieved" later
        if self._transport is not None:
            self._transport.abort()


async def open_raw(url: str, payload: bytes, binary: bool, timeout: float) -> RawConnection:
    """Connect to ``url`` (ws:// only) and do the upgrade handshake within ``timeout`` seconds."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme != "ws" or host is None:
        raise ValueError(f"the raw client speaks ws:// only, not {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = RawConnection(parts.netloc, target, payload, binary)
    loop = asyncio.get_running_loop()

    async def handshake() -> None:
        await loop.create_connection(lambda: conn, host, parts.port or 80)
        await conn.opened

    try:
        await asyncio.wait_for(handshake(), timeout)
    except BaseException:
        conn.abort()
        raise
    return conn


def client_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_ws.py client", description="One load-generator process (internal).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--compression", action="store_true")
    parser.add_argument("--client", choices=CLIENTS, default="raw")
    parser.add_argument("--open-timeout", type=float, default=5)
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--out", required=True, help="file the final JSON result is written to")
    opts = parser.parse_args(argv)
    if opts.client == "raw" and opts.compression:
        parser.error(COMPRESSION_NEEDS_WEBSOCKETS)
    result = run_coroutine(client(opts), opts.loop)
    Path(opts.out).write_text(json.dumps(result))
    if result.get("error"):
        print(json.dumps(result), flush=True)  # the parent is still waiting for the ready line
    return 0


def resolve_loop(loop: str) -> str:
    if loop == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return loop


def run_coroutine(coro: Any, loop: str) -> Any:
    if resolve_loop(loop) == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
async def _check_echo(url: str, compression: bool, open_timeout: float) -> tuple[str | None, str]:
    """(None, extensions) if the server accepts a WebSocket and echoes text as text and bytes as bytes.

    ``extensions`` is the server's Sec-WebSocket-Extensions answer ("" when none was negotiated),
    which shows whether ``--compression`` really turned permessage-deflate on.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    try:
        ws = await connect(url, **_connect_kwargs(compression, open_timeout))
    except Exception as exc:
        return describe_failure(exc), ""
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""
    try:
        for message in ("echo check", b"echo\x00check"):
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), open_timeout)
            if reply != message:
                return f"echo mismatch: sent {message!r}, got {reply!r}", extensions
    except (ConnectionClosed, TimeoutError) as exc:
        return f"echo failed: {type(exc).__name__}: {exc}", extensions
    finally:
        with contextlib.suppress(Exception):
            await ws.close()
    return None, extensions


def check_echo(url: str, compression: bool, open_timeout: float) -> tuple[str | None, str]:
    return asyncio.run(_check_echo(url, compression, open_timeout))


@dataclass
class WsRun:
    round: int
    server: str
    error: str | None = None
    extensions: str = ""
    messages_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    round_trips: int = 0
    mismatches: int = 0
    closed_connections: int = 0
    client_cpu_pct: float | None = None  # all clients together, % of one core
    client_cpu_pcts: list[float] = field(default_factory=list)
    server_cpu_pct: float | None = None
    server_core_pct: float | None = None  # how busy the server's pinned core(s) were, softirq included
    client_core_pct: float | None = None  # the same for the clients' core(s)
    other_cpu_pct: float | None = None  # other processes' user+system CPU in the window, % of one core
    peak_rss_mib: float | None = None
    loadavg_before: float | None = None
    idle_busy_pct: float | None = None
    loadavg_after: float | None = None


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Clients:
    """The ``--clients`` load-generator processes of one measurement."""

    def __init__(self, args: argparse.Namespace, url: str, client_cpus: list[str | None], workdir: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.outs: list[Path] = []
        self.logs: list[IO[str]] = []
        for i, connections in enumerate(split(args.connections, args.clients)):
            out = workdir / f"client-{i}.json"
            argv = [
                sys.executable, str(Path(__file__).resolve()), "client", "--url", url,
                "--connections", str(connections), "--size", str(args.size), "--duration", str(args.duration),
                "--open-timeout", str(args.open_timeout), "--loop", args.client_loop, "--client", args.client,
                "--out", str(out),
            ]  # fmt: skip
            argv += ["--binary"] * args.binary + ["--compression"] * args.compression
            log = (workdir / f"client-{i}.log").open("w+")
            self.logs.append(log)
            self.outs.append(out)
            cpu = client_cpus[i % len(client_cpus)]
            self.procs.append(
                subprocess.Popen(
                    pinned(cpu, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
                )
            )

    def wait_ready(self) -> str | None:
        """None once every client has its connections open, else the first client's error."""
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None
            line = proc.stdout.readline()  # each client answers within --open-timeout plus its start-up
            try:
                message = json.loads(line)
            except ValueError:
                return f"client {i} failed: {line.strip() or self._log_tail(i)}"
            if message.get("error"):
                return str(message["error"])
        return None

    def start(self, at: float) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{at!r}\n")
            proc.stdin.flush()

    def results(self, timeout: float) -> list[dict[str, Any]]:
        results = []
        for i, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                results.append(json.loads(self.outs[i].read_text()))
            except (OSError, ValueError):
                results.append({"error": f"client {i} exited {proc.returncode} without a result: {self._log_tail(i)}"})
        return results

    def _log_tail(self, i: int) -> str:
        self.logs[i].flush()
        self.logs[i].seek(0)
        return self.logs[i].read()[-2000:].strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    assert proc.stdin is not None
                    proc.stdin.close()  # an empty line: the client aborts and closes its connections
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for log in self.logs:
            log.close()


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's CPU lines: ``cpu`` (all) and ``cpuN`` -> jiffies (user nice system idle iowait irq softirq steal)."""
    times: dict[str, list[int]] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu"):
                name, *values = line.split()
                times[name] = [int(v) for v in values[:8]]
    return times


def _delta(before: dict[str, list[int]], after: dict[str, list[int]], name: str) -> list[int] | None:
    if name not in before or name not in after:
        return None
    return [a - b for a, b in zip(after[name], before[name], strict=True)]


def cores_busy_pct(before: dict[str, list[int]], after: dict[str, list[int]], cpus: set[int] | None) -> float | None:
    """How busy the CPUs ``cpus`` were between two ``cpu_times()``, in % of their capacity.

    Interrupt and softirq time count as busy: on loopback much of the TCP work runs in softirq on
    the sending or receiving core and is charged to no process, so a process's own CPU understates
    how full its core is.
    """
    busy = total = 0
    for cpu in cpus or ():
        delta = _delta(before, after, f"cpu{cpu}")
        if delta is None:
            return None
        busy += delta[0] + delta[1] + delta[2] + delta[5] + delta[6]  # user nice system irq softirq
        total += sum(delta)
    return 100.0 * busy / total if total > 0 else None


def others_cpu_pct(
    before: dict[str, list[int]], after: dict[str, list[int]], seconds: float, ours: float
) -> float | None:
    """User + system CPU of every *other* process over ``seconds``, in % of one core."""
    delta = _delta(before, after, "cpu")
    if delta is None or seconds <= 0:
        return None
    machine = 100.0 * (delta[0] + delta[1] + delta[2]) / os.sysconf("SC_CLK_TCK") / seconds
    return max(0.0, machine - ours)


def _sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.monotonic()))


def measure(
    args: argparse.Namespace,
    rnd: int,
    name: str,
    server_cpu: str | None,
    client_cpus: list[str | None],
    command: bench.CommandBuilder,
) -> WsRun:
    server_cores = None if server_cpu is None else cpu_set(server_cpu)
    client_cores = None if None in client_cpus else set().union(*(cpu_set(c) for c in client_cpus if c is not None))
    run = WsRun(round=rnd, server=name)
    with running_server(name, server_cpu, command) as (proc, port):
        probe = ServerProbe(proc.pid)
        url = f"ws://127.0.0.1:{port}{WS_PATH}"
        run.error, run.extensions = check_echo(url, args.compression, args.open_timeout)
        if run.error is None:
            time.sleep(args.cooldown)
            run.idle_busy_pct = wait_until_quiet(args.wait_quiet)
            run.loadavg_before = loadavg()
            with tempfile.TemporaryDirectory(prefix="bench_ws-") as tmp:
                clients = Clients(args, url, client_cpus, Path(tmp))
                try:
                    run.error = clients.wait_ready()
                    if run.error is None:
                        start = time.monotonic() + args.warmup
                        end = start + args.duration
                        clients.start(start)
                        _sleep_until(start)
                        cpu_before, times_before = probe.cpu_seconds(), cpu_times()
                        _sleep_until(end)
                        cpu_after, times_after = probe.cpu_seconds(), cpu_times()
                        if cpu_before is not None and cpu_after is not None:
                            run.server_cpu_pct = 100.0 * (cpu_after - cpu_before) / args.duration
                        run.server_core_pct = cores_busy_pct(times_before, times_after, server_cores)
                        run.client_core_pct = cores_busy_pct(times_before, times_after, client_cores)
                        collect(run, clients.results(timeout=args.open_timeout + 30), args.duration)
                        ours = (run.server_cpu_pct or 0.0) + (run.client_cpu_pct or 0.0)
                        run.other_cpu_pct = others_cpu_pct(times_before, times_after, args.duration, ours)
                finally:
                    clients.close()
            run.loadavg_after = loadavg()
        run.peak_rss_mib = probe.finish()
    if run.error is not None:
        print(f"  round {rnd + 1}  {name:<9} {run.error}", flush=True)
    else:
        print(
            f"  round {rnd + 1}  {name:<9} {run.messages_per_s:>10,.0f} msg/s"
            f"  p50 {fmt(run.p50_ms, '.2f')} ms  p99 {fmt(run.p99_ms, '.2f')} ms"
            f"  mismatches {run.mismatches}  closed {run.closed_connections}"
            f"  server cpu {fmt(run.server_cpu_pct, '.0f')}% (core {fmt(run.server_core_pct, '.0f')}%)"
            f"  client cpu {fmt(run.client_cpu_pct, '.0f')}% (core {fmt(run.client_core_pct, '.0f')}%)"
            f"  others {fmt(run.other_cpu_pct, '.0f')}%  rss {fmt(run.peak_rss_mib, '.1f')} MiB"
            f"  load {fmt(run.loadavg_before, '.2f')}->{fmt(run.loadavg_after, '.2f')}"
            f"  busy before {fmt(run.idle_busy_pct, '.0f')}%"
            + (f"  extensions: {run.extensions or 'none'}" if args.compression else ""),
            flush=True,
        )
    return run


def collect(run: WsRun, results: list[dict[str, Any]], duration: float) -> None:
    """Merge the clients' results into ``run``."""
    errors = [str(r["error"]) for r in results if r.get("error")]
    if errors:
        run.error = errors[0]
        return
    latencies = sorted(x for r in results for x in r["latencies_us"])
    run.round_trips = sum(r["round_trips"] for r in results)
    run.messages_per_s = run.round_trips / duration
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    run.p50_ms = None if p50 is None else p50 / 1000
    run.p99_ms = None if p99 is None else p99 / 1000
    run.mismatches = sum(r["mismatches"] for r in results)
    run.closed_connections = sum(len(r["closed"]) for r in results)
    run.client_cpu_pcts = [100.0 * r["cpu_s"] / duration for r in results]
    run.client_cpu_pct = sum(run.client_cpu_pcts)
    if run.round_trips == 0:
        closed = [c for r in results for c in r["closed"]]
        run.error = "no round trip completed" + (f" ({closed[0]})" if closed else "")


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarize(runs: list[WsRun], servers: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in servers:
        mine = [r for r in runs if r.server == name]
        ok = [r for r in mine if r.error is None]
        rss = [r.peak_rss_mib for r in mine if r.peak_rss_mib is not None]
        row: dict[str, Any] = {
            "server": name,
            "rounds": len(ok),
            "failed_rounds": len(mine) - len(ok),
            "error": next((r.error for r in mine if r.error is not None), None),
            "peak_rss_mib": max(rss) if rss else None,
            "extensions": next((r.extensions for r in ok), None),
        }
        if ok:
            rate = [r.messages_per_s for r in ok]
            p50 = [r.p50_ms for r in ok if r.p50_ms is not None]
            p99 = [r.p99_ms for r in ok if r.p99_ms is not None]
            server_cpu = [r.server_cpu_pct for r in ok if r.server_cpu_pct is not None]
            client_cpu = [r.client_cpu_pct for r in ok if r.client_cpu_pct is not None]
            other_cpu = [r.other_cpu_pct for r in ok if r.other_cpu_pct is not None]
            server_core = [r.server_core_pct for r in ok if r.server_core_pct is not None]
            client_core = [r.client_core_pct for r in ok if r.client_core_pct is not None]
            # Messages per second of the server's core being busy (softirq included): the server's
            # own efficiency, meaningful even when the client is the bottleneck.
            per_core = [100.0 * r.messages_per_s / r.server_core_pct for r in ok if r.server_core_pct]
            row.update(
                messages_per_core_s=statistics.median(per_core) if per_core else None,
                messages_per_s=statistics.median(rate),
                messages_per_s_min=min(rate),
                messages_per_s_max=max(rate),
                p50_ms=statistics.median(p50) if p50 else None,
                p99_ms=statistics.median(p99) if p99 else None,
                server_cpu_pct=statistics.median(server_cpu) if server_cpu else None,
                client_cpu_pct=statistics.median(client_cpu) if client_cpu else None,
                other_cpu_pct=statistics.median(other_cpu) if other_cpu else None,
                server_core_pct=statistics.median(server_core) if server_core else None,
                client_core_pct=statistics.median(client_core) if client_core else None,
                mismatches=sum(r.mismatches for r in ok),
                closed_connections=sum(r.closed_connections for r in ok),
            )
        rows.append(row)
    base = next((r.get("messages_per_s") for r in rows if r["server"] == BASELINE), None)
    base_core = next((r.get("messages_per_core_s") for r in rows if r["server"] == BASELINE), None)
    for row in rows:
        median = row.get("messages_per_s")
        row["vs_uvicorn"] = median / base if median is not None and base else None
        core_rate = row.get("messages_per_core_s")
        row["per_core_vs_uvicorn"] = core_rate / base_core if core_rate is not None and base_core else None
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table (readable as plain text too)."""
    header = (
        "| server | msg/s (median) | min–max | p50 ms | p99 ms | vs uvicorn | msg per busy server core-s "
        "| per core vs uvicorn | peak RSS MiB "
        "| server CPU / core | client CPU / core | others CPU | mismatches/closed | failed rounds |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        failed = f"{row['failed_rounds']}" + (f" ({row['error']})" if row["error"] else "")
        if row.get("messages_per_s") is None:
            lines.append(
                f"| {row['server']} | - | - | - | - | - | - | - | {fmt(row['peak_rss_mib'], '.1f')} "
                f"| - | - | - | - | {failed} |"
            )
            continue
        ratio = row["vs_uvicorn"]
        lines.append(
            f"| {row['server']} | {row['messages_per_s']:,.0f} "
            f"| {row['messages_per_s_min']:,.0f}–{row['messages_per_s_max']:,.0f} "
            f"| {fmt(row['p50_ms'], '.2f')} | {fmt(row['p99_ms'], '.2f')} "
            f"| {'-' if ratio is None else f'{ratio:.2f}×'} | {fmt(row['messages_per_core_s'], ',.0f')} "
            f"| {fmt(row['per_core_vs_uvicorn'], '.2f')}× | {fmt(row['peak_rss_mib'], '.1f')} "
            f"| {fmt(row['server_cpu_pct'], '.0f')} / {fmt(row['server_core_pct'], '.0f')} % "
            f"| {fmt(row['client_cpu_pct'], '.0f')} / {fmt(row['client_core_pct'], '.0f')} % "
            f"| {fmt(row['other_cpu_pct'], '.0f')} % "
            f"| {row['mismatches']}/{row['closed_connections']} | {failed} |"
        )
    return "\n".join(lines)


def cpu_set(cpu_list: str) -> set[int]:
    """The CPUs a taskset list such as ``1``, ``1,3`` or ``2-5`` names."""
    cpus: set[int] = set()
    for part in cpu_list.split(","):
        low, _, high = part.strip().partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def machine_info() -> dict[str, Any]:
    """bench.machine() without wrk (which this benchmark does not need), with websockets' version."""
    return bench.machine(wrk=False, dists=("websockets",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="WebSocket echo benchmark: Polycorn against uvicorn and granian with a Python client.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="The load generator itself runs as `bench_ws.py client ...` (internal).",
    )
    commands = server_commands(argparse.Namespace(polycorn_args="", uvicorn_ws="", uvicorn_args="", granian_args=""))
    bench.add_round_options(parser, rounds_per="server", duration=8, measured="measurement window")
    parser.add_argument("--connections", type=int, default=32, help="WebSocket connections in all (split over clients)")
    parser.add_argument("--size", type=int, default=32, help="message size in bytes (characters of ASCII text)")
    parser.add_argument("--binary", action="store_true", help="send bytes messages instead of text")
    parser.add_argument("--compression", action="store_true", help="offer permessage-deflate (off by default)")
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="load generator: a minimal RFC 6455 client (raw, cheap) or the websockets library's (needed for"
        " --compression)",
    )
    parser.add_argument(
        "--client-loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="client event loop"
    )
    parser.add_argument("--open-timeout", type=float, default=5, help="seconds allowed for a WebSocket handshake")
    parser.add_argument("--servers", type=csv_choices(commands), default=list(commands), help="comma-separated")
    parser.add_argument("--server-cpu", default="0", help="CPU list for the server (taskset -c)")
    parser.add_argument(
        "--client-cpu",
        default="1",
        help="CPU lists for the clients, comma-separated: client i gets entry i modulo their number (taskset -c)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--polycorn-args",
        default="",
        help="extra polycorn options, e.g. --polycorn-args='--ws websockets' (note the =)",
    )
    parser.add_argument("--uvicorn-ws", default="websockets", help="uvicorn --ws implementation")
    parser.add_argument("--uvicorn-args", default="", help="extra uvicorn options")
    parser.add_argument("--granian-args", default="", help="extra granian options")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("websockets") is None:
        print("the client needs websockets: pip install websockets", file=sys.stderr)
        return 2
    if args.client == "raw" and args.compression:
        print(COMPRESSION_NEEDS_WEBSOCKETS, file=sys.stderr)
        return 2
    if args.clients < 1 or args.connections < args.clients:
        print("need --clients >= 1 and --connections >= --clients", file=sys.stderr)
        return 2
    commands = server_commands(args)
    servers = []
    for name in args.servers:
        if importlib.util.find_spec(commands[name].module) is None:
            print(f"skipping {name}: not installed (pip install {name})", file=sys.stderr)
        else:
            servers.append(name)
    if not servers:
        print("no server to benchmark", file=sys.stderr)
        return 2
    server_cpu: str | None = args.server_cpu
    client_cpus: list[str | None] = [c.strip() for c in args.client_cpu.split(",") if c.strip()]
    client_capacity = len(set().union(*(cpu_set(c) for c in client_cpus if c is not None)))
    if args.no_pin:
        server_cpu, client_cpus = None, [None]
    elif shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("warning: taskset missing or fewer than 2 CPUs: running unpinned", file=sys.stderr)
        server_cpu, client_cpus = None, [None]
    if client_cpus == [None]:
        client_capacity = max(1, (os.cpu_count() or 1) - (0 if server_cpu is None else 1))
    client_capacity = min(client_capacity, args.clients)  # one process uses one core at most

    info = machine_info()
    print(
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['system']}, {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        flush=True,
    )
    print(
        f"{args.rounds} rounds x {len(servers)} servers, {args.duration:g}s each after {args.warmup:g}s warm-up; "
        f"{args.connections} connections over {args.clients} {args.client} client process(es) "
        f"({resolve_loop(args.client_loop)}), "
        f"{args.size}-byte {'binary' if args.binary else 'text'} messages, "
        f"compression {'on' if args.compression else 'off'}; server on CPU {server_cpu}, clients on CPU "
        f"{','.join(str(c) for c in client_cpus)}",
        flush=True,
    )
    runs: list[WsRun] = []
    for rnd in range(args.rounds):
        shift = rnd % len(servers)
        for name in servers[shift:] + servers[:shift]:  # rotate the order every round
            try:
                runs.append(measure(args, rnd, name, server_cpu, client_cpus, commands[name].command))
            except RuntimeError as exc:  # bench.running_server: the server did not start
                print(f"  round {rnd + 1}  {name:<9} did not start: {exc}", file=sys.stderr, flush=True)
                runs.append(WsRun(round=rnd, server=name, error="server did not start"))

    rows = summarize(runs, servers)
    print()
    print(render_table(rows))
    capacity_pct = 100.0 * client_capacity

    def saturated(core_pct: float | None, cpu_pct: float | None, capacity: float) -> bool:
        # A pinned core's busy time (softirq included) where known, else the processes' own CPU.
        return (core_pct if core_pct is not None else 100.0 * (cpu_pct or 0.0) / capacity) >= 90

    client_bound = [
        r["server"] for r in rows if saturated(r.get("client_core_pct"), r.get("client_cpu_pct"), capacity_pct)
    ]
    if client_bound:
        print(
            f"\nnote: the clients' core(s) were >= 90 % busy for {', '.join(client_bound)}: the load generator is the"
            " bottleneck there, so those figures are a lower bound (the server's CPU / core shows its headroom)."
        )
    starved = [
        f"round {r.round + 1} {r.server} (server core {fmt(r.server_core_pct, '.0f')} %,"
        f" client core {fmt(r.client_core_pct, '.0f')} %, others {fmt(r.other_cpu_pct, '.0f')} %)"
        for r in runs
        if r.error is None
        and not saturated(r.server_core_pct, r.server_cpu_pct, 100.0)
        and not saturated(r.client_core_pct, r.client_cpu_pct, capacity_pct)
    ]
    if starved:
        print(
            "\nnote: neither the server's nor the clients' core was >= 90 % busy in "
            + ", ".join(starved)
            + ". Where other processes took CPU ('others'), the machine was not quiet; where they did not, the"
            " round trips are bound by latency (wake-ups, thread hand-offs) and more --connections may help."
        )
    if args.json:
        payload = {
            "command": " ".join([Path(sys.argv[0]).as_posix(), *argv]),
            "machine": info,
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "clients": args.clients,
                "client": args.client,
                "client_loop": resolve_loop(args.client_loop),
                "size": args.size,
                "binary": args.binary,
                "compression": args.compression,
                "server_cpu": server_cpu,
                "client_cpus": client_cpus,
                "servers": {name: commands[name].command(0)[1:] for name in servers},
            },
            "summary": rows,
            "runs": [asdict(r) for r in runs],
        }
        bench.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
