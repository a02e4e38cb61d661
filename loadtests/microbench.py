"""Micro-benchmark of the per-request path: parser -> connection -> ASGI cycle -> response bytes.

No sockets: a fake transport collects the bytes, so the number measures Polycorn's own work per
request (plus the event loop's task step). Not part of the test run; use it to catch regressions
commit by commit:

    python loadtests/microbench.py                  # µs per request for each parser/loop
    python loadtests/microbench.py --profile        # cProfile of the httptools + uvloop path
    valgrind --tool=callgrind python loadtests/microbench.py --requests 20000 --only httptools-uvloop
        # instruction counts: repeatable on a noisy machine
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

from polycorn import Config
from polycorn.service import HttpService

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class Transport:
    """Just enough of asyncio.Transport for a keep-alive connection."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


async def drive(parser: str, requests: int) -> float:
    loop = asyncio.get_running_loop()
    config = Config(app=app, http=parser, access_log=False, lifespan="off")  # type: ignore[arg-type]
    service = HttpService(config, app, loop)
    conn = service.protocol_factory()
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    start = time.perf_counter()
    for _ in range(requests):
        conn.data_received(REQUEST)
        while conn.active is not None:
            await asyncio.sleep(0)
    await asyncio.sleep(0)  # the last response leaves when the loop's pass ends (polycorn.outbox)
    elapsed = time.perf_counter() - start
    assert transport.written == requests, (transport.written, requests)
    service.close()
    return elapsed


def run(parser: str, loop_name: str, requests: int) -> float:
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(drive(parser, requests))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="one stack, e.g. httptools-uvloop")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    stacks = [("httptools", "uvloop"), ("httptools", "asyncio"), ("h11", "uvloop"), ("h11", "asyncio")]
    if args.only:
        stacks = [tuple(args.only.split("-"))]  # type: ignore[list-item]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(*stacks[0], args.requests)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    for http, loop_name in stacks:
        best = min(run(http, loop_name, args.requests) for _ in range(args.rounds))
        print(
            f"{http:>9}-{loop_name:<8} {best / args.requests * 1e6:7.2f} µs/request  ({args.requests / best:,.0f} req/s)"
        )


if __name__ == "__main__":
    main()
