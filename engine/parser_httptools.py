"""httptools (llhttp) adapter: the fast path."""

from __future__ import annotations

from typing import ClassVar

import httptools

from polycorn.parsing import LONGEST_METHOD, ParserLimits, ProtocolError, Sink

#: The version a request line states, from the end of a line known to read "METHOD SP target":
#: what llhttp parsed there, without httptools formatting a string for it.
_LINE_ENDS = {b" HTTP/1.1\r": "1.1", b" HTTP/1.0\r": "1.0"}.get


#: The request header names that frame a body, checked as they come.
_FRAMING = frozenset((b"transfer-encoding", b"content-length"))


class _Stopped(Exception):
    """Raised inside a callback to abandon the rest of the buffer."""


class HttptoolsAdapter:
    name: ClassVar[str] = "httptools"
    #: detach() deletes these; the compiled build (setup.py) allows that only when told so.
    __deletable__ = ("_parser", "_sink", "on_body")
    __slots__ = (
        "_parser",
        "_sink",
        "_url",
        "_headers",
        "_in_head",
        "_in_body",
        "_framed",
        "_chunk_events",
        "_trailer_raw",
        "_completed",
        "_raw_head",
        "_data",
        "_fresh",
        "_seen",
        "_earlier",
        "_earlier_whole",
        "_stopped",
        "_limits",
        "on_body",
    )

    def __init__(self, sink: Sink, limits: ParserLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._in_body = False  # the head went to the sink; its body and end are still due
        self._framed = False  # the head being parsed has a Content-Length or Transfer-Encoding
        #: Chunk headers and chunk ends so far: odd between a chunk's header and its end, that is
        #: in its data or, after the last (empty) chunk, in the trailer section.
        self._chunk_events = 0
        self._trailer_raw = 0  # bytes of whole reads since the open chunk's header that were not body
        self._completed = False  # a message ended during the current feed()
        self._raw_head = 0
        self._data = b""  # the bytes of the current feed()
        self._fresh = True  # the current feed() began between messages
        self._seen = 0  # where in the current feed the last request line checked ended
        #: The bytes before this feed that hold the start of a head still incomplete (see below).
        self._earlier = b""
        self._earlier_whole = False  # ``_earlier`` begins where the head does
        self._stopped = False
        # The sink's own bound method is the body callback: no adapter frame per body chunk.
        self.on_body = sink.on_body
        self._parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> None:
        if self._stopped and not self._in_body:
            return  # stop() lets the current message finish: its body is still the app's
        in_head = self._in_head
        idle = not in_head and not self._in_body
        self._completed = False
        self._data = data
        self._fresh = idle
        self._seen = 0
        # Inside a chunk (chunk headers and ends alternate): where the chunk events and the body
        # stood, for _bound_unfinished.
        mark = (self._chunk_events, self._sink.body_bytes) if self._chunk_events & 1 and self._in_body else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stopped):
                # httptools keeps the exception (its last error): without its traceback it holds
                # no frame, so this parser, its adapter and connection are freed by reference
                # counting rather than left in a cycle for the garbage collector.
                cause.__traceback__ = None
                return
            self._stopped = True  # nothing after a broken message is parsed
            self._in_body = False
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops at an Upgrade/CONNECT request; the connection already treated it as
            # the last request on this connection (see HttpConnection.on_head). What follows the
            # head in this chunk belongs to the next protocol.
            self._stopped = True
            self._in_body = False
            rest = data[exc.args[0] :]
            if rest:
                self._sink.on_upgrade_data(rest)
        except httptools.HttpParserError as exc:
            if self._stopped and self._completed and not self._in_head and not self._in_body:
                # Bytes after the last message: llhttp refuses them itself after a message that
                # closes the connection ("Data after `Connection: close`"). They are ignored.
                return
            self._stopped = True
            self._in_body = False
            raise ProtocolError(400, f"malformed request: {exc}") from None
        finally:
            # Not kept past the feed: on an idle connection it would pin a copy of the last
            # body bytes read (64 uploads of 64 KiB held 4 MiB) until the next request.
            self._data = b""
        if self._in_head or self._in_body:
            try:
                self._bound_unfinished(data, in_head, idle, mark)
            except ProtocolError:
                self._stopped = True  # nothing after a broken message is parsed
                self._in_body = False
                raise

    def _bound_unfinished(self, data: bytes, in_head: bool, idle: bool, mark: tuple[int, int] | None) -> None:
        """After a read that left a message unfinished: bound what llhttp and httptools hold for it.

        No callback reveals a head or a trailer field that never ends; so the bytes are counted.
        """
        limits = self._limits
        if self._in_head:
            # Only bytes known to be this head's count: never a previous message's tail. Keep the
            # bytes holding its request line (up to the line's limit) for the check of the
            # request line in on_headers_complete.
            keep = limits.request_line + 2
            if in_head and not self._completed:
                self._raw_head += len(data)
                if len(self._earlier) < keep:
                    self._earlier += data[:keep]
            elif idle and not self._completed:
                self._raw_head = len(data)  # the head began this feed, at its start
                self._earlier = data[:keep]
                self._earlier_whole = True
            else:
                self._raw_head = 0  # it began after another message: counted from the next feed
                # It starts somewhere after the request line checked last (never that line).
                self._earlier = data[self._seen :][-keep:]
                self._earlier_whole = False
            if self._raw_head > limits.head:
                raise ProtocolError(431, "request head too large")
        elif mark is not None and self._chunk_events == mark[0]:
            # A whole read inside one chunk: that chunk's data, or after the last chunk, trailer
            # bytes, which httptools holds until each field ends. What was not body counts.
            self._trailer_raw += len(data) - (self._sink.body_bytes - mark[1])
            if self._trailer_raw > limits.head:
                raise ProtocolError(431, "request trailer section too large")
        if self._headers:
            self._check_fields(0)  # a head, or a trailer section, still incomplete

    def stop(self) -> None:
        self._stopped = True

    def detach(self) -> None:
        self._stopped = True
        # httptools' parser holds this adapter's bound callbacks, and the adapter the connection.
        del self._parser, self._sink, self.on_body

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._stopped:
            raise _Stopped
        self._url = b""
        self._headers = []
        self._in_head = True
        self._framed = False
        self._raw_head = 0

    def on_url(self, url: bytes) -> None:
        url = self._url = self._url + url
        # The request line is METHOD SP target SP HTTP/x.y, measured as the h11 adapter does.
        # The method is fetched (a new bytes object) only for a target long enough to need it.
        limit = self._limits.request_line - 10
        if len(url) + LONGEST_METHOD > limit and len(url) + len(self._parser.get_method()) > limit:
            raise ProtocolError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(b" \t")  # RFC 9112 §5: OWS around the value is not part of it
        name = name.lower()
        # One set lookup rather than two comparisons: the name's hash it computes is kept by the
        # name, and the connection's lookup of the names it acts on reuses it.
        if name in _FRAMING:
            self._framed = True
            if name == b"transfer-encoding":
                # Only "chunked" frames a body here (h11 knows no other coding, and llhttp lets
                # "gzip, chunked" through): refuse the rest before the head reaches the app.
                value = value.lower()
                if value != b"chunked":
                    raise ProtocolError(400, "unsupported transfer coding")
            elif len(value) > 20:
                # h11 takes at most 20 digits (leading zeros included); llhttp only bounds the value.
                raise ProtocolError(400, "malformed request: Content-Length too long")
        headers.append((name, value))  # bounded per feed and per head, not per field: _check_fields

    def on_headers_complete(self) -> None:
        self._in_head = False
        method = self._parser.get_method()
        url = self._url
        # llhttp takes several spaces between the parts of the request line, and "RTSP/1.0" or
        # "ICE/1.0" for the protocol, telling only the version: RFC 9112 §3 wants one space each,
        # and HTTP. Usually the head began this feed, perhaps after empty lines: then " HTTP/1.x"
        # CR where an exact line would put it proves the line exact. That CR can only end the
        # request line (CR is in no method or target, and what comes before it is not an empty
        # line), and the line is then just as long as "METHOD SP target" needs: no empty line
        # before it, no extra space within. Else _version looks further.
        version = None
        here = self._fresh and not self._completed  # the head began this feed
        if here:
            at = len(method) + 1 + len(url)
            version = _LINE_ENDS(self._data[at : at + 10])
            self._seen = at + 6
        if version is None:
            version = self._version(method, url)
        headers = self._headers
        limits = self._limits
        # A head that began this feed is within the size limit when the whole feed is.
        if len(headers) > limits.fields or not here or len(self._data) > limits.head:
            self._check_fields(len(method) + len(url) + 14)  # request line, its CRLF, the last CRLF
        self._headers = []  # trailer fields land here, never in the request's headers
        self._in_body = True
        self._sink.on_head(method, url, version, headers, not self._framed)

    def _check_fields(self, line: int) -> None:
        """The --limit-request-fields and --limit-request-head bounds on the fields parsed so far.

        Checked once a head is complete, and after each feed for a head or trailer section still
        incomplete (its fields were parsed from at most one read).
        """
        limits = self._limits
        fields = self._headers
        if len(fields) > limits.fields:
            raise ProtocolError(431, "too many header fields")
        # Measured as the h11 adapter does: each field as a "name: value" CRLF line.
        if line + sum(len(name) + len(value) + 4 for name, value in fields) > limits.head:
            raise ProtocolError(431, "request head too large")

    def _version(self, method: bytes, url: bytes) -> str:
        """The request's version, once the request line is checked where it is not at hand."""
        parser = self._parser
        line = b"%s %s HTTP/" % (method, url)
        data = self._data
        whole = not self._completed and data.startswith(line)
        if whole:
            seen = self._seen = len(line)
            version = _LINE_ENDS(data[seen - 6 : seen + 4]) or parser.get_http_version()
        else:
            version = parser.get_http_version()
        if version == "0.9":
            raise ProtocolError(400, "malformed request: no HTTP version")  # "GET /" (HTTP/0.9)
        if not whole and not self._line_ok(line, data):
            raise ProtocolError(400, "malformed request: invalid request line")
        return version

    def _line_ok(self, line: bytes, data: bytes) -> bool:
        """Whether the request line reads ``line`` where this head began, as far as that is known."""
        if not self._completed:
            if self._fresh:  # the head began this feed, after empty lines
                rest = data.lstrip(b"\r\n")
                self._seen = len(data) - len(rest) + len(line)
                return rest.startswith(line)
            if self._earlier_whole:  # it began at the start of an earlier feed
                return (self._earlier + data).lstrip(b"\r\n").startswith(line)
            return line in self._earlier + data  # it began after another message, feeds ago
        # It followed another message in this feed: httptools tells no offsets, so the line need
        # only come after the previous request line (never the same one again).
        at = data.find(line, self._seen)
        if at < 0:
            return False
        self._seen = at + len(line)
        return True

    def on_chunk_header(self) -> None:
        self._chunk_events += 1
        self._trailer_raw = 0

    def on_chunk_complete(self) -> None:
        self._chunk_events += 1

    def on_message_complete(self) -> None:
        # After the last message, whatever follows is ignored without raising here (an exception
        # per Connection: close request costs more than the rest of this callback): llhttp
        # refuses bytes after a closing message (feed() drops that error), a next message after
        # a stop() ends in on_message_begin, and after an Upgrade or CONNECT llhttp stops by
        # itself and says where the next protocol's bytes begin.
        if self._headers:
            self._check_fields(0)  # a trailer section
        self._in_body = False
        self._completed = True
        if self._framed:  # else on_head said the message was complete
            self._sink.on_message_complete()
