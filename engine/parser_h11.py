"""h11 adapter: the pure-Python fallback.

h11 is a two-sided state machine; Polycorn writes its own responses, so this adapter uses h11 only
to parse. After each request it tells h11 a placeholder response went out, which moves h11 on to
the next pipelined request without waiting for the real response.
"""

from __future__ import annotations

import re
from typing import ClassVar

import h11

from polycorn.chunked import ChunkedBody
from polycorn.parsing import (
    INVALID_VALUE_BYTE,
    LONGEST_METHOD,
    MAX_LENGTH,
    ParserLimits,
    ProtocolError,
    Sink,
    method_refused,
)

# 400 rather than 2xx: a 2xx would make h11 accept a CONNECT tunnel; no response here is sent.
_PLACEHOLDER = h11.Response(status_code=400, headers=[(b"content-length", b"0")])
_END = h11.EndOfMessage()

# HTTP versions llhttp knows (the connection answers 505 to 2.0); h11 lets any version through.
_VERSIONS = frozenset((b"1.0", b"1.1", b"2.0"))
#: Bytes of a request line's start that decide its method (the longest method and its space fit).
_METHOD_ROOM = LONGEST_METHOD + 1
#: Content-Length field lines of a raw head: h11 merges repeated or listed equal values into one
#: field, so a head with several can only be told from the bytes (llhttp refuses such heads).
_CONTENT_LENGTHS = re.compile(rb"\ncontent-length[ \t]*:([^\r\n]*)", re.IGNORECASE).findall
#: How a request's body is framed, as _check_head() finds it (else its Content-Length, 0 if none).
_CHUNKED, _SWITCH = -1, -2


def _raw_cap(limits: ParserLimits) -> int:
    """How many bytes of a head to keep for the checks h11 does not make: all of a head within either limit.

    h11 bounds only a head still incomplete: one that comes whole in a single read may be longer
    than --h11-max-incomplete-event-size. A whole head longer than this is refused (431).
    """
    return max(limits.head, limits.h11_incomplete_event) + 4


