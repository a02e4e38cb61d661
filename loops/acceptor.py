"""Accepting on a plain asyncio loop without losing a connection when accepting pauses.

``asyncio.Server.close()`` drops a connection whose ``accept()`` already happened but whose
transport is still being made: that task then attaches to the closed server, fails silently, and
the client hangs with nobody serving it. Pausing at ``--limit-concurrency`` (and shutdown) would
hit that window. Here ``accept()`` runs from a reader callback and every accepted socket is handed
to its own transport-making task at once, so removing the reader can leave connections only in
the kernel's backlog, never in between. uvloop's servers do not have the problem and keep
``loop.create_server``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("polycorn.error")

#: accept() failures that mean "out of resources": the backlog keeps the clients, retry in a while.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_RETRY_AFTER = 0.5


class Acceptor:
    """Accepts on one listening socket for one selector loop until ``close()``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        batch: int,
        ssl_options: dict[str, Any] | None = None,
    ) -> None:
        self._loop = loop
        self._ssl_options = ssl_options or {}  # TLS: the context and handshake timeout
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = factory
        self._batch = max(1, min(batch, 1024))
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._open = True
        sock.setblocking(False)
        loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # drained, or another worker on a shared socket took it
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno not in _EXHAUSTED:
                    raise
                logger.error("cannot accept connections (%s): retrying in %gs", exc.strerror, _RETRY_AFTER)
                self._loop.remove_reader(self._fd)
                self._retry = self._loop.call_later(_RETRY_AFTER, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, **self._ssl_options)
        except OSError as exc:
            # A failed TLS handshake (an SSLError, whose cause polycorn.tls logged), a handshake
            # timeout, or a client gone before its transport was made: nothing for the loop.
            conn.close()
            if not isinstance(exc, ssl.SSLError):
                what = "TLS handshake did not complete" if self._ssl_options else "connection lost while being set up"
                logger.debug("%s: %s", what, exc)
        except BaseException:
            conn.close()
            raise

    def _resume(self) -> None:
        self._retry = None
        if self._open:
            self._loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting; connections already accepted are served, queued ones stay queued."""
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
