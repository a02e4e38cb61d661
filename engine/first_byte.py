"""Connections not yet heard from, with one timer for all of them.

A new connection may send nothing: it gets ``--timeout-keep-alive`` (or, with keep-alive off,
``--timeout-request-header``) to start a request before it is closed. Almost every client sends
its request at once, so a timer per connection is created and cancelled for nothing; in uvloop
that pair cost about 8,500 instructions, 5.6 % of a ``Connection: close`` request. Every
connection here waits the same time from its accept, so their deadlines come in the order they
were added: a dict (insertion-ordered, O(1) removal) and one timer for the oldest suffice. A
connection leaves on its first bytes or its close; one still here at its deadline is closed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polycorn.connection import HttpConnection


class FirstByteWait:
    __slots__ = ("loop", "timeout", "waiting", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout  # 0: connections may wait forever, and are not kept here
        #: connection -> its deadline, oldest first.
        self.waiting: dict[HttpConnection, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, conn: HttpConnection) -> None:
        """Start ``conn``'s wait (none without a limit); ``conn.unheard`` says whether it waits here."""
        if not self.timeout:
            return
        deadline = self.loop.time() + self.timeout
        self.waiting[conn] = deadline
        conn.unheard = True
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._expire)

    def discard(self, conn: HttpConnection) -> None:
        """End ``conn``'s wait: its first bytes came, or it closed (callers check ``unheard`` first)."""
        conn.unheard = False
        self.waiting.pop(conn, None)

    def _expire(self) -> None:
        self._timer = None
        now = self.loop.time()
        expired = []
        for conn, deadline in self.waiting.items():
            if deadline > now:
                self._timer = self.loop.call_at(deadline, self._expire)
                break
            expired.append(conn)
        for conn in expired:
            self.discard(conn)
            conn.close()  # idle from its accept to its deadline: no request is lost

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
