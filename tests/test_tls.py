"""TLS: HTTPS and WSS with real certificates made by trustme, client certificates, the ASGI tls
extension, failed handshakes that must not disturb the server, and the options' checks."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from polycorn import tls as tls_module
from polycorn.config import Config
from polycorn.errors import ConfigError
from polycorn.tls import ServerTLS, rfc4514_name
from tests.conftest import read_response, run_cli
from tests.fixture_apps.process import polycorn
from tests.http_apps import (  # noqa: F401 (close_test_sockets: an autouse fixture)
    capture_polycorn_logs,
    close_test_sockets,
    recorder,
    track,
    wait_for,
)
from tests.ws_apps import Recorder, echo_app

# trustme and its cryptography are in the `test` extra, not `test-ft`: no free-threaded 3.13t wheels.
trustme = pytest.importorskip("trustme")
x509 = pytest.importorskip("cryptography.x509")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")

PASSWORD = "s3cret pass"


class Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, written to files."""

    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_pem = server.cert_chain_pems[0].bytes().decode()
        self.certfile = str(root / "server.pem")
        self.keyfile = str(root / "server.key")
        self.both = str(root / "server-key-and-cert.pem")  # key first, then the certificate
        self.ca_file = str(root / "ca.pem")
        self.encrypted_key = str(root / "server-encrypted.key")
        server.cert_chain_pems[0].write_to_path(self.certfile)
        server.private_key_pem.write_to_path(self.keyfile)
        server.private_key_and_cert_chain_pem.write_to_path(self.both)
        self.ca.cert_pem.write_to_path(self.ca_file)
        key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
        Path(self.encrypted_key).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(PASSWORD.encode()),
            )
        )
        self.client = self.ca.issue_cert("client@example.org", common_name="Client, #1", organization_name="Acme+Co")
        self.client_pem = self.client.cert_chain_pems[0].bytes().decode()

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if with_cert:
            self.client.configure_cert(ctx)
        return ctx

    def server_options(self, **options: Any) -> dict[str, Any]:
        return {"ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile, **options}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return track(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))  # type: ignore[return-value]
    except BaseException:
        raw.close()
        raise


def get(sock: socket.socket, path: str = "/") -> tuple[int, bytes]:
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    status, _, body = read_response(sock)
    return status, body


def fetch(port: int, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    """One request on a fresh TLS connection, closed after it (a server waits for a TLS close)."""
    with tls_connect(port, ctx) as sock:
        return get(sock)


def suite_id(ctx: ssl.SSLContext, name: str) -> int:
    """IANA number of a cipher suite, from the client's side of the handshake."""
    return next(c["id"] & 0xFFFF for c in ctx.get_ciphers() if c["name"] == name)


def https_works(port: int, certs: Certs) -> bool:
    with httpx.Client(verify=certs.client_context(), timeout=5) as client:
        return client.get(f"https://127.0.0.1:{port}/").status_code == 200


def debug_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "polycorn.error" and r.levelno == logging.DEBUG]


def loud_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


# -- HTTPS and the tls extension ------------------------------------------------------------------


def test_https_request_with_httpx(serve: Any, stack: dict[str, str], certs: Certs) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack, **certs.server_options())
    with httpx.Client(verify=certs.client_context(), timeout=5) as client:
        for _ in range(2):  # keep-alive: both requests share the connection and its extension
            r = client.get(f"https://127.0.0.1:{srv.port}/path?q=1")
            assert (r.status_code, r.text) == (200, "ok")
    assert [s["scheme"] for s in scopes] == ["https", "https"]
    assert scopes[0]["path"] == "/path" and scopes[0]["query_string"] == b"q=1"
    assert scopes[0]["extensions"]["tls"] is scopes[1]["extensions"]["tls"]
    assert "http.response.pathsend" in scopes[0]["extensions"]


def test_tls_extension_values(serve: Any, stack: dict[str, str], certs: Certs) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack, ssl_certfile=certs.both)  # the key in the certificate file
    ctx = certs.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(srv.port, ctx) as sock:
        assert get(sock) == (200, b"ok")
        assert sock.selected_alpn_protocol() == "http/1.1"
        version, cipher = sock.version(), sock.cipher()
    tls = scopes[0]["extensions"]["tls"]
    assert set(tls) == {
        "server_cert",
        "client_cert_chain",
        "client_cert_name",
        "client_cert_error",
        "tls_version",
        "cipher_suite",
    }
    assert tls["server_cert"] == certs.server_pem
    assert (tls["client_cert_chain"], tls["client_cert_name"], tls["client_cert_error"]) == ([], None, None)
    assert version == "TLSv1.3" and tls["tls_version"] == 0x0304
    assert cipher is not None
    assert tls["cipher_suite"] == suite_id(ctx, cipher[0])
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)  # RFC 8446's suites


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_tls12_version_and_cipher_suite(serve: Any, certs: Certs, loop: str) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), loop=loop, **certs.server_options())
    ctx = certs.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # trustme's keys are ECDSA keys
    assert fetch(srv.port, ctx) == (200, b"ok")
    tls = scopes[0]["extensions"]["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] == 0xC02B  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256


def test_plain_http_servers_have_no_tls_extension(serve: Any, certs: Certs) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes))
    assert httpx.get(f"http://127.0.0.1:{srv.port}/").status_code == 200
    assert scopes[0]["scheme"] == "http"
    assert "tls" not in scopes[0]["extensions"]


