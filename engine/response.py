"""Precomputed response bytes: status lines, interim and error responses.

Built once at import so that the per-response work is a dict lookup and a join.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from polycorn.parsing import TCHARS

#: Reason phrases as RFC 9110 §15 names them; http.HTTPStatus still has older ones on some Pythons
#: (3.11's 414 is "Request-URI Too Long"), and the answer must not depend on the interpreter.
PHRASES: dict[int, bytes] = {
    **{s.value: s.phrase.encode("ascii") for s in HTTPStatus},
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}

STATUS_LINES: dict[int, bytes] = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, phrase) for status, phrase in PHRASES.items()
}

#: RFC 9110 §15.2.1; sent only when the app first calls receive() (RFC 9110 §10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Statuses whose responses never carry content (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))

#: A header field name (RFC 9110 §5.1).
TOKEN = re.compile(b"[%s]+" % re.escape(TCHARS)).fullmatch


#: What no header value may hold (and each line ends with a CR and an LF).
_LINE_BREAKS = b"\r\n\0"


def valid_header_block(block: bytes, lines: int) -> bool:
    """Whether ``lines`` "name: value" CRLF lines, with token names, carry no CR, LF or NUL in a value.

    The app must not be able to inject a header or a second response (response splitting): with
    names checked to be tokens, the only CRs and LFs may be the line ends. Checked once over the
    joined block, not per value, in one pass: deleting CR, LF and NUL removes two bytes per line.
    """
    return len(block) - len(block.translate(None, _LINE_BREAKS)) == 2 * lines


def status_line(status: int) -> bytes:
    """The status line for any three-digit code, known to http.HTTPStatus or not."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status code {status!r}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def error_response(status: int, date_line: bytes, *, close: bool = True, headers: bytes = b"") -> bytes:
    """A small, complete, well-formed plain-text error response."""
    phrase = PHRASES[status]
    return b"".join(
        (
            STATUS_LINES[status],
            date_line,
            headers,
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(phrase),
            b"connection: close\r\n\r\n" if close else b"\r\n",
            phrase,
        )
    )
