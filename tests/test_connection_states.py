"""State-machine tests of HttpConnection on a real event loop with a fake transport (no sockets).

Only what real sockets cannot reach reliably lives here: when reading pauses and resumes, when
send() waits for the transport to drain, a disconnect during receive(), the one lazily re-armed
keep-alive timer, and the order in which a protocol error on a later pipelined request is answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from polycorn import Config
from polycorn.service import HttpService

PARSERS = ["httptools", "h11"]

GET = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"


class FakeTransport(asyncio.Transport):
    """Records what the connection does to its transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.protocol: Any = None
        self.written = bytearray()
        self.writes = 0
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.closed = False
        self.aborted = False
        self.limits: dict[str, Any] = {}

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data
        self.writes += 1

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while already paused"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True
        self.resumes += 1

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # As a socket transport does: the protocol hears about it on the next loop turn.
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.1.2.3", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = {"high": high, "low": low}

    def get_write_buffer_size(self) -> int:
        return 0


class Harness:
    """One HttpService and one HttpConnection on the running loop, fed by hand."""

    def __init__(self, parser: str, app: Any, **options: Any) -> None:
        options.setdefault("access_log", False)
        self.loop = asyncio.get_running_loop()
        self.service = HttpService(Config(app=app, http=parser, **options), app, self.loop)
        self.transport = FakeTransport(self.loop)
        self.conn = self.service.protocol_factory()
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)

    def feed(self, data: bytes) -> None:
        self.conn.data_received(data)

    async def finish(self) -> None:
        if not self.transport.closed:
            self.transport.close()
        await settle()
        for task in list(self.service.tasks):
            task.cancel()
        await settle()
        self.service.close()
        assert not self.service.tasks


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str, turns: int = 2000) -> None:
    """Run the loop (no timers involved) until ``condition`` holds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"timed out waiting for: {what}")


def run(test: Callable[[], Awaitable[None]]) -> None:
    """A plain asyncio loop: its call_at is a Python method that a test can wrap."""
    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(asyncio.wait_for(test(), 30))
    finally:
        # A failed test leaves app tasks pending: end them here rather than in the garbage
        # collector, which would run their finalizers in the middle of pytest's report.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


def responses(data: bytes | bytearray) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data`` (content-length or no body)."""
    out = []
    rest = bytes(data)
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        out.append((status, rest[:length]))
        rest = rest[length:]
    return out