def test_websocket_over_tls_says_wss(serve: Any, stack: dict[str, str], certs: Certs) -> None:
    rec = Recorder()
    srv = serve(echo_app(rec), **stack, **certs.server_options())

    async def client() -> None:
        async with ws_connect(f"wss://127.0.0.1:{srv.port}/ws", ssl=certs.client_context()) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"

    asyncio.run(client())
    scope = rec.scopes[0]
    assert scope["scheme"] == "wss"
    assert scope["extensions"]["tls"]["server_cert"] == certs.server_pem
    assert "websocket.http.response" in scope["extensions"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_shutdown_does_not_wait_long_for_a_silent_idle_client(
    serve: Any, certs: Certs, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle pooled client never reads the server's close_notify, so never answers it.
    monkeypatch.setattr(tls_module, "SHUTDOWN_TIMEOUT", 0.5)
    srv = serve(recorder([]), loop=loop, **certs.server_options())
    with tls_connect(srv.port, certs.client_context()) as sock:
        assert get(sock) == (200, b"ok")
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 5  # the loops' own default would wait 30 s
        assert sock.recv(1) == b""  # the server's close_notify, then its close


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_pathsend_over_tls(serve: Any, certs: Certs, loop: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: more than one write-buffer's worth
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    srv = serve(app, loop=loop, **certs.server_options())
    with tls_connect(srv.port, certs.client_context()) as sock:
        for _ in range(2):
            assert get(sock) == (200, data)


# -- client certificates --------------------------------------------------------------------------


def test_required_client_certificate(serve: Any, stack: dict[str, str], certs: Certs) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **stack, **certs.server_options(ssl_cert_reqs="required", ssl_ca_certs=certs.ca_file))
    assert fetch(srv.port, certs.client_context(with_cert=True)) == (200, b"ok")
    tls = scopes[0]["extensions"]["tls"]
    assert tls["client_cert_chain"][0] == certs.client_pem
    subject = x509.load_pem_x509_certificate(certs.client_pem.encode()).subject.rfc4514_string()
    assert tls["client_cert_name"] == subject
    assert "CN=Client\\, #1" in subject and "O=Acme\\+Co" in subject
    assert tls["client_cert_error"] is None

    # Without a certificate the handshake fails (TLS 1.3: the client learns it on its first read).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(srv.port, certs.client_context())
    # ... and the server goes on serving.
    assert fetch(srv.port, certs.client_context(with_cert=True)) == (200, b"ok")
    assert len(scopes) == 2


def test_optional_client_certificate(serve: Any, certs: Certs) -> None:
    scopes: list[dict[str, Any]] = []
    srv = serve(recorder(scopes), **certs.server_options(ssl_cert_reqs="optional", ssl_ca_certs=certs.ca_file))
    assert fetch(srv.port, certs.client_context()) == (200, b"ok")
    assert fetch(srv.port, certs.client_context(with_cert=True)) == (200, b"ok")
    without, with_cert = (s["extensions"]["tls"] for s in scopes)
    assert (without["client_cert_chain"], without["client_cert_name"]) == ([], None)
    assert with_cert["client_cert_chain"][0] == certs.client_pem
    assert with_cert["client_cert_name"].startswith("CN=Client\\, #1,")


def test_client_certificate_from_another_ca_is_refused(serve: Any, certs: Certs) -> None:
    srv = serve(recorder([]), **certs.server_options(ssl_cert_reqs="optional", ssl_ca_certs=certs.ca_file))
    ctx = certs.client_context()
    trustme.CA().issue_cert("intruder@example.org").configure_cert(ctx)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(srv.port, ctx)
    assert https_works(srv.port, certs)


def test_rfc4514_name() -> None:
    subject = (
        (("countryName", "DE"),),
        (("organizationName", "A, B"),),
        (("commonName", " lead#"), ("emailAddress", "x@y")),
        (("commonName", "#x=y;z "),),
    )
    assert rfc4514_name(subject) == "CN=\\#x=y\\;z\\ ,CN=\\ lead#+emailAddress=x@y,O=A\\, B,C=DE"
    assert rfc4514_name(((("commonName", 'q"<>\\\0'),),)) == 'CN=q\\"\\<\\>\\\\\\00'


# -- failed handshakes ------------------------------------------------------------------------------


def test_failed_handshakes_are_logged_at_debug_and_harmless(
    serve: Any,
    stack: dict[str, str],
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    caplog.set_level(logging.DEBUG, logger="polycorn.error")
    srv = serve(recorder([]), **stack, **certs.server_options())
    # A plain-HTTP client on the TLS port, a garbage "handshake", a TLS client that does not trust
    # the certificate, and a client too old for --ssl-min-version: each only loses its connection.
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello" * 20, b"\x00" * 300):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(junk)
            try:
                while sock.recv(1024):  # a TLS alert at most, then the close
                    pass
            except ConnectionResetError:
                pass
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(srv.port, ssl.create_default_context())
    assert https_works(srv.port, certs)
    messages = wait_for(lambda: [m for m in debug_records(caplog) if m.startswith("TLS handshake failed")])
    assert any("HTTP_REQUEST" in m or "http request" in m for m in messages), messages
    assert loud_records(caplog) == []


def test_min_version_tls13_refuses_tls12_clients(
    serve: Any, certs: Certs, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_polycorn_logs(caplog, monkeypatch)
    caplog.set_level(logging.DEBUG, logger="polycorn.error")
    srv = serve(recorder([]), **certs.server_options(ssl_min_version="TLSv1.3"))
    old = certs.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        tls_connect(srv.port, old)
    assert https_works(srv.port, certs)
    assert wait_for(lambda: [m for m in debug_records(caplog) if "UNSUPPORTED_PROTOCOL" in m])
    assert loud_records(caplog) == []


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_handshake_timeout_closes_silent_clients(serve: Any, certs: Certs, loop: str) -> None:
    srv = serve(recorder([]), loop=loop, **certs.server_options(ssl_handshake_timeout=0.2))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.settimeout(5)
        try:
            assert sock.recv(1) == b""  # closed by the server, long before the client's timeout
        except ConnectionResetError:
            pass
    assert https_works(srv.port, certs)


# -- options and the command line ---------------------------------------------------------------------


def test_encrypted_key_with_password(serve: Any, certs: Certs) -> None:
    srv = serve(
        recorder([]), ssl_certfile=certs.certfile, ssl_keyfile=certs.encrypted_key, ssl_keyfile_password=PASSWORD
    )
    assert https_works(srv.port, certs)
    assert PASSWORD not in repr(srv.config), "the key's password must stay out of the config's repr"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"ssl_keyfile_password": "wrong"}, "wrong password"),
        ({}, "give --ssl-keyfile-password"),
    ],
)
def test_encrypted_key_errors(certs: Certs, options: dict[str, Any], needle: str) -> None:
    config = Config(app="polycorn.demo:app", ssl_certfile=certs.certfile, ssl_keyfile=certs.encrypted_key, **options)
    with pytest.raises(ConfigError, match=needle):
        ServerTLS(config)


