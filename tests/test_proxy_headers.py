"""Proxy headers: X-Forwarded-For/-Proto/-Host and RFC 7239 Forwarded from trusted peers only.

Real servers on both parsers (the ``stack`` fixture); what counts is what the app finds in its
scope: ``client``, ``scheme`` and the ``host`` header.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from polycorn import forwarded
from polycorn.config import Config
from polycorn.errors import ConfigError
from tests.conftest import read_response
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    close_test_sockets,
    exchange,
    open_conn,
    recorder,
)
from tests.ws_apps import Recorder, echo_app


def request(*lines: bytes, host: bytes | None = b"origin.test") -> bytes:
    head = b"GET / HTTP/1.1\r\n" + (b"Host: " + host + b"\r\n" if host is not None else b"")
    return head + b"".join(line + b"\r\n" for line in lines) + b"Connection: close\r\n\r\n"


def seen(srv: Any, scopes: list[dict[str, Any]], *lines: bytes) -> dict[str, Any]:
    """The scope of one request with these extra header lines."""
    before = len(scopes)
    response = exchange(srv.port, request(*lines))
    assert response.startswith(b"HTTP/1.1 200"), response
    assert len(scopes) == before + 1
    return scopes[-1]


def host_values(scope: dict[str, Any]) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"host"]


# -- who is trusted ------------------------------------------------------------------------------------

_ALL_KINDS = (
    b"X-Forwarded-For: 203.0.113.9",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: proxy.test",
    b"Forwarded: for=198.51.100.1;proto=https;host=fwd.test",
)


@pytest.mark.parametrize(
    "options",
    [{"forwarded_allow_ips": "10.0.0.1"}, {"forwarded_allow_ips": "unix"}, {"proxy_headers": False}],
    ids=["other-address", "unix-only", "disabled"],
)
def test_untrusted_peer_headers_are_ignored(serve: Any, stack: dict[str, str], options: dict[str, Any]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_host=True, **options, **stack)
    for _ in range(2):  # the verdict is remembered per address: the second connection reads it back
        sock = open_conn(srv.port)
        sock.sendall(request(*_ALL_KINDS))
        assert read_response(sock)[0] == 200
        scope = scopes[-1]
        assert tuple(scope["client"]) == ("127.0.0.1", sock.getsockname()[1])
        assert scope["scheme"] == "http"
        assert host_values(scope) == [b"origin.test"]
        sock.close()


def test_nothing_is_resolved_without_cause(serve: Any, stack: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-request cost: neither an untrusted peer's headers nor a plain request reach apply()."""
    calls: list[Any] = []
    real = forwarded.apply

    def counting(*args: Any) -> Any:
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(forwarded, "apply", counting)
    scopes: list[dict[str, Any]] = []
    trusted = serve(recorder(scopes), **stack)
    untrusted = serve(recorder(scopes), forwarded_allow_ips="10.0.0.1", **stack)
    seen(untrusted, scopes, *_ALL_KINDS)
    seen(trusted, scopes, b"X-Other: 1")
    assert calls == []
    seen(trusted, scopes, b"X-Forwarded-Proto: https", b"X-Other: 1")
    assert calls == [[(b"x-forwarded-proto", b"https")]]


# -- X-Forwarded-For: the rightmost untrusted hop -----------------------------------------------------

