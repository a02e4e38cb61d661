"""What both HTTP/1.1 parser adapters share: the error type, the limits and the sink interface.

An adapter turns bytes into four plain calls on a sink (the connection). Everything that decides
behaviour (keep-alive, Host checks, target parsing, flow control) lives in the one connection, so
both parsers answer the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Protocol

#: The bytes of a token (RFC 9110 §5.6.2): method, field name, chunk-extension name.
TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: A byte llhttp refuses in a field value: a control character other than HTAB (h11 lets them by).
INVALID_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
#: llhttp counts body lengths and chunk sizes in 64 bits and refuses larger ones.
MAX_LENGTH = 2**64 - 1


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; ``status`` is the response to send before closing."""

    def __init__(self, status: int, reason: str, headers: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers  # extra response header lines, e.g. a 426's Upgrade


#: The methods served: llhttp's HTTP set (upper case only: methods are case-sensitive, RFC 9110
#: §9.1). llhttp refuses any other method with 400, as soon as a byte leaves its method table; the
#: h11 adapter mirrors that (:func:`method_refused`) so both parsers answer alike.
KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE PATCH QUERY "  # RFC 9110, 5789, the QUERY draft
    b"COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL "  # WebDAV
    b"REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE "
    b"PURGE MKCALENDAR LINK UNLINK SOURCE".split()
)
#: In llhttp's table but refused only once the request line is complete: RTSP's methods, and PRI
#: (the HTTP/2 preface).
_REFUSED_LATE = frozenset(
    b"DESCRIBE ANNOUNCE SETUP PLAY PAUSE TEARDOWN GET_PARAMETER SET_PARAMETER REDIRECT RECORD FLUSH PRI".split()
)
#: The longest method in llhttp's table, in bytes.
LONGEST_METHOD = max(map(len, KNOWN_METHODS | _REFUSED_LATE))
#: Every beginning of a method in llhttp's table.
_PREFIXES = frozenset(m[:i] for m in KNOWN_METHODS | _REFUSED_LATE for i in range(1, len(m) + 1))


def method_refused(start: bytes, line_done: bool) -> bool:
    """Whether llhttp would have refused a request line that begins with ``start`` by now."""
    sp = start.find(b" ")
    if sp < 0:
        return line_done or start not in _PREFIXES
    method = start[:sp]
    if method in KNOWN_METHODS:
        return False
    return line_done or method not in _REFUSED_LATE


@dataclass(frozen=True, slots=True)
class ParserLimits:
    request_line: int = 8190
    fields: int = 100
    head: int = 65536
    h11_incomplete_event: int = 65536


class Sink(Protocol):
    #: Body bytes passed to ``on_body`` so far: an adapter tells by it which bytes of a read were
    #: body and which were framing (the httptools adapter bounds a trailer section with it).
    body_bytes: int

    def on_head(
        self, method: bytes, target: bytes, http_version: str, headers: list[tuple[bytes, bytes]], complete: bool
    ) -> None:
        """A request head. ``complete``: it frames no body (no Content-Length, no Transfer-Encoding,
        RFC 9112 §6.3), so the message ends here and no ``on_body`` or ``on_message_complete``
        follows for it: a GET costs two calls fewer."""

    def on_body(self, chunk: bytes) -> None: ...

    def on_message_complete(self) -> None: ...

    def on_upgrade_data(self, data: bytes) -> None:
        """Bytes that followed an Upgrade request's head: the next protocol's, not HTTP's."""


class ParserAdapter(Protocol):
    #: The parser library, as the start-up block and logs name it.
    name: ClassVar[str]

    def __init__(self, sink: Sink, limits: ParserLimits) -> None: ...

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises :class:`ProtocolError` on malformed input."""

    def stop(self) -> None:
        """Ignore everything after the current message (the connection will close)."""

    def detach(self) -> None:
        """The connection is gone: drop every reference back to it (no cycle for the GC to find)."""


def parser_class(name: str) -> type[ParserAdapter]:
    """Pick the adapter once at start-up: 'auto' prefers httptools where it imports."""
    if name in ("auto", "httptools"):
        try:
            from polycorn.parser_httptools import HttptoolsAdapter
        except ImportError:
            if name == "httptools":
                raise
        else:
            return HttptoolsAdapter
    from polycorn.parser_h11 import H11Adapter

    return H11Adapter
