"""What a trusted proxy says about the request it forwards: the client, the scheme, the host.

Sources are ``X-Forwarded-For`` / ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` and RFC 7239
``Forwarded``. The connection collects these header fields only from a peer in
--forwarded-allow-ips and calls :func:`apply` only when it saw one, so a request without them,
or from any other peer, costs nothing here.

Client addresses are read right to left, since every proxy appends the address it received the
request from: entries that are trusted proxies are skipped, and the first entry that is not is the
client. Everything further left was written by that client and proves nothing. If every entry is
trusted, the leftmost one is taken. An entry that is neither an IP address nor an identifier
(``unknown``, an obfuscated ``_node``, a host name) cannot be attributed to anyone: it ends the
list, as if nothing stood left of it. Identifiers are never trusted, so one ends the walk and
becomes the client host as it is (the port is always 0).

Per field, an ``X-Forwarded-*`` header a trusted peer sent wins over ``Forwarded``: the proxies in
common use set (and overwrite) the X- headers but pass a client's ``Forwarded`` through untouched,
so a ``Forwarded`` that won would let any client behind them name its own address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from polycorn.parsing import TCHARS

#: The scheme an HTTP request gets from X-Forwarded-Proto or ``proto=``. A WebSocket session turns
#: http/https into ws/wss itself, so ``ws``/``wss`` from a proxy mean the same as http/https.
_SCHEMES = {b"http": "http", b"https": "https", b"ws": "http", b"wss": "https"}.get

#: An IPv4 address, host name, ``unknown`` or obfuscated identifier (RFC 7239 §6), or a port.
_NAME = re.compile(rb"[A-Za-z0-9._-]+\Z").match
#: What may stand in an IPv6 address (the ``ipaddress`` module decides whether it is one).
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z").match
#: A Host value: reg-name, IPv4 or [IPv6], and an optional port (RFC 9110 §7.2), kept strict.
_HOST = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z").match

_TOKEN = b"[%s]+" % re.escape(TCHARS)
#: One piece of a Forwarded field (RFC 7239 §4): an optional ``name=value`` pair and what follows
#: it, ``;`` (same element), ``,`` (next element) or the end.
_PIECE = re.compile(rb"[ \t]*(?:(" + _TOKEN + rb")=(?:(" + _TOKEN + rb')|"((?:[^"\\]|\\.)*)"))?[ \t]*(,|;|\Z)').match
_QUOTED_PAIR = re.compile(rb"\\(.)")


def apply(
    fields: Sequence[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
    headers: list[tuple[bytes, bytes]],
    trusted: Callable[[str], bool],
    with_host: bool,
) -> tuple[tuple[str, int] | None, str, list[tuple[bytes, bytes]]]:
    """The scope's client, scheme and headers once the proxy headers in ``fields`` are applied.

    ``fields`` are (lower-case name, value) pairs, in request order, of the four proxy headers;
    ``trusted(host)`` says whether an address is a trusted proxy. With ``with_host``
    (--forwarded-host), a valid forwarded host replaces the Host header.
    """
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    xfp = xfh = None
    for name, value in fields:
        if name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            xfp = value
        elif name == b"x-forwarded-host":
            xfh = value
        else:
            forwarded.append(value)
    host = None
    if forwarded and (not xff or xfp is None or (with_host and xfh is None)):
        element = _forwarded_element(forwarded, trusted)
        if element is not None:
            if not xff and element[0] is not None:
                client = (element[0], 0)
            proto = element[1].get(b"proto")
            if xfp is None and proto is not None:
                scheme = _SCHEMES(proto.lower()) or scheme
            if with_host and xfh is None:
                host = element[1].get(b"host")
    if xff:
        hops = _xff_hops(xff)
        if hops:
            client = (hops[_client_index(hops, trusted)], 0)
    if xfp is not None:
        # The nearest proxy's word: the last entry of the last field.
        scheme = _SCHEMES(xfp.rpartition(b",")[2].strip().lower()) or scheme
    if with_host and xfh is not None:
        host = xfh.rpartition(b",")[2].strip()
    if host is not None and _HOST(host):
        headers = _with_host(headers, host)
    return client, scheme, headers


def _node(entry: bytes) -> str | None:
    """The host of one address entry, without brackets and port; None if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]:80``, ``unknown``,
    ``_hidden`` and host names.
    """
    if entry[:1] == b"[":
        host, sep, port = entry[1:].partition(b"]")
        if not sep or not _IPV6(host) or (port and not (port[:1] == b":" and _NAME(port[1:]))):
            return None
    elif entry.count(b":") > 1:
        host = entry
        if not _IPV6(host):
            return None
    else:
        host, sep, port = entry.partition(b":")
        if not _NAME(host) or (sep and not _NAME(port)):
            return None
    return host.decode("ascii")


def _client_index(hosts: Sequence[str | None], trusted: Callable[[str], bool]) -> int:
    """The rightmost entry that is not a trusted proxy (None: undisclosed), else the leftmost."""
    for i in range(len(hosts) - 1, 0, -1):
        host = hosts[i]
        if host is None or not trusted(host):
            return i
    return 0


def _xff_hops(values: Sequence[bytes]) -> list[str]:
    """The X-Forwarded-For entries right of the last invalid one, fields joined in order."""
    hops: list[str] = []
    for value in values:
        for entry in value.split(b","):
            entry = entry.strip()
            if not entry:
                continue  # RFC 9110 §5.6.1: empty list elements are ignored
            host = _node(entry)
            if host is None:
                hops.clear()
            else:
                hops.append(host)
    return hops


def _forwarded_element(
    values: Sequence[bytes], trusted: Callable[[str], bool]
) -> tuple[str | None, dict[bytes, bytes]] | None:
    """The Forwarded element of the hop the client is taken from: (its ``for`` host, its pairs).

    An element without ``for=`` does not disclose its client, so it ends the walk like an
    untrusted address does, with None as the host.
    """
    hops: list[str | None] = []
    elements: list[dict[bytes, bytes]] = []
    for element in parse_forwarded(values):
        node = element.get(b"for")
        host = None
        if node is not None:
            host = _node(node)
            if host is None:  # an invalid node ends the list, like a malformed element
                hops.clear()
                elements.clear()
                continue
        hops.append(host)
        elements.append(element)
    if not elements:
        return None
    i = _client_index(hops, trusted)
    return hops[i], elements[i]


def parse_forwarded(values: Sequence[bytes]) -> list[dict[bytes, bytes]]:
    """The elements of Forwarded fields (RFC 7239 §4), each as {lower-case name: unquoted value}.

    The fields form one list, in order. A malformed part, or a parameter given twice in one
    element, drops itself and everything before it (what stands left of it cannot be attributed);
    parsing resumes after the next comma, where a proxy that appended its element starts.
    """
    elements: list[dict[bytes, bytes]] = []
    for value in values:
        element: dict[bytes, bytes] = {}
        pos = 0
        while True:
            m = _PIECE(value, pos)
            name = m[1].lower() if m is not None and m[1] is not None else None
            if m is None or (name is not None and name in element):
                elements.clear()
                element = {}
                comma = value.find(b",", pos)
                if comma < 0:
                    break
                pos = comma + 1
                continue
            if name is not None:
                token, quoted = m[2], m[3]
                element[name] = token if token is not None else _unquote(quoted)
            sep = m[4]
            if sep != b";":
                if element:
                    elements.append(element)
                    element = {}
                if not sep:
                    break
            pos = m.end()
    return elements


def _unquote(quoted: bytes) -> bytes:
    return _QUOTED_PAIR.sub(rb"\1", quoted) if b"\\" in quoted else quoted


def _with_host(headers: list[tuple[bytes, bytes]], host: bytes) -> list[tuple[bytes, bytes]]:
    """A copy of ``headers`` whose Host is ``host`` (added where the request had none)."""
    if any(n == b"host" for n, _ in headers):
        return [(n, host) if n == b"host" else (n, v) for n, v in headers]
    return [*headers, (b"host", host)]
