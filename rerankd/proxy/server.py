"""The uvicorn server, with rerankd's shutdown: drain, close, exit 0.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets requests in flight finish within
``timeout_graceful_shutdown`` (``shutdown_grace_s``), cancels what is left, and runs the lifespan
shutdown, which closes the engines, their executors and the cache. This class adds two steps:
``/ready`` turns false as soon as shutdown begins, and when the grace period ends, requests still
being scored are answered with a JSON 503 and ``Retry-After`` (the client retries on another
replica) instead of being cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from types import FrameType

import uvicorn

from rerankd.service import RerankService

__all__ = ["Server", "run_until_stopped"]

log = logging.getLogger(__name__)


#: Seconds between the end of the grace period, when requests still scoring are answered with 503,
#: and uvicorn's own cut-off, which cancels whatever is left with a bare 500.
ANSWER_MARGIN_S = 2


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: RerankService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.service.drain()
        grace = self.config.timeout_graceful_shutdown or 0
        log.info(
            "shutting down: no new connections; %d request(s) in flight get up to %.0f s to finish",
            len(self.server_state.tasks),
            grace,
        )
        abort = asyncio.get_running_loop().call_later(grace, self._grace_over)
        self.config.timeout_graceful_shutdown = grace + ANSWER_MARGIN_S
        try:
            await super().shutdown(sockets)
        finally:
            abort.cancel()
        log.info("shut down")

    def _grace_over(self) -> None:
        n = self.service.abort_in_flight()
        if n:
            log.warning("grace period over: %d request(s) still scoring are answered with 503 to retry", n)


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def run_until_stopped(server: uvicorn.Server) -> None:
    """Run the server; a stop signal ends it cleanly, with a normal return.

    uvicorn handles SIGTERM and SIGINT while it runs, then re-raises the signal against the
    handlers it found. With Python's defaults that kills the process by the signal (exit status
    143 for SIGTERM) even after a clean drain; these handlers turn it into a return instead."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    with contextlib.suppress(_Stopped):
        server.run()
