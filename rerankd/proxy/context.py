"""What one HTTP request carries from layer to layer: a typed object in the ASGI scope.

The request middleware creates it; routes note what they served in it; the error handlers and the
middleware's end-of-request step read it. One slotted object under one scope key, instead of loose
string keys, so every field is typed and a request pays for one allocation.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from rerankd.auth.gate import Gate
from rerankd.auth.keys import KeyRecord
from rerankd.errors import RerankdError
from rerankd.service import RerankOutcome
from rerankd.stages import StageTimes

__all__ = ["CONTEXT_KEY", "RequestContext", "context_of", "header", "request_id_from"]

CONTEXT_KEY = "rerankd"

# Client-supplied ids are echoed in headers and logs: accept only a safe, bounded shape.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


@dataclass(slots=True, eq=False)
class RequestContext:
    request_id: str
    #: False for requests the router refused (404, 405): the middleware never saw them.
    routed: bool = True
    #: The key that was let through (its name is logged; the key itself is never kept).
    key: KeyRecord | None = None
    #: The gate that let it through, for the token reservation of scoring routes.
    gate: Gate | None = None
    #: Set by scoring routes once the body is decoded.
    requested_model: str | None = None
    documents: int | None = None
    outcome: RerankOutcome | None = None
    #: Where a scoring request's time went (set by scoring routes; TEI's timing headers).
    stages: StageTimes | None = None
    #: Tokens held on the key's token bucket at admission, settled when the response starts.
    reserved_tokens: int = 0
    settled: bool = False
    #: A refusal raised after the middleware let the request in (a token reservation that did not fit).
    refusal: RerankdError | None = None
    #: Why the request was answered with an error (the error's detail), for its log line.
    error: str | None = None


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a header (``name`` in lower case, as ASGI servers give them)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it has a safe shape, else a new one."""
    given = header(headers, b"x-request-id")
    if given is not None:
        text = given.decode("latin-1")
        if _SAFE_ID.fullmatch(text):
            return text
    return uuid.uuid4().hex


def context_of(scope: Any) -> RequestContext | None:
    return cast(RequestContext | None, scope.get(CONTEXT_KEY))