def test_bad_certificate_files_are_config_errors(certs: Certs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        ServerTLS(Config(ssl_certfile=str(junk), ssl_keyfile=certs.keyfile))
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        ServerTLS(Config(ssl_certfile=certs.certfile, ssl_keyfile=str(other_key)))
    with pytest.raises(ConfigError, match="cannot load a certificate and private key"):
        ServerTLS(Config(ssl_certfile=certs.certfile))  # no key anywhere
    with pytest.raises(ConfigError, match="--ssl-ciphers"):
        ServerTLS(Config(**certs.server_options(ssl_ciphers="NO-SUCH-CIPHER")))
    with pytest.raises(ConfigError, match="--ssl-ca-certs: cannot load"):
        ServerTLS(Config(**certs.server_options(ssl_cert_reqs="required", ssl_ca_certs=str(junk))))


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"ssl_keyfile": "KEY"}, "--ssl-keyfile: only used with --ssl-certfile"),
        ({"ssl_min_version": "TLSv1.3", "ssl_ciphers": "HIGH"}, "--ssl-ciphers, --ssl-min-version: only used"),
        ({"ssl_certfile": "/no/such/cert.pem"}, "--ssl-certfile: no such file"),
        ({"ssl_certfile": "CERT", "ssl_keyfile": "/no/such.key"}, "--ssl-keyfile: no such file"),
        ({"ssl_certfile": "CERT", "ssl_cert_reqs": "required"}, "needs --ssl-ca-certs"),
        ({"ssl_certfile": "CERT", "ssl_ca_certs": "CA"}, "only checked with --ssl-cert-reqs"),
        ({"ssl_certfile": "CERT", "ssl_cert_reqs": "always"}, "--ssl-cert-reqs: expected"),
        ({"ssl_certfile": "CERT", "ssl_cert_reqs": True}, "--ssl-cert-reqs: expected"),
        ({"ssl_certfile": "CERT", "ssl_min_version": "TLSv1.1"}, "--ssl-min-version"),
        ({"ssl_certfile": "CERT", "ssl_handshake_timeout": 0}, "--ssl-handshake-timeout"),
    ],
)
def test_option_checks(certs: Certs, options: dict[str, Any], needle: str) -> None:
    files = {"CERT": certs.certfile, "KEY": certs.keyfile, "CA": certs.ca_file}
    resolved = {k: files.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Config(**resolved)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("none", "none"), ("OPTIONAL", "optional"), ("2", "required"), (1, "optional"), (ssl.CERT_REQUIRED, "required")],
)
def test_cert_reqs_spellings(certs: Certs, value: Any, expected: str) -> None:
    ca = {"ssl_ca_certs": certs.ca_file} if expected != "none" else {}
    config = Config(**certs.server_options(ssl_cert_reqs=value, **ca))
    assert config.ssl_cert_reqs == expected


