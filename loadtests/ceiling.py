#!/usr/bin/env python3
"""The ceiling for a server built on uvloop + httptools: a bare protocol, no ASGI, no app.

It answers every request, whatever its path, with the 13 bytes of ``GET /`` in
``loadtests/bench_app.py``, straight from the parser's callback: no scope, no task, no timers,
no limits. What Polycorn costs above it is the cost of being an ASGI server with its checks;
what is left below it belongs to the kernel, uvloop and llhttp. Run it as the server ``ceiling``
of ``loadtests/bench.py`` (never by default), and only for ``get`` and ``close``: for the other
scenarios it sends the same 13 bytes, so its rows would compare nothing.

    python loadtests/bench.py --scenarios get,close --servers polycorn,ceiling,granian,uvicorn
    python loadtests/ceiling.py --port 8000          # on its own

Not a server: it implements nothing of HTTP beyond what llhttp parses (no Host check, no limits,
no timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import httptools
import uvloop

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 13\r\n"
KEEP_ALIVE = _HEAD + b"\r\nHello, world!"
CLOSE = _HEAD + b"connection: close\r\n\r\nHello, world!"


class Bare(asyncio.Protocol):
    """One connection: feed llhttp, answer each complete message at once."""

    __slots__ = ("transport", "parser")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        # What every ASGI server asks for a scope's "client" and "server", so the ceiling pays it too.
        transport.get_extra_info("peername")
        transport.get_extra_info("sockname")

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(KEEP_ALIVE)
        else:
            self.transport.write(CLOSE)
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set_result, None)
    server = await loop.create_server(Bare, host, port, backlog=2048)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
