"""Optional OpenTelemetry tracing: one server span per request, exported over OTLP/HTTP.

Off unless ``otel`` is set, and then only if the ``otel`` extra is installed; the exporter reads
the standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables. Probes and scrapes are
not traced.
"""

from __future__ import annotations

import logging

from litestar.types import Middleware

from rerankd.config import Settings
from rerankd.proxy.paths import QUIET

__all__ = ["tracing_middleware"]

log = logging.getLogger(__name__)


def tracing_middleware(settings: Settings) -> list[Middleware]:
    if not settings.otel:
        return []
    try:
        from litestar.plugins.opentelemetry import OpenTelemetryConfig
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        # Tracing is a diagnostic aid: a missing package must not keep the service from serving.
        log.warning("otel is on but OpenTelemetry is not installed (pip install 'rerankd[otel]'): %s", exc)
        return []
    provider = TracerProvider(resource=Resource.create({"service.name": "rerankd"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing requests with OpenTelemetry (OTLP/HTTP)")
    return [OpenTelemetryConfig(tracer_provider=provider, exclude=sorted(QUIET)).middleware]
