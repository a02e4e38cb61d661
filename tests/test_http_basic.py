"""HTTP/1.1 basics over real sockets: the ASGI scope, response framing, headers, pathsend, logs.

Every protocol test runs on all four (parser, loop) stacks through the ``stack`` fixture.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import httpx
import pytest

from tests.conftest import is_closed, read_response
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    assert_error_response,
    capture_polycorn_logs,
    close_test_sockets,
    dechunk,
    exchange,
    header_values,
    open_conn,
    recorder,
    responder,
    split_response,
    wait_for,
)

# -- the scope ---------------------------------------------------------------------------------------


def test_scope_keys(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    sock = open_conn(srv.port)
    sock.sendall(
        b"GET /caf%C3%A9/a%20b?x=1&y=%20z HTTP/1.1\r\n"
        b"Host: example.org\r\n"
        b"X-Custom: Value\r\n"
        b"x-custom: two\r\n"
        b"ACCEPT: */*\r\n"
        b"\r\n"
    )
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"ok")
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert re.fullmatch(r"2\.\d+", scope["asgi"]["spec_version"])
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/a b"  # percent-decoded, UTF-8
    assert isinstance(scope["path"], str)
    assert scope["raw_path"] == b"/caf%C3%A9/a%20b"
    assert scope["query_string"] == b"x=1&y=%20z"
    assert scope["root_path"] == ""
    headers = [tuple(h) for h in scope["headers"]]
    assert headers == [
        (b"host", b"example.org"),
        (b"x-custom", b"Value"),
        (b"x-custom", b"two"),
        (b"accept", b"*/*"),
    ]
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in headers)
    assert tuple(scope["client"]) == ("127.0.0.1", sock.getsockname()[1])
    assert tuple(scope["server"]) == ("127.0.0.1", srv.port)
    assert scope["state"] == {}
    assert "http.response.pathsend" in scope["extensions"]
    sock.close()


def test_scope_http10_and_method(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    data = exchange(srv.port, b"POST /submit?a=b HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
    line, _, body = split_response(data)
    assert line.startswith("HTTP/1.1 200") and body == b"ok"
    scope = scopes[0]
    assert (scope["http_version"], scope["method"], scope["path"], scope["query_string"]) == (
        "1.0",
        "POST",
        "/submit",
        b"a=b",
    )


def test_scope_root_path(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), root_path="/api", **stack)
    with httpx.Client(base_url=srv.url, trust_env=False) as client:
        assert client.get("/items/a%20b?q=1").status_code == 200
    scope = scopes[0]
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/items/a b"
    assert scope["raw_path"] == b"/api/items/a%20b"
    assert scope["query_string"] == b"q=1"


def test_scope_state_is_a_copy_of_lifespan_state(serve: Any, stack: dict[str, str]) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["x"] = 1
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        seen.append(dict(scope["state"]))
        scope["state"]["x"] = 99
        scope["state"]["leak"] = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    for _ in range(2):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
    sock.close()
    with httpx.Client(trust_env=False) as client:
        assert client.get(srv.url).status_code == 200
    assert seen == [{"x": 1}, {"x": 1}, {"x": 1}]


def test_absolute_form_target(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET http://example.com/a/b?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.sendall(b"GET http://example.com?only=query HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert read_response(sock)[0] == 200
    sock.close()
    assert (scopes[0]["path"], scopes[0]["raw_path"], scopes[0]["query_string"]) == ("/a/b", b"/a/b", b"x=1")
    assert (scopes[1]["path"], scopes[1]["query_string"]) == ("/", b"only=query")


# -- response framing -----------------------------------------------------------------------------------


async def _streamer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one,", b"two,", b"", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_chunked_response(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_streamer, **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line, headers, rest = split_response(data)
    assert line == "HTTP/1.1 200 OK"
    assert header_values(headers, "transfer-encoding") == ["chunked"]
    assert header_values(headers, "content-length") == []
    body, after = dechunk(rest)
    assert body == b"one,two,three"
    assert after == b""
    # An empty more_body part must not emit the zero-size chunk that ends the body early.
    assert rest.count(b"\r\n0\r\n") == 1 and rest.endswith(b"0\r\n\r\n")


def test_chunked_response_keeps_connection(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_streamer, **stack)
    sock = open_conn(srv.port)
    for _ in range(2):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"one,two,three")
        assert headers["transfer-encoding"] == "chunked"
    sock.close()


def test_streamed_response_to_http10_is_close_delimited(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(_streamer, **stack)
    # Even a keep-alive HTTP/1.0 client: without chunked coding only the close ends the body.
    data = exchange(srv.port, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    line, headers, body = split_response(data)
    assert line.startswith("HTTP/1.1 200")
    assert header_values(headers, "transfer-encoding") == []
    assert header_values(headers, "content-length") == []
    assert header_values(headers, "connection") == ["close"]
    assert body == b"one,two,three"


def test_content_length_computed_for_single_body(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(body=b"x" * 1234), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, body = split_response(data)
    assert header_values(headers, "content-length") == ["1234"]
    assert header_values(headers, "transfer-encoding") == []
    assert body == b"x" * 1234


@pytest.mark.parametrize("app_length", [True, False], ids=["app-content-length", "computed"])
def test_head_response_has_no_body(serve: Any, stack: dict[str, str], app_length: bool) -> None:
    headers = [(b"content-type", b"text/plain"), (b"x-app", b"1")]
    if app_length:
        headers.append((b"content-length", b"11"))
    srv = serve(responder(headers=headers, body=b"hello world"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, resp_headers, _ = read_response(sock, head_only=True)
    assert status == 200
    assert resp_headers["content-length"] == "11"
    assert resp_headers["x-app"] == "1"
    assert resp_headers["content-type"] == "text/plain"
    # No body bytes may follow the head: the next response must start right after it.
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock)
    assert (status, body) == (200, b"hello world")
    sock.close()


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(serve: Any, stack: dict[str, str], status: int) -> None:
    srv = serve(responder(status=status, body=b"must not be sent"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    data = b""
    while data.count(b"\r\n\r\n") < 2:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert not is_closed(sock, 0.2)
    assert b"must not be sent" not in data
    first, _, second = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 %d " % status)
    assert second.startswith(b"HTTP/1.1 %d " % status) and second.endswith(b"\r\n\r\n")
    _, headers, _ = split_response(data)
    assert header_values(headers, "transfer-encoding") == []
    if status == 204:
        assert header_values(headers, "content-length") == []
    sock.close()


def test_send_returns_an_awaitable_asyncio_can_wrap(serve: Any, stack: dict[str, str]) -> None:
    """``send`` is an awaitable callable (not always a coroutine): wait_for, ensure_future and
    gather take what it returns, and the messages still go out in order."""
    import asyncio

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.wait_for(send({"type": "http.response.start", "status": 200, "headers": []}), 5)
        await asyncio.ensure_future(send({"type": "http.response.body", "body": b"one ", "more_body": True}))
        await asyncio.gather(send({"type": "http.response.body", "body": b"two"}))

    srv = serve(app, **stack)
    status, headers, body = split_response(
        exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    )
    assert status == "HTTP/1.1 200 OK"
    assert ("transfer-encoding", "chunked") in headers
    assert dechunk(body) == (b"one two", b"")  # (body, bytes after it)


# -- response headers ------------------------------------------------------------------------------------


def test_header_injection_is_refused(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(responder(headers=[(b"x-evil", b"a\r\nx-injected: 1")], body=b"secret"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 500
    assert "x-injected" not in headers and "x-evil" not in headers
    assert b"secret" not in body
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # nothing follows the 500, and the connection stays open
    assert any("exception in ASGI app" in r.getMessage() for r in caplog.records)
    sock.close()


@pytest.mark.parametrize("value", [b"a\nb", b"a\rb", b"a\x00b"], ids=["lf", "cr", "nul"])
def test_header_value_control_bytes_refused(serve: Any, stack: dict[str, str], value: bytes) -> None:
    srv = serve(responder(headers=[(b"x-bad", value)]), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line, headers, _ = split_response(data)
    assert line.startswith("HTTP/1.1 500")
    assert header_values(headers, "x-bad") == []


@pytest.mark.parametrize(
    "name",
    [b"x bad", b"x:evil", b"", b"x\r\ny", b"caf\xe9", "x-str"],
    ids=["space", "colon", "empty", "crlf", "non-ascii", "str"],
)
def test_header_name_not_a_token_refused(serve: Any, stack: dict[str, str], name: Any) -> None:
    srv = serve(responder(headers=[(b"x-ok", b"1"), (name, b"v")]), **stack)
    for _ in range(2):  # the second time the known name x-ok comes from the cache of names seen
        data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        line, headers, _ = split_response(data)
        assert line.startswith("HTTP/1.1 500")
        assert header_values(headers, "x-ok") == []


def test_header_names_as_bytearray_and_mixed_case(serve: Any, stack: dict[str, str]) -> None:
    headers = [(bytearray(b"X-Array"), b"1"), (b"Content-Length", b"2"), (b"SERVER", b"mine")]
    srv = serve(responder(headers=headers, body=b"ok"), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    line, got, body = split_response(data)
    assert line.startswith("HTTP/1.1 200") and body == b"ok"
    assert header_values(got, "x-array") == ["1"]
    assert header_values(got, "server") == ["mine"]  # the app's server header replaces ours
    assert header_values(got, "content-length") == ["2"]


def test_app_server_and_date_headers_replace_defaults(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(headers=[(b"Server", b"mine/1.0"), (b"date", b"Thu, 01 Jan 1970 00:00:00 GMT")]), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, body = split_response(data)
    assert header_values(headers, "server") == ["mine/1.0"]
    assert header_values(headers, "date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
    assert body == b"hello"


def test_default_server_and_date_headers(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(), **stack)
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, _ = split_response(data)
    assert header_values(headers, "server") == ["polycorn"]
    (date,) = header_values(headers, "date")
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)


def test_no_server_no_date_and_custom_headers(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(
        responder(),
        server_header=False,
        date_header=False,
        headers=[("X-A", "b"), "X-Other: two words"],
        **stack,
    )
    data = exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    _, headers, body = split_response(data)
    assert header_values(headers, "server") == []
    assert header_values(headers, "date") == []
    assert header_values(headers, "x-a") == ["b"]
    assert header_values(headers, "x-other") == ["two words"]
    assert body == b"hello"


def test_custom_headers_with_app_replacing_server(serve: Any, stack: dict[str, str]) -> None:
    srv = serve(responder(headers=[(b"server", b"app")]), headers=[("X-A", "b")], date_header=False, **stack)
    with httpx.Client(trust_env=False) as client:
        response = client.get(srv.url)
    assert response.headers.get_list("server") == ["app"]
    assert response.headers.get_list("x-a") == ["b"]
    assert "date" not in response.headers


# -- pathsend ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    data = os.urandom(3 * 1024 * 1024)
    path = tmp_path_factory.mktemp("pathsend") / "blob.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.mark.parametrize("app_length", [True, False], ids=["app-content-length", "server-content-length"])
def test_pathsend(serve: Any, stack: dict[str, str], big_file: tuple[str, bytes], app_length: bool) -> None:
    path, data = big_file

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-type", b"application/octet-stream")]
        if app_length:
            headers.append((b"content-length", b"%d" % len(data)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": path})

    srv = serve(app, **stack)
    sock = open_conn(srv.port)
    for _ in range(2):  # the connection stays usable after a file response
        sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200
        assert headers["content-length"] == str(len(data))
        assert len(body) == len(data)
        assert body == data
    sock.close()


def test_pathsend_http10_and_head(serve: Any, stack: dict[str, str], big_file: tuple[str, bytes]) -> None:
    path, data = big_file

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": path})

    srv = serve(app, **stack)
    _, headers, body = split_response(exchange(srv.port, b"GET / HTTP/1.0\r\n\r\n"))
    assert header_values(headers, "content-length") == [str(len(data))]
    assert body == data
    sock = open_conn(srv.port)
    sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = read_response(sock, head_only=True)
    assert status == 200
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock)  # no file bytes were sent for the HEAD
    assert status == 200 and body == data
    sock.close()


# -- access log --------------------------------------------------------------------------------------------


def test_access_log_escapes_control_characters(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(responder(), **stack)
    data = exchange(
        srv.port,
        b"GET /x%0d%0aFORGED%20200%1b[31m?q=%0a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200")
    lines = [r.getMessage() for r in caplog.records if r.name == "polycorn.access"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "/x\\x0d\\x0aFORGED 200\\x1b[31m" in line
    assert not re.search(r"[\x00-\x1f\x7f]", line), repr(line)
    assert '" 200 5 ' in line  # status and body bytes


def test_access_log_line(
    serve: Any, stack: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    srv = serve(responder(status=201, body=b"created"), **stack)
    sock = open_conn(srv.port)
    sock.sendall(b"POST /things?id=7 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert read_response(sock)[0] == 201
    port = sock.getsockname()[1]
    sock.close()
    # The line is written right after the response: wait for it rather than race the server thread.
    (record,) = wait_for(lambda: [r for r in caplog.records if r.name == "polycorn.access"])
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(f'127.0.0.1:{port} - "POST /things?id=7 HTTP/1.1" 201 7 ')


# -- proxy headers -------------------------------------------------------------------------------------------

_PROXIED = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"


def test_proxy_headers_trusted_from_localhost(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack)
    for _ in range(3):  # the first connection decides trust, later ones find it remembered
        assert exchange(srv.port, _PROXIED).startswith(b"HTTP/1.1 200")
    assert len(scopes) == 3
    for scope in scopes:
        assert scope["client"][0] == "198.51.100.7"  # the nearest hop the trusted proxy saw
        assert scope["scheme"] == "https"


@pytest.mark.parametrize(
    "options", [{"forwarded_allow_ips": "10.0.0.1"}, {"proxy_headers": False}], ids=["untrusted-peer", "disabled"]
)
def test_proxy_headers_ignored(serve: Any, stack: dict[str, str], options: dict[str, Any]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **options, **stack)
    for i in range(3):  # the untrusted answer is remembered too
        sock = open_conn(srv.port)
        sock.sendall(_PROXIED)
        assert read_response(sock)[0] == 200
        scope = scopes[i]
        assert tuple(scope["client"]) == ("127.0.0.1", sock.getsockname()[1])
        assert scope["scheme"] == "http"
        sock.close()


def test_proxy_headers_trust_all(serve: Any, stack: dict[str, str]) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), forwarded_allow_ips="*", **stack)
    assert exchange(
        srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\nConnection: close\r\n\r\n"
    ).startswith(b"HTTP/1.1 200")
    assert scopes[0]["client"][0] == "192.0.2.1"
    assert scopes[0]["scheme"] == "http"


# -- error responses --------------------------------------------------------------------------------------------


def test_app_exception_500_is_well_formed(serve: Any, stack: dict[str, str]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise ValueError("boom")

    srv = serve(app, **stack)
    assert_error_response(exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 500)