class H11Adapter:
    name: ClassVar[str] = "h11"
    __slots__ = ("_conn", "_sink", "_limits", "_stopped", "_line_len", "_awaiting_head", "_raw", "_body")

    def __init__(self, sink: Sink, limits: ParserLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.h11_incomplete_event)
        self._stopped = False
        self._line_len = 0
        self._awaiting_head = True
        #: The bytes of the head h11 is waiting for, kept for the checks h11 does not make.
        self._raw = bytearray()
        #: The body being read: h11 parses heads only (see _FixedBody and polycorn.chunked).
        self._body: ChunkedBody | _FixedBody | None = None

    def feed(self, data: bytes) -> None:
        if self._stopped and self._awaiting_head:
            return  # stop() lets the current message finish: its body is still the app's
        if self._body is not None:
            try:
                if self._feed_body(data):
                    self._drain()
            except ProtocolError:
                self._stopped = self._awaiting_head = True
                raise
            return
        if self._awaiting_head:
            raw = self._raw
            if not raw:
                data = self._skip_empty_lines(data)
                if not data:
                    return
            cap = _raw_cap(self._limits)
            if len(raw) < cap:
                raw += data[: cap - len(raw)]  # a body in the same packet is not copied
        if self._awaiting_head and self._line_len >= 0:
            # h11 only knows one buffer bound; tell an endless request line (414) from an
            # endless header block (431) the same way the httptools adapter does.
            end = data.find(b"\n")
            self._check_method(end >= 0)
            length = self._line_len + (len(data) if end < 0 else end)
            if length > self._limits.request_line + 1:  # + 1: the CR before the LF
                self._stopped = True
                raise ProtocolError(414, "request line too long")
            self._line_len = length if end < 0 else -1
        self._conn.receive_data(data)
        try:
            self._drain()
            raw = self._raw
            if self._awaiting_head and raw and raw.count(b"\n") > self._limits.fields + 1:
                # A head still incomplete with too many fields already (its request line and
                # each field end in an LF): refused now, as the httptools adapter does.
                raise ProtocolError(431, "too many header fields")
        except ProtocolError:
            self._stopped = self._awaiting_head = True  # nothing after a broken message is parsed
            raise

    def stop(self) -> None:
        self._stopped = True

    def detach(self) -> None:
        self._stopped = True
        self._body = None  # a body reader holds the connection too
        del self._sink

    @staticmethod
    def _skip_empty_lines(data: bytes) -> bytes:
        """RFC 9112 §2.2: empty lines before a request line are ignored, as llhttp does.

        llhttp skips every CR and LF there, in any order (a bare LF or a lone CR too), not just
        CRLF pairs: so does this adapter, or the same bytes would be a 400 here and a request there.
        """
        return data.lstrip(b"\r\n")

    def _check_method(self, line_done: bool) -> None:
        """Refuse a method llhttp does not serve, at the byte where llhttp would (400)."""
        if method_refused(bytes(self._raw[:_METHOD_ROOM]), line_done):
            self._stopped = self._awaiting_head = True
            raise ProtocolError(400, "malformed request: invalid or unsupported method")

    def _check_raw_head(self) -> None:
        """What h11 lets through and llhttp refuses (RFC 9112 §2.2, §5.2; RFC 9110 §8.6)."""
        raw = self._raw
        crlf_end = raw.find(b"\n\r\n")
        lf_end = raw.find(b"\n\n")
        if lf_end >= 0 and (crlf_end < 0 or lf_end < crlf_end):
            raise ProtocolError(400, "malformed request: bare LF as a line end")
        self._raw = bytearray()
        if crlf_end < 0:
            # The head came whole in one read, longer than the bytes kept (more than either
            # limit, see _raw_cap): too large, and its end and what it holds are out of sight.
            raise ProtocolError(431, "request head too large")
        head = bytes(raw[: crlf_end + 3])
        if head.count(b"\n") != head.count(b"\r\n"):
            raise ProtocolError(400, "malformed request: bare LF as a line end")
        if b"\n " in head or b"\n\t" in head:
            raise ProtocolError(400, "malformed request: obsolete line folding in a header field")
        lengths = _CONTENT_LENGTHS(head)
        if len(lengths) > 1 or (lengths and b"," in lengths[0]):
            raise ProtocolError(400, "malformed request: several Content-Length values")

    def _drain(self) -> None:
        conn = self._conn
        sink = self._sink
        while not (self._stopped and self._awaiting_head):
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 hints 501 for a transfer coding other than chunked; llhttp answers 400, and
                # RFC 9112 §6.3 requires 400 where chunked is not the final coding.
                status = exc.error_status_hint
                raise ProtocolError(400 if status == 501 else status, f"malformed request: {exc}") from None
            kind = type(event)
            if kind is h11.Request:
                self._awaiting_head = False
                self._check_raw_head()
                method = event.method  # type: ignore[union-attr]
                target = event.target  # type: ignore[union-attr]
                version = event.http_version  # type: ignore[union-attr]
                headers = list(event.headers)  # type: ignore[union-attr]
                framing = self._check_head(method, target, version, headers)
                if framing != _SWITCH:
                    sink.on_head(method, target, version.decode("ascii"), headers, not framing)
                    if framing:
                        # The body is read here, not by h11 (whose chunk reader is lenient and
                        # whose events cost more than counting bytes).
                        self._body = (
                            ChunkedBody(sink, self._limits) if framing == _CHUNKED else _FixedBody(sink, framing)
                        )
                        if not self._feed_body(conn.trailing_data[0]):
                            return
                        conn = self._conn  # a fresh one, holding what followed the body
                    continue
                # Upgrade or CONNECT: llhttp hands such a request over without a body and stops
                # there, since what follows is another protocol; do the same.
                sink.on_head(method, target, version.decode("ascii"), headers, True)
                self._stopped = self._awaiting_head = True
                rest = conn.trailing_data[0]
                if rest:
                    sink.on_upgrade_data(bytes(rest))
                return
            elif kind is h11.EndOfMessage:
                # Only a message without a body ends here (the adapter reads bodies itself), and
                # on_head told the sink so: nothing to say.
                if self._stopped:
                    self._awaiting_head = True
                    return
                self._next_cycle()
                conn = self._conn
            else:  # NEED_DATA, PAUSED or ConnectionClosed
                return

    def _check_head(self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]) -> int:
        """Apply the limits and the checks llhttp makes; say how the body is framed."""
        if version not in _VERSIONS:
            raise ProtocolError(400, "malformed request: invalid HTTP version")
        limits = self._limits
        line = len(method) + len(target) + 10  # METHOD SP target SP HTTP/x.y
        if line > limits.request_line:
            raise ProtocolError(414, "request line too long")
        if len(headers) > limits.fields:
            raise ProtocolError(431, "too many header fields")
        size = line + 4  # the two CRLFs around the field lines
        framing = length = 0
        upgrade = connection_upgrade = False
        for name, value in headers:
            size += len(name) + len(value) + 4  # "name: value" CRLF
            if INVALID_VALUE_BYTE(value) is not None:
                raise ProtocolError(400, "malformed request: invalid character in a header value")
            if name == b"content-length":
                framing |= 1
                length = int(value)  # h11 made sure it is one run of digits
                if length > MAX_LENGTH:  # h11 takes up to 20 digits
                    raise ProtocolError(400, "malformed request: Content-Length too large")
            elif name == b"transfer-encoding":
                framing |= 2
            elif name == b"upgrade":
                upgrade = upgrade or bool(value)  # llhttp ignores an empty Upgrade field
            elif name == b"connection":
                connection_upgrade = connection_upgrade or b"upgrade" in [t.strip() for t in value.lower().split(b",")]
        if size > limits.head:
            raise ProtocolError(431, "request head too large")
        if framing == 3:
            # RFC 9112 §6.3: a smuggling vector; llhttp refuses it too.
            raise ProtocolError(400, "malformed request: both Content-Length and Transfer-Encoding")
        if (upgrade and connection_upgrade) or method == b"CONNECT":
            return _SWITCH
        return _CHUNKED if framing == 2 else length

    def _feed_body(self, data: bytes) -> bool:
        """Read body bytes; True once the message ended and a fresh h11 connection holds what
        followed it (to be drained), False while the body goes on or nothing follows."""
        body = self._body
        assert body is not None
        end = body.feed(data)
        if end < 0:
            return False
        self._body = None
        self._sink.on_message_complete()
        if self._stopped:
            self._awaiting_head = True
            return False
        self._restart(data[end:])
        return True

    def _next_cycle(self) -> None:
        conn = self._conn
        conn.send(_PLACEHOLDER)
        conn.send(_END)
        try:
            conn.start_next_cycle()
            data = conn.trailing_data[0]
            # h11 refuses empty lines before the next request line; they are skipped instead.
            fresh = data[:1] in (b"\r", b"\n")
        except h11.LocalProtocolError:
            # h11 never keeps an HTTP/1.0 connection open, but the sink did not stop, so this
            # one asked for keep-alive: go on with a fresh h11 connection and the bytes received.
            data = conn.trailing_data[0]
            fresh = True
        if fresh:
            self._restart(data)
            return
        self._awaiting_head = True
        self._expect_head(data)

    def _restart(self, data: bytes) -> None:
        """A fresh h11 connection for the next request, given the bytes received after the last."""
        self._awaiting_head = True
        data = self._skip_empty_lines(data)
        self._conn = conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.h11_incomplete_event)
        if data:
            conn.receive_data(data)
        self._expect_head(data)

    def _expect_head(self, data: bytes) -> None:
        """Start the checks of the next head on the bytes of it already received."""
        self._raw = bytearray(data[: _raw_cap(self._limits)])
        if data:
            line_done = 10 in data  # b"\n": an int needle is a plain memchr
            self._check_method(line_done)
            self._line_len = -1 if line_done else len(data)
        else:
            self._line_len = 0


class _FixedBody:
    """A Content-Length body, passed on as it arrives; its end is found by counting."""

    __slots__ = ("_sink", "_left")

    def __init__(self, sink: Sink, length: int) -> None:
        self._sink = sink
        self._left = length

    def feed(self, data: bytes) -> int:
        """Like ``ChunkedBody.feed``: the offset just past the body once it is complete, else -1."""
        left = self._left
        size = len(data)
        if size < left:
            if size:
                self._sink.on_body(data)
            self._left = left - size
            return -1
        self._sink.on_body(data if size == left else data[:left])
        self._left = 0
        return left
