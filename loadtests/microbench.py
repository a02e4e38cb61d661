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

#: The requests of each scenario; ``close`` opens a connection per request, as a client does.
SCENARIOS = {
    "get": b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n",
    "close": b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n",
    "headers": b"GET / HTTP/1.1\r\nHost: localhost:8000\r\n"
    + b"".join(b"X-Header-%d: value number %d\r\n" % (i, i) for i in range(10))
    + b"\r\n",
    "upload": b"POST /upload HTTP/1.1\r\nHost: localhost:8000\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024,
}
#: Clients at once (loadtests/bench.py runs wrk with 64).
CONNECTIONS = 16
BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class Client:
    """Sends the next request when the last response is written, as a socket's peer would.

    The requests run as a chain of event-loop callbacks, the way uvloop delivers reads: each
    response write schedules the next request (on the same connection, or, for ``close``, on a
    new one once the closed connection is gone), so the loop's pass-end work runs as it does in
    a server and nothing here awaits. Several clients run at once, as a loaded server's
    connections do, so that one pass of the loop (and its poll for I/O) serves many of them.
    """

    def __init__(self, service: HttpService, request: bytes, requests: int, reconnect: bool) -> None:
        self.service = service
        self.loop = service.loop
        self.request = request
        self.left = requests
        self.reconnect = reconnect
        self.written = 0
        self.finished = self.loop.create_future()

    def connect(self) -> None:
        conn = self.service.protocol_factory()
        conn.connection_made(Transport(self, conn))  # type: ignore[arg-type]
        self.send(conn)

    def send(self, conn: Any) -> None:
        if self.left == 0:
            self.finished.set_result(None)
            return
        self.left -= 1
        conn.data_received(self.request)

    def responded(self, conn: Any) -> None:
        self.written += 1
        if not self.reconnect:
            self.loop.call_soon(self.send, conn)


class Transport:
    """Just enough of asyncio.Transport; like uvloop's, it lets go of its protocol once closed."""

    def __init__(self, client: Client, protocol: Any) -> None:
        self.client = client
        self.protocol = protocol
        self.closing = False

    def write(self, data: bytes) -> None:
        self.client.responded(self.protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("127.0.0.1", 50000)
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.client.loop.call_soon(self._lost)

    def _lost(self) -> None:
        protocol, self.protocol = self.protocol, None
        protocol.connection_lost(None)
        if self.client.reconnect:
            self.client.connect()


async def drive(parser: str, requests: int, scenario: str = "get") -> float:
    loop = asyncio.get_running_loop()
    config = Config(app=app, http=parser, access_log=False, lifespan="off")  # type: ignore[arg-type]
    service = HttpService(config, app, loop)
    share, extra = divmod(requests, CONNECTIONS)
    clients = [
        Client(service, SCENARIOS[scenario], share + (i < extra), reconnect=scenario == "close")
        for i in range(CONNECTIONS)
    ]
    start = time.perf_counter()
    for client in clients:
        client.connect()
    await asyncio.gather(*(client.finished for client in clients))
    elapsed = time.perf_counter() - start
    written = sum(client.written for client in clients)
    assert written == requests, (written, requests)
    service.close()
    return elapsed


def run(parser: str, loop_name: str, requests: int, scenario: str = "get") -> float:
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(drive(parser, requests, scenario))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="one stack, e.g. httptools-uvloop")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="get")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    stacks = [("httptools", "uvloop"), ("httptools", "asyncio"), ("h11", "uvloop"), ("h11", "asyncio")]
    if args.only:
        stacks = [tuple(args.only.split("-"))]  # type: ignore[list-item]
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(*stacks[0], args.requests, args.scenario)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    for http, loop_name in stacks:
        best = min(run(http, loop_name, args.requests, args.scenario) for _ in range(args.rounds))
        print(
            f"{http:>9}-{loop_name:<8} {best / args.requests * 1e6:7.2f} µs/request  ({args.requests / best:,.0f} req/s)"
        )


if __name__ == "__main__":
    main()
