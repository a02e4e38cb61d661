"""The ASGI lifespan protocol (lifespan spec 2.0): start-up before serving, shutdown after."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from polycorn.errors import AppStartupError

logger = logging.getLogger("polycorn.error")


class Lifespan:
    """Runs the app's lifespan coroutine for the life of one loop.

    ``state`` is the namespace the app fills during start-up; every request scope gets a shallow
    copy of it.
    """

    def __init__(self, app: Any, mode: str) -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._startup: asyncio.Future[str | None] | None = None
        self._shutdown: asyncio.Future[str | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._phase = "startup"

    async def startup(self) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._task = loop.create_task(self._main())
        await self._queue.put({"type": "lifespan.startup"})
        failure = await self._startup
        if failure is not None:
            raise AppStartupError(f"application start-up failed: {failure}")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        assert self._shutdown is not None
        self._phase = "shutdown"
        await self._queue.put({"type": "lifespan.shutdown"})
        failure = await self._shutdown
        if failure is not None:
            logger.error("application shutdown failed: %s", failure)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            # The loop's teardown cancels a lifespan that never got its shutdown (a forced exit
            # skips it): that is not an application error worth a traceback.
            self._settle("the lifespan task was cancelled")
            raise
        except BaseException as exc:
            if self._phase == "startup" and self.mode == "auto" and not self._startup_done():
                # Lifespan spec: an app that raises on the lifespan scope does not support it.
                self.supported = False
                logger.info("ASGI lifespan protocol appears unsupported by the app; continuing without it")
                logger.debug("lifespan error", exc_info=exc)
                self._settle(None)
            else:
                logger.error("exception in the ASGI lifespan handler", exc_info=exc)
                self._settle(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                raise
        else:
            # Returning early means "no lifespan work": not an error (lifespan spec).
            self._settle(None)

    def _startup_done(self) -> bool:
        return self._startup is not None and self._startup.done()

    def _settle(self, failure: str | None) -> None:
        for fut in (self._startup, self._shutdown):
            if fut is not None and not fut.done():
                fut.set_result(failure)

    async def _receive(self) -> dict[str, Any]:
        return await self._queue.get()

    async def _send(self, message: dict[str, Any]) -> None:
        mtype = message["type"]
        assert self._startup is not None and self._shutdown is not None
        if mtype == "lifespan.startup.complete":
            self._startup.set_result(None)
        elif mtype == "lifespan.startup.failed":
            self._startup.set_result(message.get("message") or "lifespan.startup.failed")
        elif mtype == "lifespan.shutdown.complete":
            self._shutdown.set_result(None)
        elif mtype == "lifespan.shutdown.failed":
            self._shutdown.set_result(message.get("message") or "lifespan.shutdown.failed")
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {mtype!r}")