# (X-Forwarded-For lines, the client host the app sees) with 127.0.0.1, 10.0.0.0/8 and
# 2001:db8:ff::/48 trusted.
_XFF_CASES = [
    ((b"X-Forwarded-For: 203.0.113.9",), "203.0.113.9"),
    ((b"X-Forwarded-For: 6.6.6.6, 203.0.113.9",), "203.0.113.9"),  # the client's own claim skipped
    ((b"X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.2.3, 10.4.5.6",), "203.0.113.9"),  # two hops
    ((b"X-Forwarded-For: 10.9.9.9, 10.1.2.3",), "10.9.9.9"),  # all trusted: the leftmost
    ((b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-For: 203.0.113.9, 10.1.2.3"), "203.0.113.9"),
    ((b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-For: 10.1.2.3"), "203.0.113.9"),  # lines joined
    ((b"X-Forwarded-For: 2001:db8::1, 2001:db8:ff::2",), "2001:db8::1"),
    ((b"X-Forwarded-For: [2001:db8::1]:4711, 10.1.2.3:80",), "2001:db8::1"),  # ports, brackets dropped
    ((b"X-Forwarded-For: 203.0.113.9:5123",), "203.0.113.9"),
    ((b"X-Forwarded-For: 6.6.6.6,, 203.0.113.9 ,",), "203.0.113.9"),  # empty entries skipped
    ((b"X-Forwarded-For: 6.6.6.6, unknown, 10.1.2.3",), "unknown"),  # a name: untrusted, kept as is
    ((b"X-Forwarded-For: _hidden",), "_hidden"),
    ((b"X-Forwarded-For: 6.6.6.6, not an address, 10.1.2.3",), "10.1.2.3"),  # ends the list
    ((b'X-Forwarded-For: 6.6.6.6, 203.0.113.9, 10.1.2.3"',), None),  # nothing usable: the peer
    ((b"X-Forwarded-For:",), None),
]


def test_x_forwarded_for_takes_the_rightmost_untrusted_hop(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_allow_ips="127.0.0.1, 10.0.0.0/8, 2001:db8:ff::/48", **stack)
    for lines, expected in _XFF_CASES:
        client = seen(srv, scopes, *lines)["client"]
        if expected is None:
            assert client[0] == "127.0.0.1" and client[1] != 0, lines
        else:
            assert tuple(client) == (expected, 0), lines


def test_trust_all_takes_the_leftmost_hop(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_allow_ips="*", **stack)
    assert seen(srv, scopes, b"X-Forwarded-For: 192.0.2.1, 203.0.113.9, 10.1.2.3")["client"] == ("192.0.2.1", 0)
    assert seen(srv, scopes, b"Forwarded: for=192.0.2.1, for=10.1.2.3")["client"] == ("192.0.2.1", 0)


# -- X-Forwarded-Proto -------------------------------------------------------------------------------------


def test_x_forwarded_proto(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    cases = [
        (b"https", "https"),
        (b"HTTP", "http"),
        (b"wss", "https"),  # a plain request is http or https: ws/wss mean the same
        (b"ws", "http"),
        (b"http, https", "https"),  # the nearest proxy's entry, the last
        (b"gopher", "http"),  # not a web scheme: ignored
        (b"https;x", "http"),
    ]
    for value, scheme in cases:
        assert seen(srv, scopes, b"X-Forwarded-Proto: " + value)["scheme"] == scheme, value
    assert seen(srv, scopes, b"X-Forwarded-Proto: http", b"X-Forwarded-Proto: https")["scheme"] == "https"


# -- X-Forwarded-Host (--forwarded-host) -------------------------------------------------------------------


def test_x_forwarded_host_is_off_by_default(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    scope = seen(srv, scopes, b"X-Forwarded-Host: example.com", b"Forwarded: host=fwd.test")
    assert host_values(scope) == [b"origin.test"]
    assert (b"x-forwarded-host", b"example.com") in scope["headers"]


def test_x_forwarded_host_replaces_host(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_host=True, **stack)
    cases = [
        (b"example.com", b"example.com"),
        (b"example.com:8443", b"example.com:8443"),
        (b"[2001:db8::1]:8443", b"[2001:db8::1]:8443"),
        (b"client.test, example.com", b"example.com"),  # the nearest proxy's entry
        (b"bad host", b"origin.test"),  # invalid: ignored
        (b"evil.test/path", b"origin.test"),
        (b"example.com:99999999", b"origin.test"),
    ]
    for value, host in cases:
        scope = seen(srv, scopes, b"X-Forwarded-Host: " + value)
        assert host_values(scope) == [host], value
        assert scope["server"] == ("127.0.0.1", srv.port)  # the socket, whatever the proxy says
    # Headers keep their order; the Host header keeps its place.
    scope = seen(srv, scopes, b"X-Forwarded-Host: example.com", b"X-After: 1")
    names = [name for name, _ in scope["headers"]]
    assert names.index(b"host") == 0 and names[-2:] == [b"x-after", b"connection"]


def test_x_forwarded_host_without_host_header(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_host=True, **stack)
    raw = b"GET / HTTP/1.0\r\nX-Forwarded-Host: example.com\r\n\r\n"
    assert exchange(srv.port, raw).startswith(b"HTTP/1.1 200")
    assert host_values(scopes[-1]) == [b"example.com"]


# -- Forwarded (RFC 7239) ---------------------------------------------------------------------------------

# (Forwarded lines, (client host or None for the peer, scheme, host header)) with 127.0.0.1 and
# 10.0.0.0/8 trusted and --forwarded-host.
_FORWARDED_CASES = [
    ((b"Forwarded: for=203.0.113.9;proto=https;host=example.com",), ("203.0.113.9", "https", b"example.com")),
    ((b'Forwarded: For="203.0.113.9:4711" ; PROTO=HTTPS',), ("203.0.113.9", "https", b"origin.test")),
    ((b'Forwarded: for="[2001:db8:cafe::17]:4711"',), ("2001:db8:cafe::17", "http", b"origin.test")),
    ((b'Forwarded: for="[2001:db8:cafe::17]"',), ("2001:db8:cafe::17", "http", b"origin.test")),
    ((b"Forwarded: for=unknown;proto=https",), ("unknown", "https", b"origin.test")),
    ((b"Forwarded: for=_hidden, for=10.1.2.3",), ("_hidden", "http", b"origin.test")),
    ((b'Forwarded: for="_abc:_port"',), ("_abc", "http", b"origin.test")),
    # The rightmost untrusted element; its own proto and host, not those of the hops after it.
    (
        (
            b"Forwarded: for=6.6.6.6;proto=http;host=evil.test, for=203.0.113.9;proto=https;host=a.test, "
            b"for=10.1.2.3;proto=http;host=inner.test",
        ),
        ("203.0.113.9", "https", b"a.test"),
    ),
    # Several lines form one list.
    ((b"Forwarded: for=203.0.113.9;proto=https", b"Forwarded: for=10.1.2.3"), ("203.0.113.9", "https", b"origin.test")),
    # Quoted values with separators and escapes inside.
    ((b'Forwarded: for=203.0.113.9;host="a.test:8080";ext="x, y; \\"z\\""',), ("203.0.113.9", "http", b"a.test:8080")),
    # No for=: the element keeps its client secret; its proto still counts.
    ((b"Forwarded: proto=https",), (None, "https", b"origin.test")),
    ((b"Forwarded: for=6.6.6.6, proto=https;by=10.0.0.1",), (None, "https", b"origin.test")),
    # Malformed: that part and everything left of it are dropped.
    ((b'Forwarded: for=6.6.6.6;proto=https, for=", for=203.0.113.9',), ("203.0.113.9", "http", b"origin.test")),
    ((b"Forwarded: for=6.6.6.6, for=203.0.113.9;for=10.1.2.3",), (None, "http", b"origin.test")),
    ((b"Forwarded: for=6.6.6.6, for=not/an/address, for=10.1.2.3",), ("10.1.2.3", "http", b"origin.test")),
    ((b'Forwarded: for=203.0.113.9;proto=gopher;host="bad/host"',), ("203.0.113.9", "http", b"origin.test")),
    ((b"Forwarded: for=203.0.113.9;host=bad/host",), (None, "http", b"origin.test")),  # '/' is no token
    ((b"Forwarded: for=203.0.113.9;proto=wss",), ("203.0.113.9", "https", b"origin.test")),
]


def test_forwarded_header(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_allow_ips="127.0.0.1, 10.0.0.0/8", forwarded_host=True, **stack)
    for lines, (client, scheme, host) in _FORWARDED_CASES:
        scope = seen(srv, scopes, *lines)
        if client is None:
            assert scope["client"][0] == "127.0.0.1" and scope["client"][1] != 0, lines
        else:
            assert tuple(scope["client"]) == (client, 0), lines
        assert scope["scheme"] == scheme, lines
        assert host_values(scope) == [host], lines


def test_x_forwarded_headers_win_over_forwarded(serve: Any, stack: dict[str, str]) -> None:
    """Per field: a client's Forwarded, passed on by an X-Forwarded-* proxy, changes nothing."""
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_host=True, **stack)
    forged = b"Forwarded: for=6.6.6.6;proto=https;host=evil.test"
    scope = seen(
        srv, scopes, forged, b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: http", b"X-Forwarded-Host: a.test"
    )
    assert (scope["client"], scope["scheme"], host_values(scope)) == (("203.0.113.9", 0), "http", [b"a.test"])
    # An X- header that is present but unusable still shuts out the Forwarded parameter.
    scope = seen(
        srv, scopes, forged, b"X-Forwarded-For: bad value", b"X-Forwarded-Proto: gopher", b"X-Forwarded-Host: x y"
    )
    assert scope["client"][0] == "127.0.0.1" and scope["client"][1] != 0
    assert (scope["scheme"], host_values(scope)) == ("http", [b"origin.test"])
    # Each parameter stands alone: a missing X- header leaves its field to Forwarded.
    scope = seen(srv, scopes, forged, b"X-Forwarded-For: 203.0.113.9")
    assert (scope["client"], scope["scheme"], host_values(scope)) == (("203.0.113.9", 0), "https", [b"evil.test"])
    scope = seen(srv, scopes, b"X-Forwarded-Proto: https", b"Forwarded: for=203.0.113.9;proto=http")
    assert (scope["client"], scope["scheme"]) == (("203.0.113.9", 0), "https")


# -- UNIX sockets: 'unix' ----------------------------------------------------------------------------------


@pytest.fixture
def uds_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:  # short: AF_UNIX paths are limited to ~100 bytes
        yield os.path.join(tmp, "p.sock")


def uds_exchange(path: str, raw: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


_UDS_REQUEST = request(b"X-Forwarded-For: 6.6.6.6, 203.0.113.9", b"Forwarded: proto=https")


@pytest.mark.parametrize(
    ("allow", "trusted"), [("unix", True), ("10.0.0.0/8, UNIX", True), ("*", True), ("127.0.0.1", False)]
)
def test_unix_socket_peers(serve: Any, stack: dict[str, str], uds_path: str, allow: str, trusted: bool) -> None:
    scopes: list[dict[str, Any]] = []
    serve(recorder(scopes), uds=uds_path, forwarded_allow_ips=allow, **stack)
    assert uds_exchange(uds_path, _UDS_REQUEST).startswith(b"HTTP/1.1 200")
    scope = scopes[-1]
    assert scope["server"] == (uds_path, None)
    if trusted:
        expected = "6.6.6.6" if allow == "*" else "203.0.113.9"  # '*' trusts every hop too
        assert (scope["client"], scope["scheme"]) == ((expected, 0), "https")
    else:
        assert (scope["client"], scope["scheme"]) == (None, "http")


def test_unix_trust_on_an_inherited_socket(serve: Any, uds_path: str) -> None:
    """--fd with an AF_UNIX listening socket: its peers are UNIX socket peers too."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(uds_path)
        listener.listen(8)
        fd = os.dup(listener.fileno())  # the server's own copy, which it closes on exit
    scopes: list[dict[str, Any]] = []
    serve(recorder(scopes), fd=fd, forwarded_allow_ips="unix")
    assert uds_exchange(uds_path, _UDS_REQUEST).startswith(b"HTTP/1.1 200")
    assert scopes[-1]["client"] == ("203.0.113.9", 0)


def test_unix_does_not_trust_tcp_peers(serve: Any) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_allow_ips="unix")
    scope = seen(srv, scopes, b"X-Forwarded-For: 203.0.113.9")
    assert scope["client"][0] == "127.0.0.1"


# -- WebSockets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value", "scheme"),
    [
        ("X-Forwarded-Proto", "https", "wss"),
        ("X-Forwarded-Proto", "wss", "wss"),
        ("X-Forwarded-Proto", "ws", "ws"),
        ("X-Forwarded-Proto", "gopher", "ws"),
        ("Forwarded", "for=203.0.113.9;proto=https", "wss"),
    ],
)
def test_websocket_scheme_from_a_proxy(serve: Any, stack: dict[str, str], header: str, value: str, scheme: str) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), **stack)

    async def client() -> None:
        url = f"ws://127.0.0.1:{srv.port}/ws"
        headers = {header: value, "X-Forwarded-For": "198.51.100.7"}
        async with ws_connect(url, additional_headers=headers, proxy=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"

    asyncio.run(asyncio.wait_for(client(), 20))
    (scope,) = rec.scopes
    assert scope["scheme"] == scheme
    assert scope["client"] == ("198.51.100.7", 0)


def test_websocket_from_an_untrusted_peer(serve: Any) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), forwarded_allow_ips="10.0.0.1")

    async def client() -> None:
        headers = {"X-Forwarded-Proto": "https", "Forwarded": "proto=https"}
        async with ws_connect(f"ws://127.0.0.1:{srv.port}/ws", additional_headers=headers, proxy=None):
            pass

    asyncio.run(asyncio.wait_for(client(), 20))
    assert rec.scopes[0]["scheme"] == "ws"
    assert rec.scopes[0]["client"][0] == "127.0.0.1"


# -- the parser on its own -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "elements"),
    [
        ([b"for=a"], [{b"for": b"a"}]),
        ([b"For=a;BY=b, for=c"], [{b"for": b"a", b"by": b"b"}, {b"for": b"c"}]),
        ([b"for=a", b"for=b"], [{b"for": b"a"}, {b"for": b"b"}]),
        ([b' for="[::1]:80" ;;proto=http ,, '], [{b"for": b"[::1]:80", b"proto": b"http"}]),
        ([b'for="a\\"b\\\\c,d;e"'], [{b"for": b'a"b\\c,d;e'}]),
        ([b""], []),
        ([b"garbage"], []),
        ([b"for=a, garbage, for=b"], [{b"for": b"b"}]),
        ([b"for=a", b"for=b;for=c", b"for=d"], [{b"for": b"d"}]),  # a parameter twice: malformed
        ([b'for="unterminated, for=b'], [{b"for": b"b"}]),
        ([b"for = a"], []),  # RFC 7239: no space around '='
    ],
)
def test_parse_forwarded(values: list[bytes], elements: list[dict[bytes, bytes]]) -> None:
    assert forwarded.parse_forwarded(values) == elements


# -- configuration -------------------------------------------------------------------------------------------


def test_forwarded_allow_ips_accepts_unix() -> None:
    config = Config(forwarded_allow_ips="10.0.0.0/8, unix")
    assert config.forwarded_unix is True
    nets = config.forwarded_networks
    assert nets is not None and [str(n) for n in nets] == ["10.0.0.0/8"]
    assert Config(forwarded_allow_ips="UNIX").forwarded_networks == ()
    assert Config(forwarded_allow_ips="*").forwarded_unix is True
    assert Config().forwarded_unix is False
    assert Config().forwarded_host is False


@pytest.mark.parametrize("value", ["unix:/run/p.sock", "localhost", "10.0.0.0/8, uni", "10.0.0.1-10.0.0.9"])
def test_forwarded_allow_ips_refuses_garbage(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(forwarded_allow_ips=value)
    assert "--forwarded-allow-ips" in str(info.value)
    assert info.value.exit_code == 2
