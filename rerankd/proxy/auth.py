"""API keys on the HTTP side: which routes need ``Authorization: Bearer KEY``, and reading it.

The request middleware (:mod:`rerankd.proxy.middleware`) authenticates and applies the key's
limits before the route runs and keeps the key's record in the request context for logs; keys are
never logged, names are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rerankd.errors import Unauthorized
from rerankd.proxy.paths import DOCS, METRICS, PROBES

__all__ = ["OPEN_PATHS", "bearer_token", "open_paths"]

#: Routes that never need a key: probes and the API description. Path templates, or prefixes ending "/".
OPEN_PATHS: frozenset[str] = PROBES | {DOCS, DOCS + "/"}

# RFC 6750 b64token, bounded: longer values are not keys and are not worth hashing.
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]{1,256}=*) *$", re.IGNORECASE)


def open_paths(*, metrics_auth: bool) -> frozenset[str]:
    return OPEN_PATHS if metrics_auth else OPEN_PATHS | {METRICS}


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The key in the one ``Authorization: Bearer`` header, or :class:`Unauthorized`."""
    values = [v for k, v in headers if k == b"authorization"]
    if not values:
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer KEY'")
    match = _BEARER.match(values[0].decode("latin-1")) if len(values) == 1 else None
    if match is None:
        raise Unauthorized("malformed Authorization header: expected 'Bearer KEY'")
    return match.group(1)
