"""Strict chunked request bodies (RFC 9112 §7.1) for the h11 adapter, decoded as llhttp does.

h11's own chunk reader takes what llhttp refuses (whitespace after a chunk size, loose chunk
extensions, bare LFs, folded and framing fields in the trailer section), so the same bytes would
be a request on one parser and a 400 on the other. The h11 adapter uses h11 for request heads
only and hands a chunked body to this decoder. The chunk-size line is checked byte by byte, as
llhttp does, so that no extension is ever held in memory; chunk data is passed on in slices.
"""

from __future__ import annotations

from polycorn.parsing import INVALID_VALUE_BYTE, MAX_LENGTH, TCHARS, ParserLimits, ProtocolError, Sink

_TCHAR = frozenset(TCHARS)
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
#: RFC 9110 §5.6.4: qdtext and the byte after a backslash in a quoted-string.
_QDTEXT = frozenset((0x09, 0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F), *range(0x80, 0x100)))
_QUOTED_PAIR = frozenset((0x09, 0x20, *range(0x21, 0x7F), *range(0x80, 0x100)))
_CR, _LF, _SEMICOLON, _EQUALS, _QUOTE, _BACKSLASH = 13, 10, 59, 61, 34, 92
#: Trailer fields that would change the framing after the fact (llhttp refuses them).
_FRAMING_FIELDS = (b"content-length", b"transfer-encoding")

# Decoder states: the chunk-size line, byte by byte, then the data, then the trailer section.
(
    _SIZE,
    _EXT_NAME_START,
    _EXT_NAME,
    _EXT_VALUE_START,
    _EXT_TOKEN,
    _EXT_QUOTED,
    _EXT_ESCAPE,
    _EXT_QUOTE_END,
    _SIZE_LF,
    _DATA,
    _DATA_CR,
    _DATA_LF,
    _TRAILERS,
) = range(13)


def _refuse(reason: str) -> ProtocolError:
    return ProtocolError(400, f"malformed request: {reason}")


class ChunkedBody:
    """One chunked request body: ``feed()`` until it returns where the message ended."""

    __slots__ = ("_sink", "_limits", "_state", "_size", "_digits", "_left", "_line", "_fields", "_field_bytes")

    def __init__(self, sink: Sink, limits: ParserLimits) -> None:
        self._sink = sink
        self._limits = limits
        self._state = _SIZE
        self._size = 0
        self._digits = 0
        self._left = 0  # data bytes of the current chunk still to come
        self._line = b""  # an incomplete trailer line
        self._fields = 0  # trailer fields, counted against the head's limits as llhttp's are
        self._field_bytes = 0

    def feed(self, data: bytes) -> int:
        """Decode ``data``; the offset just past the message once it ended, else -1."""
        i = 0
        n = len(data)
        sink = self._sink
        while i < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - i)
                sink.on_body(data[i : i + take])
                i += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_CR
                continue
            if state == _TRAILERS:
                end = data.find(b"\n", i)
                if end < 0:
                    self._line += data[i:]
                    if len(self._line) > self._limits.head:
                        raise ProtocolError(431, "request trailer section too large")
                    return -1
                line = self._line + data[i : end + 1]
                self._line = b""
                i = end + 1
                if self._trailer(line):
                    return i
                continue
            c = data[i]
            i += 1
            if state == _SIZE:
                digit = _HEX.get(c)
                if digit is not None:
                    self._size = size = self._size * 16 + digit
                    self._digits += 1
                    if size > MAX_LENGTH:
                        raise _refuse("chunk size too large")
                elif not self._digits:
                    raise _refuse("invalid chunk size")
                elif c == _CR:
                    self._state = _SIZE_LF
                elif c == _SEMICOLON:
                    self._state = _EXT_NAME_START
                else:
                    raise _refuse("invalid character after a chunk size")
            elif state == _SIZE_LF:
                if c != _LF:
                    raise _refuse("chunk size line without CRLF")
                if self._size:
                    self._left = self._size
                    self._state = _DATA
                else:
                    self._state = _TRAILERS
                self._size = self._digits = 0
            elif state == _DATA_CR:
                if c != _CR:
                    raise _refuse("chunk data longer than its size")
                self._state = _DATA_LF
            elif state == _DATA_LF:
                if c != _LF:
                    raise _refuse("chunk data without CRLF")
                self._state = _SIZE
            else:
                self._state = self._extension(state, c)
        return -1

    @staticmethod
    def _extension(state: int, c: int) -> int:
        """One byte of the chunk extensions: ``;name[=token or quoted-string]``, repeated."""
        if state == _EXT_NAME_START:
            if c in _TCHAR:
                return _EXT_NAME
        elif state in (_EXT_NAME, _EXT_TOKEN):
            if c in _TCHAR:
                return state
            if c == _SEMICOLON:
                return _EXT_NAME_START
            if c == _CR:
                return _SIZE_LF
            if c == _EQUALS and state == _EXT_NAME:
                return _EXT_VALUE_START
        elif state == _EXT_VALUE_START:
            if c == _QUOTE:
                return _EXT_QUOTED
            if c in _TCHAR:
                return _EXT_TOKEN
            if c == _SEMICOLON:
                return _EXT_NAME_START
            if c == _CR:
                return _SIZE_LF
        elif state == _EXT_QUOTED:
            if c == _QUOTE:
                return _EXT_QUOTE_END
            if c == _BACKSLASH:
                return _EXT_ESCAPE
            if c in _QDTEXT:
                return state
        elif state == _EXT_ESCAPE:
            if c in _QUOTED_PAIR:
                return _EXT_QUOTED
        elif state == _EXT_QUOTE_END:
            if c == _SEMICOLON:
                return _EXT_NAME_START
            if c == _CR:
                return _SIZE_LF
        raise _refuse("invalid chunk extension")

    def _trailer(self, line: bytes) -> bool:
        """One line of the trailer section (its LF included); True for the empty line that ends it."""
        if line == b"\r\n":
            return True
        if line[-2:] != b"\r\n":
            raise _refuse("bare LF as a line end")
        if line[:1] in (b" ", b"\t"):
            raise _refuse("obsolete line folding in a trailer field")
        name, colon, value = line[:-2].partition(b":")
        if not colon or not name or not _TCHAR.issuperset(name):
            raise _refuse("invalid trailer field")
        value = value.strip(b" \t")
        if INVALID_VALUE_BYTE(value) is not None:
            raise _refuse("invalid character in a trailer field value")
        if name.lower() in _FRAMING_FIELDS:
            raise _refuse("a framing field in the trailer section")
        self._fields += 1
        self._field_bytes += len(name) + len(value) + 4
        if self._fields > self._limits.fields:
            raise ProtocolError(431, "too many header fields")
        if self._field_bytes > self._limits.head:
            raise ProtocolError(431, "request head too large")
        return False
