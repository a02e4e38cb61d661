"""Small writes held to the end of the event loop's pass, then written in one burst.

A response written the moment the app finishes it wakes its client at once; on a busy loop the
client (a proxy, a load generator) then reads it, goes back to sleep, and the next response wakes
it again. That wake-up is paid on the server's core, and costs more than the write itself. Held
until every ready task of the pass has run, the responses leave back to back, while the client
is still awake from the first. Several small parts of one streamed response also leave in one
system call this way. Nothing waits longer than the loop's current pass.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Writes at least this large go out at once (after what is held for their connection): they
#: gain nothing from waiting, and copying them to join others costs more than a system call.
WRITE_SOON_BELOW = 16 * 1024
#: A connection holding this many parts writes them at once: 256 KiB at the most per connection.
WRITE_SOON_PARTS = 16


class Holder(Protocol):
    def flush(self) -> None: ...


class Outbox:
    """The connections of one loop that hold writes; flushed once per pass of the loop."""

    __slots__ = ("loop", "holders")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.holders: list[Holder] = []

    def add(self, holder: Holder) -> None:
        """A connection began holding writes: it is flushed after the handles now ready have run."""
        holders = self.holders
        if not holders:
            self.loop.call_soon(self.flush)
        holders.append(holder)

    def flush(self) -> None:
        holders = self.holders
        self.holders = []
        for holder in holders:
            holder.flush()
