"""Route handlers: decode, call the service, encode. Nothing else happens here."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.openapi.spec import SecurityRequirement

from rerankd.auth.gate import Gate
from rerankd.auth.keys import KeyRecord
from rerankd.errors import RateLimited
from rerankd.estimate import token_bound
from rerankd.proxy.context import RequestContext, context_of, header
from rerankd.proxy.disconnect import until_disconnect
from rerankd.proxy.errors import ErrorBody, error_responses, request_id_of
from rerankd.proxy.schemas import JINA, V1, V2, CohereResponse, JinaResponse, RerankRequest
from rerankd.service import READ_WRITE, CachePolicy, RerankOutcome, RerankQuery, RerankService

__all__ = ["ROUTES"]

AnyRequest = Request[Any, Any, Any]

# Guarded routes, for the OpenAPI description: a bearer key (when keys are on) and the one error body.
API_KEY: list[SecurityRequirement] = [{"apiKey": []}]
SCORING_ERRORS = error_responses(400, 401, 404, 413, 429, 500, 503)

CACHE_HEADERS = [
    ResponseHeader(
        name="X-Cache-Hits",
        description="HITS/PAIRS: pairs of this request served from the cache, of all pairs",
        documentation_only=True,
    )
]


def cache_policy(request: AnyRequest) -> CachePolicy:
    """``Cache-Control: no-cache`` skips the cache read, ``no-store`` the write."""
    value = header(request.scope["headers"], b"cache-control")
    if not value:
        return READ_WRITE
    directives = {d.strip().lower() for d in value.decode("latin-1").split(",")}
    return CachePolicy(read="no-cache" not in directives, write="no-store" not in directives)


def tenant_of(request: AnyRequest, ctx: RequestContext) -> str:
    """Who the engine's time is shared between: the API key's name, else the client's address."""
    if ctx.key is not None:
        return f"key:{ctx.key.name}"
    client = request.scope.get("client")
    return f"addr:{client[0]}" if client else ""


def _cache_headers(data: RerankRequest, outcome: RerankOutcome) -> dict[str, str]:
    return {"X-Cache-Hits": f"{outcome.cache_hits}/{len(data.documents)}"}


def _context(request: AnyRequest) -> RequestContext:
    ctx = context_of(request.scope)
    assert ctx is not None, "the request middleware runs on every route"
    return ctx


async def _rerank(request: AnyRequest, service: RerankService, query: RerankQuery) -> RerankOutcome:
    """Score, but stop as soon as the client disconnects so its queued work is dropped."""
    ctx = _context(request)
    ctx.requested_model = query.model
    ctx.documents = len(query.documents)
    if ctx.key is not None and ctx.key.tpm and ctx.gate is not None:
        await _reserve(ctx, ctx.gate, ctx.key, service, query)
    work = service.rerank(
        query, request_id=ctx.request_id, cache=cache_policy(request), tenant=tenant_of(request, ctx)
    )
    ctx.outcome = outcome = await until_disconnect(request.receive, work)
    return outcome


async def _reserve(
    ctx: RequestContext, gate: Gate, key: KeyRecord, service: RerankService, query: RerankQuery
) -> None:
    """Hold the most tokens this request can score on its key's token bucket; the request
    middleware settles the real count when the response starts."""
    source = service.sources[service.resolve(query.model)]
    opts = query.options
    if not opts.instruction and source.config.instruction:
        opts = dataclasses.replace(opts, instruction=source.config.instruction)
    bound = token_bound(source.format, source.max_length, query.query, query.documents, opts)
    try:
        ctx.reserved_tokens = await gate.reserve(key, bound)
    except RateLimited as exc:
        ctx.refusal = exc  # logged and counted by the middleware, as its own refusals
        raise


def _scoring(path: str, summary: str) -> post:
    """The route decorator shared by the three dialects: same errors, key and headers."""
    return post(
        path,
        summary=summary,
        status_code=200,
        responses=SCORING_ERRORS,
        security=API_KEY,
        response_headers=CACHE_HEADERS,
    )


@_scoring("/v1/rerank", "Rerank (Cohere v1)")
async def rerank_v1(
    data: RerankRequest, service: RerankService, request: AnyRequest
) -> Response[CohereResponse]:
    outcome = await _rerank(request, service, V1.to_query(data))
    body = V1.cohere(data, outcome, _context(request).request_id)
    return Response(body, headers=_cache_headers(data, outcome))


@_scoring("/v2/rerank", "Rerank (Cohere v2)")
async def rerank_v2(
    data: RerankRequest, service: RerankService, request: AnyRequest
) -> Response[CohereResponse]:
    outcome = await _rerank(request, service, V2.to_query(data))
    body = V2.cohere(data, outcome, _context(request).request_id)
    return Response(body, headers=_cache_headers(data, outcome))


@_scoring("/rerank", "Rerank (Jina / vLLM style)")
async def rerank_jina(
    data: RerankRequest, service: RerankService, request: AnyRequest
) -> Response[JinaResponse]:
    outcome = await _rerank(request, service, JINA.to_query(data))
    body = JINA.jina(data, outcome, _context(request).request_id)
    return Response(body, headers=_cache_headers(data, outcome))


class ModelCard(msgspec.Struct):
    id: str
    format: str
    max_length: int
    object: str = "model"
    owned_by: str = "rerankd"
    aliases: list[str] = msgspec.field(default_factory=list)


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


@get("/v1/models", summary="Served models", responses=error_responses(401, 429, 503), security=API_KEY)
async def list_models(service: RerankService) -> ModelList:
    aliases = service.settings.aliases
    return ModelList(
        data=[
            ModelCard(
                id=name,
                format=src.format,
                max_length=src.max_length,
                aliases=sorted(a for a, t in aliases.items() if t == name),
            )
            for name, src in service.sources.items()
        ]
    )


class Status(msgspec.Struct):
    status: str


@get("/health", summary="The process is alive")
async def health() -> Status:
    return Status("ok")


@get("/ready", summary="Every model is loaded and warm", responses=None)
async def ready(service: RerankService, request: AnyRequest) -> Response[Status | ErrorBody]:
    if service.ready:
        return Response(Status("ready"))
    body = ErrorBody(
        message="not ready", detail="models are loading or an engine failed", id=request_id_of(request)
    )
    return Response(body, status_code=503, headers={"Retry-After": "5"})


ROUTES = [rerank_v1, rerank_v2, rerank_jina, list_models, health, ready]
