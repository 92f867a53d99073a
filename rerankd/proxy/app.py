"""The app factory. Resources live in the lifespan and reach handlers through dependencies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from rerankd import __version__
from rerankd.auth.gate import Gate, build_gate
from rerankd.config import Settings
from rerankd.errors import RerankdError
from rerankd.proxy.apidocs import assets_router, swagger_plugin
from rerankd.proxy.auth import open_paths
from rerankd.proxy.direct import DirectRoutes
from rerankd.proxy.errors import RerankdRequest, exception_handlers
from rerankd.proxy.metrics import Metrics, metrics_endpoint
from rerankd.proxy.middleware import RequestMiddleware
from rerankd.proxy.observe import observe_unmatched
from rerankd.proxy.paths import DOCS
from rerankd.proxy.routes import ROUTES
from rerankd.proxy.tracing import tracing_middleware
from rerankd.service import RerankService

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    service: RerankService | None = None,
    gate: Gate | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    direct: bool = True,
) -> Litestar:
    """Build the app. Models load in the background after start-up so ``/health`` answers at
    once and ``/ready`` tells when scoring can begin; a load failure calls ``on_fatal``.
    ``direct=False`` sends every scoring request through Litestar's handler instead of the direct
    routes (the tests compare the two)."""
    svc = service or RerankService(settings)
    keys = gate or build_gate(settings, redis=svc.redis)
    metrics = Metrics(svc)

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await keys.start()
        loading = asyncio.create_task(svc.start())

        def loaded(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            # rerankd's own errors (a download refused, an engine that cannot start) say what went
            # wrong in one line; anything else gets its traceback.
            log.error(
                "loading models failed: %s", exc, exc_info=None if isinstance(exc, RerankdError) else exc
            )
            if on_fatal is not None:
                on_fatal(exc)

        loading.add_done_callback(loaded)
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
            # Keys first: the service closes the Redis client they share.
            await keys.close()
            await svc.close()

    return Litestar(
        route_handlers=[*ROUTES, metrics_endpoint, assets_router()],
        dependencies={
            "service": Provide(lambda: svc, use_cache=True, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, use_cache=True, sync_to_thread=False),
        },
        # Requests the router refuses (404, 405) never reach the middleware: counted and logged there.
        exception_handlers=observe_unmatched(metrics, exception_handlers),
        middleware=[
            *tracing_middleware(settings),
            DefineMiddleware(
                RequestMiddleware,
                gate=keys,
                metrics=metrics,
                service=svc,
                open_paths=open_paths(metrics_auth=settings.metrics_auth),
                direct=DirectRoutes(svc, max_body=settings.max_body_bytes) if direct else None,
            ),
        ],
        request_class=RerankdRequest,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="rerankd",
            version=__version__,
            path=DOCS,
            render_plugins=[swagger_plugin()],
            components=Components(
                security_schemes={
                    "apiKey": SecurityScheme(type="http", scheme="bearer", description="rk-...")
                }
            ),
        ),
        debug=False,
        # Logging is set up by `rerankd serve` (level from --log-level); Litestar's default would reset
        # the root logger to INFO with its own format.
        logging_config=None,
    )
