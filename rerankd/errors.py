"""The one exception hierarchy of rerankd.

Every error a request can meet is a :class:`RerankdError` with an HTTP status; ``rerankd.proxy.errors``
maps them to responses in one place. Modules below ``proxy`` raise these and never see HTTP.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientClosedRequest",
    "ConfigError",
    "EngineFailure",
    "EngineStartError",
    "EngineUnavailable",
    "KeyExists",
    "KeyNotFound",
    "KeyStoreUnavailable",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "RerankdError",
    "ShuttingDown",
    "Timeout",
    "Unauthorized",
]


class RerankdError(Exception):
    """Base class. ``message`` is safe to show to clients; ``detail`` adds specifics."""

    status_code: int = 500
    default_message: str = "internal error"

    #: Seconds a client should wait before retrying (sent as ``Retry-After``); None: no header.
    default_retry_after: float | None = None

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None) -> None:
        self.detail = detail or self.default_message
        self.retry_after = self.default_retry_after if retry_after is None else retry_after
        super().__init__(self.detail)

    @property
    def message(self) -> str:
        return self.detail


class ConfigError(RerankdError):
    """Invalid settings; raised at start-up, never during a request."""

    default_message = "invalid configuration"


class BadRequest(RerankdError):
    status_code = 400
    default_message = "invalid request"

    @property
    def message(self) -> str:
        return f"invalid request: {self.detail}"


class PayloadTooLarge(RerankdError):
    status_code = 413
    default_message = "request body is too large"


class ModelNotFound(RerankdError):
    status_code = 404
    default_message = "model not found"


class ClientClosedRequest(RerankdError):
    """The client went away before its answer was ready; its queued work was dropped."""

    status_code = 499
    default_message = "client closed the request"


class Overloaded(RerankdError):
    """The scoring queue is full: retry shortly."""

    status_code = 503
    default_message = "server is overloaded, retry later"
    default_retry_after = 1.0


class Timeout(Overloaded):
    default_message = "the request did not finish within its deadline"


class NotReady(Overloaded):
    default_message = "model is still loading"
    default_retry_after = 5.0


class EngineUnavailable(Overloaded):
    """The engine is down (dead process, unreachable upstream)."""

    default_message = "scoring engine is unavailable"
    default_retry_after = 5.0


class ShuttingDown(RerankdError):
    """The server stopped before this request finished (shutdown grace over): retry elsewhere."""

    status_code = 503
    default_message = "server is shutting down; retry the request"
    default_retry_after = 1.0


class EngineStartError(RerankdError):
    """An engine could not load its model (bad files, out of memory); the server exits."""

    default_message = "the scoring engine could not start"


class EngineFailure(RerankdError):
    """An engine raised while scoring. Its text goes to the log only, never to the client."""

    status_code = 500
    default_message = "internal error while scoring; see the server log for this request id"

    @property
    def message(self) -> str:
        return self.default_message


# -- API keys ----------------------------------------------------------------------------------


class Unauthorized(RerankdError):
    """A guarded route was called without a valid key (missing, malformed, unknown, revoked, expired)."""

    status_code = 401
    default_message = "missing or invalid API key"


class RateLimited(RerankdError):
    """A key went over its requests or tokens per minute; ``retry_after`` says when it may retry."""

    status_code = 429
    default_message = "rate limit exceeded"


class KeyStoreUnavailable(Overloaded):
    """The key store (Redis) has not answered yet, so no key can be checked."""

    default_message = "the API key store is unavailable"
    default_retry_after = 2.0


class KeyExists(RerankdError):
    status_code = 409
    default_message = "a key with this name already exists"


class KeyNotFound(RerankdError):
    status_code = 404
    default_message = "no key with this name"
