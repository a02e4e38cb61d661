"""TLS: the server's SSLContext, and the ASGI ``tls`` extension of each connection.

An SSLContext cannot be pickled into a worker process, so every event loop builds its own from
the options (the supervisor builds one first, only to refuse bad files before any worker starts).
What the app may learn about a connection's TLS session is read once, right after its handshake
(``ServerTLS.extension``); requests on plain-HTTP servers never touch this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import sys
from typing import TYPE_CHECKING, Any

from polycorn.errors import ConfigError

if TYPE_CHECKING:
    from polycorn.config import Config

logger = logging.getLogger("polycorn.error")

#: --ssl-cert-reqs values (uvicorn's 0, 1 and 2 are normalised to these names by Config).
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}

#: ``SSLObject.version()`` to the protocol version numbers of the TLS RFCs (the extension's ints).
_VERSION_NUMBERS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

#: RFC 4514 §3 attribute type keywords, keyed by the long names ``getpeercert()`` reports. Other
#: attribute types keep OpenSSL's long name (e.g. ``emailAddress``), which is readable and unique.
_RFC4514_KEYWORDS = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_RFC4514_SPECIAL = re.compile(r'(["+,;<>\\])')
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_SSL_C_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")

#: Seconds a closing connection waits for the client's close_notify after sending its own (the
#: loops' default is 30). HTTP needs no answer to it, and an idle pooled client never reads one:
#: waiting longer would only hold the socket, and hold up a graceful shutdown, for nothing. It
#: also bounds how long the tail of a last response may take to drain to a slow reader.
SHUTDOWN_TIMEOUT = 5.0


class _NoPassword(Exception):
    """Raised in place of OpenSSL's interactive pass-phrase prompt (which would block a worker)."""


class _ServerSSLObject(ssl.SSLObject):
    """Logs why a handshake failed, at debug.

    asyncio and uvloop drop failed handshakes silently (an SSLError is an OSError, which they
    report only in the loop's debug mode) and tell the protocol nothing, as it was never connected:
    this is the one place both loops pass through, whichever accepted the connection.
    """

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # the handshake needs more bytes: nothing failed
        except ssl.SSLError as exc:
            logger.debug("TLS handshake failed: %s", describe_error(exc))
            raise


class ServerTLS:
    """One event loop's TLS settings: the context, and what every connection's extension shares."""

    __slots__ = ("context", "handshake_timeout", "server_cert", "_suites")

    def __init__(self, config: Config) -> None:
        certfile = config.ssl_certfile
        assert certfile is not None
        self.server_cert = _first_certificate(certfile)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = MIN_VERSIONS[config.ssl_min_version]
        # TLS 1.2 renegotiation started by a client costs the server a handshake each time.
        context.options |= ssl.OP_NO_RENEGOTIATION
        _load_cert_chain(context, certfile, config.ssl_keyfile, config.ssl_keyfile_password)
        context.verify_mode = CERT_REQS[config.ssl_cert_reqs]
        if config.ssl_ca_certs is not None:
            # Only these CAs: the system's trust store would accept any publicly issued certificate.
            ca = config.ssl_ca_certs
            try:
                if os.path.isdir(ca):
                    context.load_verify_locations(capath=ca)
                else:
                    context.load_verify_locations(cafile=ca)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--ssl-ca-certs: cannot load {ca!r}: {describe_error(exc)}") from None
        if config.ssl_ciphers is not None:
            try:
                context.set_ciphers(config.ssl_ciphers)
            except ssl.SSLError:
                raise ConfigError(f"--ssl-ciphers: no cipher matches {config.ssl_ciphers!r}") from None
        context.set_alpn_protocols(["http/1.1"])  # the only protocol served: an h2 client falls back
        context.sslobject_class = _ServerSSLObject
        self.context = context
        self.handshake_timeout = config.ssl_handshake_timeout
        #: OpenSSL cipher name -> IANA cipher suite number (the low 16 bits of OpenSSL's id).
        self._suites = {c["name"]: c["id"] & 0xFFFF for c in context.get_ciphers()}

    @property
    def loop_options(self) -> dict[str, Any]:
        """Keyword arguments for ``loop.create_server`` and ``loop.connect_accepted_socket``."""
        options: dict[str, Any] = {"ssl": self.context, "ssl_handshake_timeout": self.handshake_timeout}
        if sys.version_info >= (3, 11):  # asyncio's SSL shutdown has no timeout argument before
            options["ssl_shutdown_timeout"] = SHUTDOWN_TIMEOUT
        return options

    def extension(self, transport: asyncio.BaseTransport) -> dict[str, Any]:
        """The ASGI TLS extension (spec 0.2) for a connection whose handshake just completed."""
        sslobj: ssl.SSLObject = transport.get_extra_info("ssl_object")
        chain = _peer_chain(sslobj)
        name = None
        if chain:
            peer = sslobj.getpeercert()
            if peer and "subject" in peer:
                name = rfc4514_name(peer["subject"])
        cipher = sslobj.cipher()
        version = sslobj.version()
        return {
            "server_cert": self.server_cert,
            "client_cert_chain": chain,
            "client_cert_name": name,
            # A client certificate that does not verify fails the handshake: no error is ever left.
            "client_cert_error": None,
            "tls_version": _VERSION_NUMBERS.get(version) if version else None,
            "cipher_suite": self._suites.get(cipher[0]) if cipher else None,
        }


