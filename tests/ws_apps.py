"""Raw ASGI WebSocket apps and a tiny raw-frame client for the WebSocket tests.

The apps record what they saw in ``Recorder`` objects that the test (same process) reads back.
The raw client exists for what the websockets client will not do: send malformed frames, ignore
pings, never answer a close.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

from tests.conftest import connect, read_response


class Recorder:
    """What an app saw: scopes, disconnect events, exceptions from send()."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []
        self.disconnects: list[dict[str, Any]] = []
        self.send_errors: list[BaseException] = []
        self.received: list[dict[str, Any]] = []
        self.sent = 0


def echo_app(rec: Recorder | None = None, **accept: Any) -> Any:
    """Accept (with ``accept`` extra fields), echo text as text and bytes as bytes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"plain http"})
            return
        if rec is not None:
            rec.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        message = {"type": "websocket.accept", **accept}
        if "subprotocol" not in accept and scope["subprotocols"]:
            message["subprotocol"] = scope["subprotocols"][0]
        await send(message)
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                if rec is not None:
                    rec.disconnects.append(event)
                return
            if event.get("text") is not None:
                if event["text"].startswith("close:"):
                    _, code, reason = event["text"].split(":", 2)
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                    continue
                await send({"type": "websocket.send", "text": event["text"]})
            else:
                await send({"type": "websocket.send", "bytes": event["bytes"]})

    return app


def handshake_request(path: str = "/ws", extra: bytes = b"", version: bytes = b"13", method: bytes = b"GET") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        method
        + b" "
        + path.encode()
        + b" HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: "
        + version
        + b"\r\n"
        + extra
        + b"\r\n"
    )


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2); the mask is applied as one big-integer XOR."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class RawClient:
    """A WebSocket client on a plain socket that does only what the test says."""

    def __init__(self, port: int, path: str = "/ws", extra: bytes = b"", early: bytes = b"") -> None:
        self.sock = connect(port)
        self.sock.sendall(handshake_request(path, extra) + early)
        self.status, self.headers, _ = read_response(self.sock, head_only=True)
        from tests.conftest import _pushback

        self.buf = _pushback.pop(self.sock.fileno(), b"")

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame (servers never mask)."""
        self.sock.settimeout(timeout)
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def close_code(self, payload: bytes) -> int:
        return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


async def identity_echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """For subprocess servers: a session first says which process serves it (``pid N``), then
    echoes; a plain HTTP request gets ``pid N`` too."""
    if scope["type"] == "lifespan":
        return
    me = f"pid {os.getpid()}"
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": me.encode()})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": me})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        if event.get("text") is not None:
            await send({"type": "websocket.send", "text": event["text"]})
        else:
            await send({"type": "websocket.send", "bytes": event["bytes"]})
