"""The one circuit breaker: for Redis (the cache and the limits share one per Redis) and for each
upstream of the remote engine.

Closed → open after ``threshold`` consecutive faults; while open, calls are skipped until the
back-off passes; then one call probes (half-open). A good probe closes the breaker, a bad one
reopens it with twice the back-off, up to ``max_backoff_s``. State changes are logged once each,
so an outage costs a log line, not one per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["Breaker"]

log = logging.getLogger(__name__)


class Breaker:
    def __init__(
        self,
        name: str,
        *,
        threshold: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        #: What callers do while it is open, for the log line ("serving uncached").
        meanwhile: str = "skipping it",
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.initial_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.meanwhile = meanwhile
        self._clock = clock
        self._consecutive = 0
        self._backoff_s = backoff_s
        self._retry_at: float | None = None  # set while open
        self._probing = False
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self._retry_at is not None

    def retry_in(self) -> float:
        """Seconds until a probe may go (0.0 when closed or due)."""
        if self._retry_at is None:
            return 0.0
        return max(0.0, self._retry_at - self._clock())

    @property
    def available(self) -> bool:
        """Closed, or open with its back-off over (a probe is due or under way)."""
        return self._retry_at is None or self._clock() >= self._retry_at

    def allow(self) -> bool:
        """May a call go to the backend now? While open, only the one probe may."""
        if self._retry_at is None:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._consecutive = 0
        if self._retry_at is not None:
            log.warning("%s is reachable again", self.name)
            self._retry_at = None
            self._probing = False
            self._backoff_s = self.initial_backoff_s

    def abandon(self) -> None:
        """A call ended without a verdict (cancelled): let the next call probe instead."""
        self._probing = False

    def failure(self, exc: BaseException) -> None:
        self._consecutive += 1
        if self._retry_at is not None:
            if self._probing:  # the probe failed: wait longer before the next one
                self._probing = False
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                self._retry_at = self._clock() + self._backoff_s
                log.debug(
                    "%s still unreachable (%s); next try in %.1f s", self.name, why(exc), self._backoff_s
                )
            return
        if self._consecutive >= self.threshold:
            self.trip(exc)

    def trip(self, exc: BaseException) -> None:
        """Open now (e.g. the backend is down at start-up)."""
        self.opened += 1
        self._probing = False
        self._retry_at = self._clock() + self._backoff_s
        log.warning(
            "%s is unavailable (%s); %s, next try in %.1f s",
            self.name,
            why(exc),
            self.meanwhile,
            self._backoff_s,
        )


def why(exc: BaseException) -> str:
    """A fault in a few words for a log line."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer within the time budget"
    return f"{type(exc).__name__}: {exc}"
