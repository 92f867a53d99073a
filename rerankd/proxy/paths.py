"""The server's own paths that are not part of any rerank API: probes, metrics and the API reference.
Routes, auth, tracing and the request log read them from here."""

from __future__ import annotations

__all__ = ["DOCS", "HEALTH", "METRICS", "PROBES", "QUIET", "READY"]

HEALTH = "/health"
READY = "/ready"
METRICS = "/metrics"
DOCS = "/docs"

#: Kubernetes probes: open without a key, never traced.
PROBES: frozenset[str] = frozenset({HEALTH, READY})
#: Polled by machines, not called by clients: no trace span and no per-request log line.
QUIET: frozenset[str] = PROBES | {METRICS}
