"""h11 adapter: the pure-Python fallback.

h11 is a two-sided state machine; Polycorn writes its own responses, so this adapter uses h11 only
to parse. After each request it tells h11 a placeholder response went out, which moves h11 on to
the next pipelined request without waiting for the real response.
"""

from __future__ import annotations

import h11

from polycorn.parsing import ParserLimits, ProtocolError, Sink

# 400 rather than 2xx: a 2xx would make h11 accept a CONNECT tunnel; no response here is sent.
_PLACEHOLDER = h11.Response(status_code=400, headers=[(b"content-length", b"0")])
_END = h11.EndOfMessage()


class H11Adapter:
    __slots__ = ("_conn", "_sink", "_limits", "_stopped", "_line_len", "_awaiting_head")

    def __init__(self, sink: Sink, limits: ParserLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.h11_incomplete_event)
        self._stopped = False
        self._line_len = 0
        self._awaiting_head = True

    def feed(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._awaiting_head and self._line_len >= 0:
            # h11 only knows one buffer bound; tell an endless request line (414) from an
            # endless header block (431) the same way the httptools adapter does.
            end = data.find(b"\n")
            length = self._line_len + (len(data) if end < 0 else end)
            if length > self._limits.request_line:
                raise ProtocolError(414, "request line too long")
            self._line_len = length if end < 0 else -1
        self._conn.receive_data(data)
        self._drain()

    def stop(self) -> None:
        self._stopped = True

    def _drain(self) -> None:
        conn = self._conn
        sink = self._sink
        while not self._stopped:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(exc.error_status_hint, f"malformed request: {exc}") from None
            kind = type(event)
            if kind is h11.Data:
                sink.on_body(bytes(event.data))  # type: ignore[union-attr]
            elif kind is h11.Request:
                self._awaiting_head = False
                target = event.target  # type: ignore[union-attr]
                if len(target) > self._limits.request_line:
                    raise ProtocolError(414, "request line too long")
                headers = list(event.headers)  # type: ignore[union-attr]
                if len(headers) > self._limits.fields:
                    raise ProtocolError(431, "too many header fields")
                sink.on_head(
                    event.method,  # type: ignore[union-attr]
                    target,
                    event.http_version.decode("ascii"),  # type: ignore[union-attr]
                    headers,
                )
            elif kind is h11.EndOfMessage:
                sink.on_message_complete()
                if self._stopped:
                    return
                self._next_cycle()
            else:  # NEED_DATA, PAUSED or ConnectionClosed
                return

    def _next_cycle(self) -> None:
        conn = self._conn
        conn.send(_PLACEHOLDER)
        conn.send(_END)
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            # The request asked to close (or switched protocols): nothing after it is parsed.
            self._stopped = True
            return
        self._awaiting_head = True
        self._line_len = 0
