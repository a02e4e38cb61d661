#!/usr/bin/env python3
"""Memory per idle connection: keep-alive HTTP and open WebSockets, Polycorn next to uvicorn.

Why: a server that holds many quiet clients (keep-alive pools of proxies, dashboards with a
WebSocket each) pays for each one in memory; the number belongs next to req/s.

How: each server runs ``loadtests/bench_app.py`` with one worker (``bench.running_server``, with
``--timeout-keep-alive`` raised so that nothing is closed during the measurement). After a warm-up
of a few connections, the script reads the server's RSS (process tree), opens ``--connections``
connections of one kind and leaves them idle (HTTP: one ``GET /`` each, then silence; WebSocket:
the handshake and one echo, then silence), reads RSS again and reports (after - before) /
connections. One command::

    python loadtests/idle_memory.py --connections 2000 --servers polycorn,uvicorn

Linux only (/proc). The client side is this process (raw sockets for HTTP, the websockets client
for WebSockets), so keep ``--connections`` under the open-files limit (``ulimit -n``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

KEEP_ALIVE = "600"
COMMANDS: dict[str, bench.CommandBuilder] = {
    "polycorn": lambda port: bench.polycorn_command(
        port, ["--timeout-keep-alive", KEEP_ALIVE, "--ws-ping-interval", "0"]
    ),
    "uvicorn": lambda port: bench.uvicorn_command(
        port, ["--timeout-keep-alive", KEEP_ALIVE, "--ws", "websockets", "--ws-ping-interval", "0"]
    ),
}


def rss_mib(pid: int) -> float:
    """Current resident memory of the process tree (VmRSS summed), in MiB."""
    total = 0
    for p in bench.process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def open_http(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        socks.append(s)
    for s in socks:  # every response in, so each connection is idle on the server
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"Hello, world!"):
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the warm-up request")
            data += chunk
    return socks


async def open_ws(port: int, count: int) -> list[Any]:
    from websockets.asyncio.client import connect

    conns = []
    for _ in range(count):
        ws = await connect(f"ws://127.0.0.1:{port}/ws", compression=None, ping_interval=None, max_queue=1)
        await ws.send("x")
        assert await ws.recv() == "x"
        conns.append(ws)
    return conns


async def close_ws(conns: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


def settle(pid: int) -> float:
    """RSS once it stops moving (the server may still be finishing allocations)."""
    last = rss_mib(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_mib(pid)
        if abs(now - last) < 0.05:
            return now
        last = now
    return last


def measure(name: str, kind: str, count: int) -> dict[str, Any]:
    with bench.running_server(name, None, COMMANDS[name]) as (proc, port):
        warm = open_http(port, 20)
        for s in warm:
            s.close()
        before = settle(proc.pid)
        if kind == "http":
            socks = open_http(port, count)
            after = settle(proc.pid)
            for s in socks:
                s.close()
        else:
            loop = asyncio.new_event_loop()
            conns = loop.run_until_complete(open_ws(port, count))
            after = settle(proc.pid)
            loop.run_until_complete(close_ws(conns))
            loop.close()
    return {
        "server": name,
        "kind": kind,
        "connections": count,
        "rss_before_mib": round(before, 2),
        "rss_after_mib": round(after, 2),
        "kib_per_connection": round((after - before) * 1024 / count, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--servers", default="polycorn,uvicorn")
    parser.add_argument("--kinds", default="http,ws")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for _ in range(args.rounds):
        for kind in args.kinds.split(","):
            for name in args.servers.split(","):
                row = measure(name, kind, args.connections)
                print(f"  {name:9} {kind:4} {row['kib_per_connection']:7.2f} KiB/connection  ({row})")
                results.append(row)
    print()
    print("| server | idle keep-alive HTTP | idle WebSocket |")
    print("|---|---|---|")
    for name in args.servers.split(","):
        cells = []
        for kind in ("http", "ws"):
            values = [r["kib_per_connection"] for r in results if r["server"] == name and r["kind"] == kind]
            cells.append(f"{statistics.median(values):.1f} KiB" if values else "-")
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