async def respond(send: Any, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


# -- reading pauses while a pipelined request waits ------------------------------------------
@pytest.mark.parametrize("parser", PARSERS)
def test_pipelined_request_pauses_reading_until_its_turn(parser: str) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        started: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            started.append(scope["path"])
            if scope["path"] == "/first":
                await gate.wait()
            await respond(send, scope["path"].encode())

        h = Harness(parser, app)
        h.feed(GET % b"/first" + GET % b"/second")
        await until(lambda: started == ["/first"], "first request started")
        await settle()
        # The second request waits its turn with reading paused (RFC 9112 §9.3.2: in order).
        assert started == ["/first"]
        assert not h.transport.reading and h.transport.pauses == 1 and h.conn.reading_paused
        assert h.transport.written == b""
        gate.set()
        await until(lambda: len(responses(h.transport.written)) == 2, "both responses")
        assert responses(h.transport.written) == [(200, b"/first"), (200, b"/second")]
        assert started == ["/first", "/second"]
        assert h.transport.reading and h.transport.resumes == 1 and not h.conn.reading_paused
        # Still a keep-alive connection that takes the next request.
        h.feed(GET % b"/third")
        await until(lambda: len(responses(h.transport.written)) == 3, "third response")
        assert not h.transport.closed
        await h.finish()

    run(main)


# -- reading pauses on a large buffered body ---------------------------------------------------
@pytest.mark.parametrize("parser", PARSERS)
def test_body_over_high_water_pauses_reading_until_receive(parser: str) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        got: list[dict[str, Any]] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await gate.wait()
            while True:
                message = await receive()
                got.append(message)
                if not message.get("more_body"):
                    break
            await respond(send, b"%d" % sum(len(m["body"]) for m in got))

        h = Harness(parser, app, read_high_water=1024)
        h.feed(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 5000\r\n\r\n" + b"a" * 600)
        await settle()
        assert h.transport.reading, "600 buffered bytes are below the high-water mark"
        h.feed(b"b" * 2400)
        await settle()
        assert not h.transport.reading and h.transport.pauses == 1
        gate.set()
        await until(lambda: len(got) == 1, "first receive")
        assert got[0] == {"type": "http.request", "body": b"a" * 600 + b"b" * 2400, "more_body": True}
        assert h.transport.reading and h.transport.resumes == 1, "receive() drained the buffer: reading resumes"
        h.feed(b"c" * 2000)
        await until(lambda: h.transport.written != b"", "response")
        assert [m["more_body"] for m in got] == [True, False]
        assert responses(h.transport.written) == [(200, b"5000")]
        # The last 2000 bytes went over the mark again: paused again, resumed by the next receive().
        assert h.transport.pauses == h.transport.resumes == 2 and h.transport.reading
        await h.finish()

    run(main)


# -- pause_writing / resume_writing ----------------------------------------------------------------
@pytest.mark.parametrize("parser", PARSERS)
def test_send_waits_while_writing_is_paused(parser: str) -> None:
    async def main() -> None:
        progress: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            progress.append("start")
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            progress.append("one")
            await send({"type": "http.response.body", "body": b"two", "more_body": False})
            progress.append("done")

        h = Harness(parser, app, write_high_water=8192)
        # A mark other than the transports' own 64 KiB default is handed to the transport.
        assert h.transport.limits["high"] == 8192
        h.conn.pause_writing()  # the transport's buffer is over its high-water mark
        h.feed(GET % b"/stream")
        await until(lambda: progress == ["start"], "head sent")
        await settle(50)
        # The first body part was handed to the transport, but send() has not returned.
        assert progress == ["start"]
        assert b"one" in h.transport.written
        assert h.conn.drain_waiter is not None
        h.conn.resume_writing()
        await until(lambda: progress == ["start", "one", "done"], "send() returned after resume_writing")
        # The last part leaves when the loop's pass ends (polycorn.outbox).
        await until(lambda: h.transport.written.endswith(b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"), "the rest written")
        assert h.conn.drain_waiter is None
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_disconnect_while_paused_writing_releases_send(parser: str) -> None:
    async def main() -> None:
        outcome: list[Any] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            outcome.append("returned")
            try:
                await send({"type": "http.response.body", "body": b"y", "more_body": True})
            except OSError as exc:  # ASGI 2.4: send() after a disconnect raises an OSError
                outcome.append(type(exc).__name__)

        h = Harness(parser, app)
        h.conn.pause_writing()
        h.feed(GET % b"/")
        await until(lambda: h.conn.drain_waiter is not None, "send() waiting to drain")
        h.conn.connection_lost(ConnectionResetError())
        await until(lambda: len(outcome) == 2, "app finished")
        assert outcome == ["returned", "ClientDisconnected"]
        await h.finish()

    run(main)


# -- connection_lost during receive() ------------------------------------------------------------
@pytest.mark.parametrize("parser", PARSERS)
def test_connection_lost_during_receive_yields_disconnect(parser: str) -> None:
    async def main() -> None:
        got: list[dict[str, Any]] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                got.append(message)
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return

        h = Harness(parser, app)
        h.feed(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + b"partial")
        await until(lambda: len(got) == 1, "first body part")
        assert got[0] == {"type": "http.request", "body": b"partial", "more_body": True}
        await settle()
        cycle = h.conn.active
        assert cycle is not None and cycle.waiter is not None, "receive() is waiting for more body"
        h.conn.connection_lost(None)
        await until(lambda: len(got) == 2, "receive() after the disconnect")
        assert got[1] == {"type": "http.disconnect"}
        assert h.conn not in h.service.connections
        await h.finish()
        assert h.transport.written == b""

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_receive_after_full_body_waits_for_disconnect(parser: str) -> None:
    """Long polling: once the body is read, receive() blocks until the client goes away."""

    async def main() -> None:
        got: list[dict[str, Any]] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            got.append(await receive())
            got.append(await receive())

        h = Harness(parser, app)
        h.feed(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nok")
        await until(lambda: len(got) == 1, "body")
        await settle(50)
        assert got == [{"type": "http.request", "body": b"ok", "more_body": False}]
        h.conn.connection_lost(None)
        await until(lambda: len(got) == 2, "disconnect")
        assert got[1] == {"type": "http.disconnect"}
        await h.finish()

    run(main)


# -- the keep-alive timer ------------------------------------------------------------------------
def _count_timer_arms(loop: asyncio.AbstractEventLoop, owner: Any) -> list[float]:
    """Wrap loop.call_at; return the list that collects the deadlines armed for ``owner``."""
    armed: list[float] = []
    original = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is owner():
            armed.append(when)
        return original(when, callback, *args, **kwargs)

    loop.call_at = call_at  # type: ignore[method-assign]
    return armed


@pytest.mark.parametrize("parser", PARSERS)
def test_keep_alive_timer_is_one_lazily_rearmed_handle(parser: str) -> None:
    async def main() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await respond(send, b"ok")

        loop = asyncio.get_running_loop()
        holder: list[Any] = []
        armed = _count_timer_arms(loop, lambda: holder[0] if holder else None)
        h = Harness(parser, app, timeout_keep_alive=5.0)
        holder.append(h.conn)
        # Until its first bytes, a new connection waits in the service's shared wait, with no
        # timer of its own (polycorn.first_byte): most send their request at once.
        assert h.conn.timer is None and h.conn in h.service.first_byte.waiting
        h.feed(GET % b"/0")
        await until(lambda: len(responses(h.transport.written)) == 1, "response 0")
        assert h.conn not in h.service.first_byte.waiting
        first = h.conn.timer
        assert first is not None, "an idle connection has a keep-alive deadline"
        before = len(armed)
        requests = 60
        for i in range(1, requests):
            h.feed(GET % b"/%d" % i)
            await until(lambda n=i + 1: len(responses(h.transport.written)) == n, f"response {i}")
        assert len(responses(h.transport.written)) == requests
        # Each request only moved the deadline: no new timer handle per request.
        assert len(armed) - before <= 1, f"{len(armed) - before} timers armed for {requests} requests"
        assert h.conn.timer is first and not first.cancelled()
        assert h.conn.deadline > first.when() - 5.0
        assert not h.transport.closed
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_keep_alive_timer_rearms_once_then_closes_idle_connection(parser: str) -> None:
    async def main() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await respond(send, b"ok")

        loop = asyncio.get_running_loop()
        holder: list[Any] = []
        armed = _count_timer_arms(loop, lambda: holder[0] if holder else None)
        keep_alive = 0.2
        h = Harness(parser, app, timeout_keep_alive=keep_alive)
        holder.append(h.conn)
        start = loop.time()
        await asyncio.sleep(keep_alive / 2)
        h.feed(GET % b"/")
        await until(lambda: h.transport.written != b"", "response")
        moved = h.conn.deadline
        assert moved > start + keep_alive, "the request moved the deadline"
        await asyncio.wait_for(_wait_closed(h.transport), 5)
        closed_at = loop.time()
        # One timer: armed for the moved deadline when the response ended (until then the shared
        # first-byte wait held the connection), and it closed the idle connection.
        assert len(armed) == 1, armed
        assert closed_at >= moved - 0.01
        assert h.conn.closed and h.conn.timer is None
        await h.finish()

    run(main)


async def _wait_closed(transport: FakeTransport) -> None:
    while not transport.closed:
        await asyncio.sleep(0.01)


# -- a protocol error behind earlier pipelined requests ------------------------------------------
@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    "broken",
    [
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",  # a malformed head: 400
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",  # request line too long: 414
        b"POST / HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk: 400
    ],
    ids=["bad-head", "long-line", "bad-chunk"],
)
def test_protocol_error_is_answered_after_earlier_responses(parser: str, broken: bytes) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["path"] == "/slow":
                await gate.wait()
            while (await receive()).get("more_body"):
                pass
            await respond(send, scope["path"].encode())

        h = Harness(parser, app)
        h.feed(GET % b"/slow" + GET % b"/queued" + broken)
        await settle(50)
        # Nothing is answered yet: the 400/414 must not overtake /slow and /queued.
        assert h.transport.written == b""
        assert not h.transport.closed
        assert h.conn.pending_error is not None
        assert not h.transport.reading
        gate.set()
        await until(lambda: h.transport.closed, "connection closed after the error response")
        got = responses(h.transport.written)
        expected_status = 414 if b"a" * 9000 in broken else 400
        assert [s for s, _ in got] == [200, 200, expected_status]
        assert [b for _, b in got[:2]] == [b"/slow", b"/queued"]
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_protocol_error_without_earlier_requests_is_answered_at_once(parser: str) -> None:
    async def main() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            raise AssertionError("the app must not see a malformed request")

        h = Harness(parser, app)
        h.feed(b"GET / HTTP/1.1\r\nHost : test\r\n\r\n")
        await settle()
        assert h.transport.closed
        assert [s for s, _ in responses(h.transport.written)] == [400]
        assert not h.service.tasks
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_connection_close_request_body_reaches_app(parser: str) -> None:
    """``Connection: close`` stops parsing after the request, not before its body (both parsers)."""

    async def main() -> None:
        got: list[bytes] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            got.append(body)
            await respond(send, body)

        h = Harness(parser, app)
        h.feed(b"POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 10\r\n\r\nhello")
        await settle()
        h.feed(b"world" + GET % b"/ignored")
        await until(lambda: h.transport.closed, "close after the response")
        assert got == [b"helloworld"]
        assert responses(h.transport.written) == [(200, b"helloworld")]
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_http10_keep_alive_serves_the_next_request(parser: str) -> None:
    async def main() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await respond(send, scope["path"].encode())

        h = Harness(parser, app)
        h.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        await until(lambda: len(responses(h.transport.written)) == 1, "first response")
        assert not h.transport.closed
        h.feed(b"GET /b HTTP/1.0\r\n\r\n")
        await until(lambda: h.transport.closed, "second response closes")
        assert responses(h.transport.written) == [(200, b"/a"), (200, b"/b")]
        await h.finish()

    run(main)


# -- the outbox: small writes leave when the loop's pass ends (polycorn.outbox) ----------------------
@pytest.mark.parametrize("parser", PARSERS)
def test_responses_of_one_pass_are_written_after_every_ready_app_ran(parser: str) -> None:
    """Two connections' requests arrive together: both apps finish before either response is written."""

    async def main() -> None:
        events: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await respond(send, scope["path"].encode())
            events.append("done " + scope["path"])

        h = Harness(parser, app)
        other = FakeTransport(h.loop)
        conn = h.service.protocol_factory()
        other.protocol = conn
        conn.connection_made(other)
        for name, transport in (("a", h.transport), ("b", other)):
            write = transport.write

            def logged(data: Any, name: str = name, write: Any = write) -> None:
                events.append("write " + name)
                write(data)

            transport.write = logged  # type: ignore[method-assign]
        h.feed(GET % b"/a")
        conn.data_received(GET % b"/b")
        await until(lambda: len(events) == 4, "both answered")
        assert events == ["done /a", "done /b", "write a", "write b"]
        assert responses(h.transport.written) == [(200, b"/a")]
        assert responses(other.written) == [(200, b"/b")]
        other.close()
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_streamed_parts_sent_in_one_step_leave_in_one_write(parser: str) -> None:
    async def main() -> None:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one", b"two", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            if scope["path"] == "/pause":
                await asyncio.sleep(0)  # the step ends: what is held goes out
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        h = Harness(parser, app)
        h.feed(GET % b"/")
        await until(lambda: h.transport.written.endswith(b"0\r\n\r\n"), "the whole response")
        assert h.transport.writes == 1
        assert h.transport.written.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n")
        h.feed(GET % b"/pause")
        await until(lambda: h.transport.written.count(b"0\r\n\r\n") == 2, "the second response")
        assert h.transport.writes == 3  # the parts before the pause, then the end
        await h.finish()

    run(main)


@pytest.mark.parametrize("parser", PARSERS)
def test_a_large_write_goes_out_at_once_after_what_is_held(parser: str) -> None:
    async def main() -> None:
        large = b"x" * 20000

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"small", "more_body": True})
            assert h.transport.writes == 0  # held
            await send({"type": "http.response.body", "body": large, "more_body": True})
            assert h.transport.writes == 2  # the held head and part first, then the large one
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        h = Harness(parser, app)
        h.feed(GET % b"/")
        await until(lambda: h.transport.written.endswith(b"0\r\n\r\n"), "the whole response")
        assert h.transport.written.endswith(b"\r\n\r\n5\r\nsmall\r\n4e20\r\n" + large + b"\r\n0\r\n\r\n")
        await h.finish()

    run(main)
