"""httptools (llhttp) adapter: the fast path."""

from __future__ import annotations

import httptools

from polycorn.parsing import ParserLimits, ProtocolError, Sink


class _Stopped(Exception):
    """Raised inside a callback to abandon the rest of the buffer."""


class HttptoolsAdapter:
    __slots__ = (
        "_parser",
        "_sink",
        "_url",
        "_headers",
        "_head_bytes",
        "_in_head",
        "_stopped",
        "_limits",
        "on_body",
        "on_message_complete",
    )

    def __init__(self, sink: Sink, limits: ParserLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._stopped = False
        # The sink's own bound methods are the callbacks: no adapter frame per body chunk.
        self.on_body = sink.on_body
        self.on_message_complete = sink.on_message_complete
        self._parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._in_head:
            # Bounds what llhttp buffers for a head that never ends (a header name without a
            # colon, say), which no callback would otherwise reveal.
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.head:
                raise ProtocolError(431, "request head too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stopped):
                return
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserUpgrade:
            # llhttp stops at an Upgrade/CONNECT request; the connection already treated it as
            # the last request on this connection (see HttpConnection.on_head).
            self._stopped = True
        except httptools.HttpParserError as exc:
            raise ProtocolError(400, f"malformed request: {exc}") from None

    def stop(self) -> None:
        self._stopped = True

    # -- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._stopped:
            raise _Stopped
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.request_line:
            raise ProtocolError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(b" \t")  # RFC 9112 §5: OWS around the value is not part of it
        headers.append((name.lower(), value))
        self._head_bytes += len(name) + len(value) + 4
        if len(headers) > self._limits.fields:
            raise ProtocolError(431, "too many header fields")
        if self._head_bytes > self._limits.head:
            raise ProtocolError(431, "request head too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        self._sink.on_head(parser.get_method(), self._url, parser.get_http_version(), self._headers)
