"""The one exception hierarchy of rerankd.

Every error a request can meet is a :class:`RerankdError` with an HTTP status; ``rerankd.proxy.errors``
maps them to responses in one place. Modules below ``proxy`` raise these and never see HTTP.

The tree is by meaning, so callers catch what they can act on, not a status code:

- :class:`ClientError`: the request itself is at fault (4xx); retrying it unchanged does not help
  (except :class:`RateLimited`, after its ``Retry-After``).
- :class:`Unavailable`: the server cannot serve it now (503 with ``Retry-After``): overloaded, past its
  deadline, loading, shutting down, or an engine or the key store is down. The same request may succeed
  later or on another replica.
- :class:`InternalError`: a fault of rerankd or its engine (500); the details go to the log only.
- :class:`StartupError`: bad settings or a model that cannot load; raised before serving, never during
  a request.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ClientClosedRequest",
    "ClientError",
    "ConfigError",
    "EngineFailure",
    "EngineStartError",
    "EngineUnavailable",
    "InternalError",
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
    "StartupError",
    "Timeout",
    "Unauthorized",
    "Unavailable",
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


# -- the four kinds -----------------------------------------------------------------------------


class ClientError(RerankdError):
    """The request is at fault (4xx)."""

    status_code = 400
    default_message = "invalid request"


class Unavailable(RerankdError):
    """The server cannot serve this now; retry after ``Retry-After`` (here or on another replica)."""

    status_code = 503
    default_message = "service unavailable, retry later"
    default_retry_after = 1.0


class InternalError(RerankdError):
    """A fault of rerankd or of its engine (500)."""

    status_code = 500


class StartupError(RerankdError):
    """The server cannot start: raised before serving, never during a request."""


# -- start-up --------------------------------------------------------------------------------------


class ConfigError(StartupError):
    """Invalid settings."""

    default_message = "invalid configuration"


class EngineStartError(StartupError):
    """An engine could not load its model (bad files, out of memory); the server exits."""

    default_message = "the scoring engine could not start"


# -- the request's fault -----------------------------------------------------------------------------


class BadRequest(ClientError):
    status_code = 400
    default_message = "invalid request"

    @property
    def message(self) -> str:
        return f"invalid request: {self.detail}"


class PayloadTooLarge(ClientError):
    status_code = 413
    default_message = "request body is too large"


class ModelNotFound(ClientError):
    status_code = 404
    default_message = "model not found"


class ClientClosedRequest(ClientError):
    """The client went away before its answer was ready; its queued work was dropped."""

    status_code = 499
    default_message = "client closed the request"


# -- not now -----------------------------------------------------------------------------------------


class Overloaded(Unavailable):
    """The scoring queue is full: retry shortly."""

    default_message = "server is overloaded, retry later"


class Timeout(Unavailable):
    """The request's deadline passed before it was scored."""

    default_message = "the request did not finish within its deadline"


class NotReady(Unavailable):
    default_message = "model is still loading"
    default_retry_after = 5.0


class EngineUnavailable(Unavailable):
    """The engine is down (dead process, unreachable upstream)."""

    default_message = "scoring engine is unavailable"
    default_retry_after = 5.0


class ShuttingDown(Unavailable):
    """The server stopped before this request finished (shutdown grace over): retry elsewhere."""

    default_message = "server is shutting down; retry the request"


# -- rerankd's fault ---------------------------------------------------------------------------------


class EngineFailure(InternalError):
    """An engine raised while scoring. Its text goes to the log only, never to the client."""

    default_message = "internal error while scoring; see the server log for this request id"

    @property
    def message(self) -> str:
        return self.default_message


# -- API keys ----------------------------------------------------------------------------------


class Unauthorized(ClientError):
    """A guarded route was called without a valid key (missing, malformed, unknown, revoked, expired)."""

    status_code = 401
    default_message = "missing or invalid API key"


class RateLimited(ClientError):
    """A key went over its requests or tokens per minute; ``retry_after`` says when it may retry."""

    status_code = 429
    default_message = "rate limit exceeded"


class KeyStoreUnavailable(Unavailable):
    """The key store (Redis) has not answered yet, so no key can be checked."""

    default_message = "the API key store is unavailable"
    default_retry_after = 2.0


class KeyExists(ClientError):
    status_code = 409
    default_message = "a key with this name already exists"


class KeyNotFound(ClientError):
    status_code = 404
    default_message = "no key with this name"
