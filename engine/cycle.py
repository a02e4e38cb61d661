"""One request/response exchange: the ASGI ``receive``/``send`` pair (ASGI HTTP spec 2.4).

Both parsers feed the same connection, which creates one of these per request. The response
writer lives here too: the head is held back until the first body message so that head and body
usually leave in one ``transport.write``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from polycorn.errors import ClientDisconnected
from polycorn.outbox import WRITE_SOON_BELOW
from polycorn.response import (
    CONTINUE,
    NO_BODY_STATUSES,
    PHRASES,
    TOKEN,
    error_response,
    status_line,
    valid_header_block,
)

if TYPE_CHECKING:
    from polycorn.connection import HttpConnection

logger = logging.getLogger("polycorn.error")

# Response states: a table, not a bag of booleans.
START = 0  # waiting for http.response.start
HEAD = 1  # start received, head not written yet
BODY = 2  # head written, more body may follow
DONE = 3  # response complete

# Response header names that change framing or replace a server default; _ORDINARY for the rest.
_ORDINARY, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _SERVER, _DATE = range(-1, 5)
_RESPONSE_SPECIAL = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"server": _SERVER,
    b"date": _DATE,
}
#: Response header names seen (as the app spells them) and their kind: an app sends the same few
#: names again and again, so each is checked to be a token and lowercased once, not per response.
#: Bounded: a flood of distinct names only makes it start over.
_NAME_KINDS: dict[bytes, int] = {}
_NAME_KINDS_SIZE = 1024


def _name_kind(name: Any) -> int:
    """The kind of a header name not seen before, checked to be a token (RFC 9110 §5.1)."""
    if not isinstance(name, (bytes, bytearray)) or TOKEN(name) is None:
        raise RuntimeError(f"invalid response header name {name!r}")
    kind = _RESPONSE_SPECIAL.get(bytes(name).lower(), _ORDINARY)
    if type(name) is bytes:
        if len(_NAME_KINDS) >= _NAME_KINDS_SIZE:
            _NAME_KINDS.clear()
        _NAME_KINDS[name] = kind
    return kind


_PATHSEND_CHUNK = 256 * 1024


class RequestCycle:
    __slots__ = (
        "conn",
        "scope",
        "keep_alive",
        "expect_continue",
        "no_content",
        "chunks",
        "buffered",
        "body_done",
        "body_delivered",
        "disconnected",
        "waiter",
        "state",
        "status",
        "head_block",
        "replaced",
        "chunked",
        "remaining",
        "bytes_sent",
        "started_at",
        "task",
    )

    def __init__(
        self,
        conn: HttpConnection,
        scope: dict[str, Any],
        keep_alive: bool,
        expect_continue: bool,
        no_content: bool,
        started_at: float,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        #: No content goes out: a HEAD request's response, and (set with the head) one whose
        #: status carries none (RFC 9110 §6.4.1).
        self.no_content = no_content
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.body_done = False
        self.body_delivered = False
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.state = START
        self.status = 0
        self.head_block = b""
        self.replaced = 0
        self.chunked = False
        self.remaining: int | None = None
        self.bytes_sent = 0
        self.started_at = started_at
        self.task: asyncio.Task[None] | None = None

    # -- fed by the connection ---------------------------------------------------------------
    def feed_body(self, chunk: bytes) -> None:
        if self.state == DONE or self.disconnected:
            return  # the response is out; the rest of the body is read and dropped
        self.chunks.append(chunk)
        self.buffered += len(chunk)
        self.wake()

    def end_body(self) -> None:
        self.body_done = True
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app side ------------------------------------------------------------------------
    async def run(self, app: Any) -> None:
        conn = self.conn
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            # Only a shutdown past its grace period cancels requests; the log says so there.
            if self.state != DONE:
                self.state = DONE
                conn.abort_cycle(self)
        except ClientDisconnected:
            logger.debug("client disconnected before the response was complete")
        except BaseException as exc:
            conn.log_app_error(self, exc)
            self._fail()
            if not isinstance(exc, Exception):
                raise
        else:
            if self.state != DONE and not self.disconnected:
                logger.error(
                    "ASGI app returned without completing the response to %s",
                    conn.describe_request(self),
                )
                self._fail()
        finally:
            conn.service.request_done(self.task)

    def _fail(self) -> None:
        """Answer 500 if nothing was written yet (connection kept), else close the connection."""
        if self.disconnected or self.state == DONE:
            return
        conn = self.conn
        if self.state == BODY:
            self.state = DONE  # what the app sent before failing is the client's: the close writes it
            conn.abort_cycle(self)
            return
        self.status = 500
        keep_alive = self.keep_alive and conn.service.accepting and not self.expect_continue
        conn.write(error_response(500, conn.service.date_line, close=not keep_alive))
        self.bytes_sent = len(PHRASES[500])  # the access log counts the body the server wrote
        self.state = DONE
        conn.on_response_complete(self, keep_alive)

    async def receive(self) -> dict[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if self.state == START and not self.disconnected:
                self.conn.write(CONTINUE)
        while not self.chunks and not self.disconnected and self.state != DONE:
            if self.body_done and not self.body_delivered:
                break
            # Body pending, or body done and the app waits for a disconnect (long polling).
            conn = self.conn
            if conn.eof:
                conn.close()  # a half-closed client sends nothing more: that is the disconnect
            elif not self.body_done:
                conn.waiting_for_body()
            waiter = self.waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        if self.disconnected or self.state == DONE:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        if len(chunks) == 1:
            body = chunks[0]
        else:
            body = b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        self.body_delivered = self.body_done
        conn = self.conn
        if conn.reading_paused:
            conn.maybe_resume_reading()
        return {"type": "http.request", "body": body, "more_body": not self.body_done}

    def send(self, message: dict[str, Any]) -> Awaitable[None]:
        """ASGI ``send``, a callable returning an awaitable: a message is handled as it comes, and
        an already-done future is returned, not a coroutine made per call, unless there is
        something to wait for (a file to send, a full transport buffer)."""
        if self.disconnected:
            raise ClientDisconnected("the client disconnected")
        mtype = message["type"]
        state = self.state
        if state == START:
            if mtype != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {mtype!r}")
            self._start(message)
            return self.conn.service.done
        if state == DONE:
            raise RuntimeError(f"ASGI message {mtype!r} sent after the response was complete")
        conn = self.conn
        if state == BODY and conn.transport.is_closing():
            # A write failed (the client reset): connection_lost comes only once the loop runs,
            # and an app that streams without waiting would otherwise send its whole body first.
            self.disconnected = True
            raise ClientDisconnected("the client disconnected")
        if mtype == "http.response.body":
            self._body(message.get("body", b""), message.get("more_body", False))
        elif mtype == "http.response.pathsend":
            return self._pathsend(message["path"])
        else:
            raise RuntimeError(f"expected ASGI message 'http.response.body', got {mtype!r}")
        if conn.writing_paused:
            return conn.drain()
        return conn.service.done

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        if type(status) is not int:
            raise RuntimeError(f"response status must be an int, got {status!r}")
        parts: list[bytes] = []
        replaced = 0
        kinds = _NAME_KINDS
        for name, value in message.get("headers", ()):
            try:
                kind = kinds.get(name)
            except TypeError:  # unhashable: a bytearray
                kind = None
            if kind is None:
                kind = _name_kind(name)
            if kind != _ORDINARY:
                if kind == _CONTENT_LENGTH:
                    try:
                        length = int(value)
                    except ValueError:
                        length = -1
                    if length < 0:
                        raise RuntimeError(f"invalid content-length response header {value!r}")
                    self.remaining = length
                elif kind == _TRANSFER_ENCODING:
                    # Framing is the server's job: chunked is applied by the writer below.
                    self.chunked = True
                    continue
                elif kind == _CONNECTION:
                    if b"close" in value.lower():
                        self.keep_alive = False
                    continue  # the writer emits its own Connection header
                else:
                    replaced |= 1 << kind  # the app's server/date replaces ours
            parts += (name, b": ", value, b"\r\n")
        block = b"".join(parts)
        if not valid_header_block(block, len(parts) >> 2):  # names are tokens (above)
            raise RuntimeError("invalid response header value (CR, LF or NUL)")
        self.status = status
        self.head_block = block
        self.replaced = replaced
        self.state = HEAD

    def _head(self, body_length: int | None, more_body: bool) -> bytes:
        """Finish the head once the first body part shows how to frame the response."""
        conn = self.conn
        service = conn.service
        status = self.status
        framing = b""
        if status in NO_BODY_STATUSES:
            self.remaining = None
            self.chunked = False
            self.no_content = True
        # Past this point no_content still means only that the request is a HEAD.
        elif self.remaining is not None:
            self.chunked = False
            if self.no_content:
                self.remaining = None
        elif self.no_content and not body_length:
            self.chunked = False  # an empty HEAD body says nothing about the GET length
        elif not more_body and body_length is not None:
            framing = b"content-length: %d\r\n" % body_length
            self.chunked = False
        elif self.scope["http_version"] == "1.1":
            framing = b"transfer-encoding: chunked\r\n"
            self.chunked = not self.no_content  # a HEAD answer says how GET's is framed, and stops
        else:
            self.chunked = False
            self.keep_alive = False  # HTTP/1.0: the close delimits the body (RFC 9112 §6.3)
        keep_alive = self.keep_alive = self.keep_alive and service.accepting and not self.expect_continue
        if not keep_alive:
            connection = b"connection: close\r\n"
        elif self.scope["http_version"] == "1.0":
            connection = b"connection: keep-alive\r\n"
        else:
            connection = b""
        defaults = (
            service.default_head
            if not self.replaced
            else service.head_defaults(bool(self.replaced & (1 << _SERVER)), bool(self.replaced & (1 << _DATE)))
        )
        self.state = BODY
        return b"".join((status_line(status), defaults, self.head_block, framing, connection, b"\r\n"))

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.state == HEAD:
            head = self._head(len(body), more_body)
        else:
            head = b""
        if self.no_content:
            body = b""
        remaining = self.remaining
        if remaining is not None:
            remaining -= len(body)
            self.remaining = remaining
            if remaining < 0:
                self.keep_alive = False
                if head:
                    self.state = HEAD  # nothing written yet: the failure becomes a 500
                raise RuntimeError("response body longer than its content-length header")
            if not more_body and remaining:
                if head:
                    self.state = HEAD
                raise RuntimeError(f"response body shorter than its content-length header ({remaining} bytes missing)")
        self.bytes_sent += len(body)
        conn = self.conn
        if self.chunked:
            if body:
                data = b"".join((head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n" if not more_body else b"\r\n"))
            else:
                data = head + b"0\r\n\r\n" if not more_body else head
        elif head:
            if len(body) >= WRITE_SOON_BELOW:
                # A large body is not copied just to put the head in front of it: the transport
                # sends both in one go (uvloop: one writev) from the app's own buffer.
                conn.writelines((head, body))
                data = b""
            else:
                data = head + body if body else head
        else:
            data = body
        if data:
            conn.write_soon(data)
        if not more_body:
            self.state = DONE
            conn.on_response_complete(self, self.keep_alive)

    async def _pathsend(self, path: str) -> None:
        """``http.response.pathsend``: the file goes out with sendfile where the loop can."""
        conn = self.conn
        conn.flush()
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if self.state == HEAD:
                if self.remaining is None and not self.no_content and self.status not in NO_BODY_STATUSES:
                    self.remaining = size
                    self.head_block += b"content-length: %d\r\n" % size
                conn.write(self._head(None, True))
            if not self.no_content:  # set for a status without content by _head, just above
                if self.remaining is not None and self.remaining != size:
                    self.keep_alive = False
                    raise RuntimeError("pathsend file size differs from the content-length header")
                await self._send_file(file, size)
                self.bytes_sent += size
        self.remaining = None
        self._body(b"", False)
        if conn.writing_paused:
            await conn.drain()

    async def _send_file(self, file: Any, size: int) -> None:
        conn = self.conn
        if self.chunked:
            conn.write(b"%x\r\n" % size)
        if conn.writing_paused:
            await conn.drain()
        try:
            await conn.loop.sendfile(conn.transport, file, 0, size)
        except (NotImplementedError, AttributeError, RuntimeError):
            # uvloop transports have no sendfile: stream the file in chunks, honouring drain.
            file.seek(0)
            while chunk := file.read(_PATHSEND_CHUNK):
                if self.disconnected:
                    raise ClientDisconnected("the client disconnected") from None
                conn.write(chunk)
                if conn.writing_paused:
                    await conn.drain()
        if self.chunked:
            conn.write(b"\r\n")
