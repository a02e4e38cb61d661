"""Locust users for mixed traffic against ``loadtests/locust_app.py``, with every response checked.

Run it through ``loadtests/locust_run.py`` (starts a server, prints per-endpoint percentiles), or
plain Locust::

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 20 -r 10 -t 30s

``ApiUser`` (weight 4) mixes JSON reads, JSON writes (valid and deliberately invalid), chunked
streaming responses and uploads with random bodies; a response with the wrong status or body shape,
a wrong stream line count, or a wrong upload sha256 is marked failed via ``catch_response``.

``WebSocketUser`` (weight 1: Locust splits ``--users`` 4:1, so 5 users or more are needed for one) uses the ``websockets`` library's sync client, which runs fine under
Locust's gevent monkey-patching (its background reader thread becomes a greenlet, its sockets
cooperative). It keeps one ``/ws/chat`` connection open for its lifetime and opens short ``/ws``
echo sessions of several text and binary messages; each connect and each message round trip is
reported to Locust as a ``WS`` request, failures (wrong echo, wrong reply, timeout, closed
connection) included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from locust import FastHttpUser, User, between, task
from websockets.sync.client import ClientConnection, connect

#: Ids 1..CATALOG_SIZE always exist (locust_app.CATALOG_SIZE).
CATALOG_SIZE = 100
WS_TIMEOUT = 10.0


def _check(resp: Any, status: int, check: Any) -> None:
    """Mark a ``catch_response`` response failed unless it has ``status`` and ``check(resp)`` passes."""
    if resp.status_code != status:
        if not resp.status_code:  # no response: connection refused or reset, timeout
            resp.failure(f"no response: {resp.error!r}")
        else:
            resp.failure(f"status {resp.status_code}, expected {status}: {(resp.text or '')[:200]!r}")
        return
    try:
        problem = check(resp)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        resp.failure(problem)
    else:
        resp.success()


def _is_item(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("id"), int)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("price"), (int, float))
        and isinstance(item.get("tags"), list)
    )


class ApiUser(FastHttpUser):
    weight = 4
    wait_time = between(0.05, 0.3)

    @task(10)
    def get_item(self) -> None:
        item_id = random.randint(1, CATALOG_SIZE)

        def check(resp: Any) -> str | None:
            item = resp.json()
            if not _is_item(item) or item["id"] != item_id:
                return f"not item {item_id}: {resp.text[:200]!r}"
            return None

        with self.client.get(f"/items/{item_id}", name="/items/[id]", catch_response=True) as resp:
            _check(resp, 200, check)

    @task(2)
    def get_missing_item(self) -> None:
        with self.client.get("/items/999999999", name="/items/[id] 404", catch_response=True) as resp:
            _check(resp, 404, lambda r: None if "detail" in r.json() else "no detail in the 404 body")

    @task(5)
    def list_items(self) -> None:
        limit = random.randint(1, 100)

        def check(resp: Any) -> str | None:
            body = resp.json()
            items = body.get("items")
            if body.get("count") != limit or not isinstance(items, list) or len(items) != limit:
                return f"expected {limit} items, got count={body.get('count')!r}"
            if not all(_is_item(i) for i in items) or [i["id"] for i in items] != list(range(1, limit + 1)):
                return "items are not catalog items 1..limit"
            return None

        with self.client.get(f"/items?limit={limit}", name="/items?limit=[n]", catch_response=True) as resp:
            _check(resp, 200, check)

    @task(4)
    def create_item(self) -> None:
        sent = {
            "name": f"widget {random.randint(0, 1_000_000)}",
            "price": round(random.uniform(0, 500), 2),
            "tags": random.sample(["red", "green", "blue", "sale", "new"], k=random.randint(0, 3)),
        }

        def check(resp: Any) -> str | None:
            item = resp.json()
            if not _is_item(item) or item["id"] <= CATALOG_SIZE:
                return f"not a created item: {resp.text[:200]!r}"
            if {k: item[k] for k in sent} != sent:
                return f"created {item!r}, sent {sent!r}"
            return None

        with self.client.post("/items", json=sent, name="/items", catch_response=True) as resp:
            _check(resp, 201, check)

    @task(1)
    def create_invalid_item(self) -> None:
        sent = random.choice(
            [{"name": "", "price": 1}, {"name": "x", "price": -1}, {"price": 3}, ["not", "an", "object"]]
        )

        def check(resp: Any) -> str | None:
            errors = resp.json().get("errors")
            return None if isinstance(errors, list) and errors else f"no errors listed: {resp.text[:200]!r}"

        with self.client.post("/items", json=sent, name="/items 422", catch_response=True) as resp:
            _check(resp, 422, check)

    @task(2)
    def stream(self) -> None:
        n = random.choice([1, 10, 50, 200])

        def check(resp: Any) -> str | None:
            lines = resp.content.splitlines()
            if len(lines) != n:
                return f"{len(lines)} stream lines, expected {n}"
            if [json.loads(line)["i"] for line in lines] != list(range(n)):
                return "stream lines out of order"
            return None

        with self.client.get(f"/stream?n={n}", name="/stream?n=[n]", catch_response=True) as resp:
            _check(resp, 200, check)

    @task(2)
    def upload(self) -> None:
        body = os.urandom(random.choice([0, 1, 1024, 64 * 1024, 1024 * 1024]))
        expected = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}

        def check(resp: Any) -> str | None:
            got = resp.json()
            return None if got == expected else f"upload answered {got!r}, expected {expected!r}"

        headers = {"Content-Type": "application/octet-stream"}
        with self.client.post("/upload", data=body, headers=headers, name="/upload", catch_response=True) as resp:
            _check(resp, 200, check)


class WebSocketUser(User):
    weight = 1
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        parts = urlsplit(self.host or "http://127.0.0.1:8000")
        self.ws_base = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, "", "", ""))
        self.chat_stack = contextlib.ExitStack()
        self.chat: ClientConnection | None = None
        self._open_chat()

    def on_stop(self) -> None:
        self._close_chat()

    def _open_chat(self) -> None:
        self.chat, self.chat_seq = self._connect("/ws/chat", self.chat_stack), 0
        if self.chat is not None and not self._exchange("/ws/chat", "welcome", self.chat, None, self._welcome):
            self._close_chat()

    def _close_chat(self) -> None:
        self.chat = None
        self.chat_stack.close()  # closes the connection, if open

    def _fire(self, name: str, start: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=exc,
            context={},
        )

    def _connect(self, path: str, stack: contextlib.ExitStack) -> ClientConnection | None:
        """Open a connection that ``stack`` closes; None (reported as a failure) when that fails."""
        start = time.perf_counter()
        try:
            # As a context manager: websockets >= 17.1 warns about connect() used without one.
            ws = stack.enter_context(
                connect(self.ws_base + path, open_timeout=WS_TIMEOUT, close_timeout=WS_TIMEOUT, compression=None)
            )
        except Exception as exc:
            self._fire(f"{path} connect", start, 0, exc)
            return None
        self._fire(f"{path} connect", start, 0, None)
        return ws

    def _exchange(self, path: str, label: str, ws: ClientConnection, message: str | bytes | None, check: Any) -> bool:
        """Send ``message`` (None: only receive), receive the reply, report it; False on failure."""
        start = time.perf_counter()
        try:
            if message is not None:
                ws.send(message)
            reply = ws.recv(timeout=WS_TIMEOUT)
            problem = check(reply)
            exc: Exception | None = AssertionError(problem) if problem else None
        except Exception as error:  # TimeoutError, ConnectionClosed, a bad JSON reply
            exc, reply = error, b""
        self._fire(f"{path} {label}", start, len(reply), exc)
        return exc is None

    @staticmethod
    def _welcome(reply: str | bytes) -> str | None:
        return None if json.loads(reply) == {"type": "welcome"} else f"expected a welcome, got {reply!r}"

    @task(3)
    def echo_session(self) -> None:
        """A short-lived connection: several text and binary messages, each echo checked, then close."""
        with contextlib.ExitStack() as stack:
            ws = self._connect("/ws", stack)
            if ws is None:
                return
            for i in range(random.randint(3, 8)):
                message: str | bytes
                if i % 2:
                    message = os.urandom(random.choice([1, 125, 126, 4096, 70_000]))
                else:
                    message = f"hello {i} " + "x" * random.randint(0, 200)
                kind = "binary" if isinstance(message, bytes) else "text"

                def check(reply: str | bytes, message: str | bytes = message) -> str | None:
                    if reply != message:
                        return f"echo mismatch: sent {len(message)} {type(message).__name__}, got {len(reply)} {type(reply).__name__}"
                    return None

                if not self._exchange("/ws", f"echo {kind}", ws, message, check):
                    return

    @task(5)
    def chat(self) -> None:
        """A message on the long-lived chat connection; the JSON reply is checked field by field."""
        if self.chat is None:  # the connection failed (reported already): try a new one
            self._open_chat()
            if self.chat is None:
                return
        user, text = f"user-{id(self) % 1000}", "hi " * random.randint(1, 50)
        self.chat_seq += 1
        expected = {"type": "message", "seq": self.chat_seq, "user": user, "text": text, "length": len(text)}

        def check(reply: str | bytes) -> str | None:
            got = json.loads(reply)
            return None if got == expected else f"chat reply {got!r}, expected {expected!r}"

        if not self._exchange("/ws/chat", "message", self.chat, json.dumps({"user": user, "text": text}), check):
            self._close_chat()