def server_tls(config: Config) -> ServerTLS | None:
    """The TLS settings the options ask for; None for plain HTTP. Bad files raise ConfigError."""
    return ServerTLS(config) if config.ssl_certfile is not None else None


def rfc4514_name(subject: Any) -> str:
    """A ``getpeercert()`` subject as an RFC 4514 string: most specific RDN first, escaped."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_RFC4514_KEYWORDS.get(kind, kind)}={_escape_rfc4514(value)}" for kind, value in rdn))
    return ",".join(rdns)


def _escape_rfc4514(value: str) -> str:
    """RFC 4514 §2.4."""
    escaped = _RFC4514_SPECIAL.sub(r"\\\1", value).replace("\0", "\\00")
    if escaped[:1] in (" ", "#"):
        escaped = "\\" + escaped
    if len(escaped) > 1 and escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def _peer_chain(sslobj: ssl.SSLObject) -> list[str]:
    """The client's certificates as PEM, its own first; empty when it sent none.

    Python 3.13 gives the whole chain the client sent; before that only its own certificate.
    """
    get_chain = getattr(sslobj, "get_unverified_chain", None)
    if get_chain is not None:
        ders = get_chain() or []
    else:
        der = sslobj.getpeercert(binary_form=True)
        ders = [der] if der else []
    return [ssl.DER_cert_to_PEM_cert(der) for der in ders]


def _first_certificate(certfile: str) -> str:
    """The server's own certificate (the first of the file) as PEM, for the extension's server_cert."""
    try:
        with open(certfile, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"--ssl-certfile: cannot read {certfile!r}: {exc.strerror or exc}") from None
    match = _PEM_CERT.search(text)
    if match is None:
        raise ConfigError(f"--ssl-certfile: no PEM certificate in {certfile!r}")
    try:
        return ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(match.group()))
    except ValueError:
        raise ConfigError(f"--ssl-certfile: the certificate in {certfile!r} is not valid PEM") from None


def _load_cert_chain(context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None) -> None:
    asked = False

    def give_password() -> str:
        nonlocal asked
        asked = True
        if password is None:
            raise _NoPassword
        return password

    try:
        context.load_cert_chain(certfile, keyfile, password=give_password)
    except _NoPassword:
        raise ConfigError("--ssl-keyfile: the private key is encrypted: give --ssl-keyfile-password") from None
    except ssl.SSLError as exc:
        if asked:
            raise ConfigError("--ssl-keyfile-password: cannot decrypt the private key (wrong password?)") from None
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError("--ssl-keyfile: the private key does not belong to the certificate") from None
        where = (
            f"{certfile!r} and {keyfile!r}" if keyfile else f"{certfile!r} (no --ssl-keyfile: the key must be in it)"
        )
        raise ConfigError(
            f"--ssl-certfile/--ssl-keyfile: cannot load a certificate and private key from {where}: "
            f"{describe_error(exc)}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: {exc.strerror or exc}") from None


def describe_error(exc: BaseException) -> str:
    """An SSL error's message without the ``(_ssl.c:1006)`` source location."""
    text = str(exc.args[1] if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else exc)
    return _SSL_C_LOCATION.sub("", text)