def _single_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def https_args(certs: Certs, workers: str) -> list[str]:
    """The demo app over TLS with the encrypted key, on a free port."""
    return [
        "polycorn.demo:app",
        "--port",
        "0",
        "--workers",
        workers,
        "--ssl-certfile",
        certs.certfile,
        "--ssl-keyfile",
        certs.encrypted_key,
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_wrong_password_is_one_line(certs: Certs, workers: str) -> None:
    result = run_cli(*https_args(certs, workers), "--ssl-keyfile-password", "wrong")
    assert result.returncode == 2
    assert "wrong password" in _single_error_line(result.stderr)


def test_cli_option_error_is_one_line(certs: Certs) -> None:
    result = run_cli("polycorn.demo:app", "--ssl-keyfile", certs.keyfile)
    assert result.returncode == 2
    assert "--ssl-keyfile: only used with --ssl-certfile" in _single_error_line(result.stderr)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_serves_https(certs: Certs, workers: str) -> None:
    child = polycorn(*https_args(certs, workers), env={"POLYCORN_SSL_KEYFILE_PASSWORD": PASSWORD})
    try:
        output = child.wait_for("listening on https://")
        if workers != "1":
            output = child.wait_for("workers ready")
        match = re.search(r"listening on (https://\S+)", output)
        assert match, output
        with httpx.Client(verify=certs.client_context(), timeout=10) as client:
            for _ in range(4):
                r = client.get(match.group(1) + "/json")
                assert r.status_code == 200
                assert r.json()["message"] == "Hello, world!"
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            rc = child.wait(20)
        finally:
            child.kill()
    assert rc == 0, child.output
    assert "Traceback" not in child.output


def test_rolling_restart_loads_a_renewed_certificate(certs: Certs, tmp_path: Path) -> None:
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    Path(certfile).write_text(Path(certs.certfile).read_text())
    Path(keyfile).write_text(Path(certs.keyfile).read_text())
    child = polycorn(
        "polycorn.demo:app",
        "--port",
        "0",
        "--workers",
        "2",
        "--ssl-certfile",
        str(certfile),
        "--ssl-keyfile",
        str(keyfile),
    )

    def served_cert() -> str:
        with tls_connect(port, certs.client_context()) as sock:
            der = sock.getpeercert(binary_form=True)
            assert der is not None and get(sock)[0] == 200
            return ssl.DER_cert_to_PEM_cert(der)

    try:
        match = re.search(r"listening on https://127\.0\.0\.1:(\d+)", child.wait_for("workers ready"))
        assert match, child.output
        port = int(match.group(1))
        assert served_cert() == certs.server_pem
        renewed = certs.ca.issue_cert("127.0.0.1")
        renewed.cert_chain_pems[0].write_to_path(str(certfile))
        renewed.private_key_pem.write_to_path(str(keyfile))
        child.send_signal(signal.SIGHUP)
        child.wait_for("worker 3 ready")
        new_pem = renewed.cert_chain_pems[0].bytes().decode()
        wait_for(lambda: all(served_cert() == new_pem for _ in range(4)))
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            rc = child.wait(20)
        finally:
            child.kill()
    assert rc == 0, child.output
