"""Precomputed response bytes: status lines, interim and error responses.

Built once at import so that the per-response work is a dict lookup and a join.
"""

from __future__ import annotations

import re
from http import HTTPStatus

STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}

#: RFC 9110 §15.2.1; sent only when the app first calls receive() (RFC 9110 §10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Statuses whose responses never carry content (RFC 9110 §6.4.1).
NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))

#: A response header block: token names, a colon and a value free of CR, LF and NUL. Checked once
#: per response over the joined block instead of twice per header: the app must not be able to
#: inject a header or a second response (response splitting).
VALID_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00\r\n]*\r\n)*\Z").match


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
    phrase = HTTPStatus(status).phrase.encode("ascii")
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
