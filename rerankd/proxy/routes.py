"""Route handlers: decode, call the service, encode. Nothing else happens here.

The scoring routes are built from the dialects (``rerankd/proxy/dialects/``), one route each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import SecurityRequirement
from litestar.types import Receive, Scope

from rerankd.auth.gate import Gate
from rerankd.auth.keys import KeyRecord
from rerankd.errors import BadRequest, RateLimited
from rerankd.estimate import token_bound
from rerankd.proxy.context import RequestContext, context_of, header
from rerankd.proxy.dialects import DIALECTS, Dialect, Reply, UnknownFields
from rerankd.proxy.dialects.base import check_query_length, unknown_field_warnings, unknown_fields
from rerankd.proxy.disconnect import until_disconnect
from rerankd.proxy.errors import ErrorBody, error_responses, request_id_of
from rerankd.proxy.paths import HEALTH, READY
from rerankd.service import READ_WRITE, CachePolicy, RerankOutcome, RerankQuery, RerankService
from rerankd.stages import StageTimes

__all__ = ["ROUTES", "answer"]

AnyRequest = Request[Any, Any, Any]

# Guarded routes, for the OpenAPI description: a bearer key (when keys are on) and the one error body.
API_KEY: list[SecurityRequirement] = [{"apiKey": []}]
SCORING_ERRORS = error_responses(400, 401, 404, 413, 429, 500, 503)
SCORING_ERRORS[422] = ResponseSpec(ErrorBody, description="Unknown request fields, with the strict setting")

RESPONSE_HEADERS = [
    ResponseHeader(
        name="X-Cache-Hits",
        description="HITS/PAIRS: pairs of this request served from the cache, of all pairs",
        documentation_only=True,
    ),
    *(
        ResponseHeader(
            name=name,
            description=f"{what} (milliseconds; see docs/observability.md)",
            documentation_only=True,
        )
        for name, what in (
            ("X-Total-Time", "Time from receiving the request to the start of this response"),
            ("X-Compute-Time", "Time of the scoring step: cache look-up, tokenization, queue, inference"),
            ("X-Tokenization-Time", "Time this request's documents spent being tokenized"),
            ("X-Queue-Time", "Time from entering the engine to the launch of its first batch"),
            ("X-Inference-Time", "Time from the launch of its first batch to its last sequence scored"),
        )
    ),
    ResponseHeader(
        name="X-API-Warning",
        description="What the server did differently from what was asked (unknown fields, a cut query)",
        documentation_only=True,
    ),
]


def cache_policy(scope: Scope) -> CachePolicy:
    """``Cache-Control: no-cache`` skips the cache read, ``no-store`` the write."""
    value = header(scope["headers"], b"cache-control")
    if not value:
        return READ_WRITE
    directives = {d.strip().lower() for d in value.decode("latin-1").split(",")}
    return CachePolicy(read="no-cache" not in directives, write="no-store" not in directives)


def tenant_of(scope: Scope, ctx: RequestContext) -> str:
    """Who the engine's time is shared between: the API key's name, else the client's address."""
    if ctx.key is not None:
        return f"key:{ctx.key.name}"
    client = scope.get("client")
    return f"addr:{client[0]}" if client else ""


def _context(scope: Scope) -> RequestContext:
    ctx = context_of(scope)
    assert ctx is not None, "the request middleware runs on every route"
    return ctx


async def _reserve(
    ctx: RequestContext, gate: Gate, key: KeyRecord, service: RerankService, queries: Sequence[RerankQuery]
) -> None:
    """Hold the most tokens this request can score on its key's token bucket; the request
    middleware settles the real count when the response starts."""
    bound = 0
    for query in queries:
        source = service.source(service.resolve(query.model))
        opts = query.options
        if not opts.instruction and source.config.instruction:
            opts = dataclasses.replace(opts, instruction=source.config.instruction)
        bound += token_bound(source.format, source.max_length, query.query, query.documents, opts)
    try:
        ctx.reserved_tokens = await gate.reserve(key, bound)
    except RateLimited as exc:
        ctx.refusal = exc  # logged and counted by the middleware, as its own refusals
        raise


async def _rerank(
    scope: Scope, receive: Receive, service: RerankService, queries: Sequence[RerankQuery]
) -> list[RerankOutcome]:
    """Score, but stop as soon as the client disconnects so its queued work is dropped."""
    ctx = _context(scope)
    policy, tenant = cache_policy(scope), tenant_of(scope, ctx)
    documents = [d for q in queries for d in q.documents] if len(queries) > 1 else queries[0].documents
    limit = service.settings.max_documents
    if len(queries) > 1 and len(documents) > limit:
        # The service checks each query; pairs of many queries count against the one limit too.
        raise BadRequest(f"too many pairs: {len(documents)}; at most {limit} per request")
    ctx.requested_model = queries[0].model
    ctx.documents = len(documents)
    ctx.stages = stages = StageTimes()
    if ctx.key is not None and ctx.key.tpm and ctx.gate is not None:
        await _reserve(ctx, ctx.gate, ctx.key, service, queries)
    rid = ctx.request_id
    if len(queries) == 1:
        work = service.rerank(queries[0], request_id=rid, cache=policy, tenant=tenant, stages=stages)
        outcomes = [await until_disconnect(receive, work)]
    else:
        many = asyncio.gather(
            *(service.rerank(q, request_id=rid, cache=policy, tenant=tenant, stages=stages) for q in queries)
        )
        outcomes = await until_disconnect(receive, many)
    ctx.outcome = outcomes[0] if len(outcomes) == 1 else _merged(outcomes)
    return outcomes


def _merged(outcomes: Sequence[RerankOutcome]) -> RerankOutcome:
    """Several queries of one request (vLLM's /score), counted as one for usage and metrics."""
    return RerankOutcome(
        model=outcomes[0].model,
        results=[],
        input_tokens=sum(o.input_tokens for o in outcomes),
        search_units=sum(o.search_units for o in outcomes),
        cache_hits=sum(o.cache_hits for o in outcomes),
        cached_tokens=sum(o.cached_tokens for o in outcomes),
    )


def _headers(
    queries: Sequence[RerankQuery], outcomes: Sequence[RerankOutcome], reply: Reply
) -> dict[str, str]:
    pairs = sum(len(q.documents) for q in queries)
    headers = {"X-Cache-Hits": f"{sum(o.cache_hits for o in outcomes)}/{pairs}"}
    if reply.warnings:
        headers["X-API-Warning"] = "; ".join(reply.warnings)
    return headers


def _warn_unknown(names: Sequence[str], service: RerankService, dialect: Dialect[Any], reply: Reply) -> None:
    if not names:
        return
    warnings = unknown_field_warnings(names, dialect.request_type)
    if service.settings.strict:
        raise UnknownFields("; ".join(warnings).replace(" ignored", ""))
    reply.warnings += warnings


async def answer(
    dialect: Dialect[Any],
    data: Any,
    unknown: Sequence[str],
    service: RerankService,
    scope: Scope,
    receive: Receive,
) -> tuple[Any, dict[str, str]]:
    """One decoded scoring request answered (``unknown``: the body's top-level fields that its
    dialect lacks): the response body and its headers. Both ways in call it, Litestar's handler
    and the direct route (``rerankd.proxy.direct``)."""
    reply = Reply(_context(scope).request_id)
    _warn_unknown(unknown, service, dialect, reply)
    queries = dialect.queries(data)
    rule = dialect.long_query_rule(data)
    for query in queries:
        check_query_length(service, query, rule, reply)
    outcomes = await _rerank(scope, receive, service, queries)
    return dialect.respond(data, outcomes, reply), _headers(queries, outcomes, reply)


def dialect_route(dialect: Dialect[Any]) -> HTTPRouteHandler:
    """The POST route of one dialect: its request struct in, its response out, same errors, key and
    headers for all. Well-formed requests are answered by the direct route before they get here;
    this one serves the rest (Litestar's validation errors) and describes the route in OpenAPI."""

    async def handler(data: Any, service: RerankService, request: AnyRequest) -> Response[Any]:
        unknown = unknown_fields(await request.body(), dialect.request_type)
        body, headers = await answer(dialect, data, unknown, service, request.scope, request.receive)
        return Response(body, headers=headers)

    # Litestar reads the handler's annotations for validation and the OpenAPI description: give it
    # this dialect's types, not Any.
    handler.__annotations__ = {
        "data": dialect.request_type,
        "service": RerankService,
        "request": AnyRequest,
        "return": Response[dialect.response_type],  # type: ignore[name-defined]
    }
    handler.__name__ = handler.__qualname__ = "rerank_" + dialect.name.replace("-", "_")
    return post(
        list(dialect.paths),
        summary=dialect.summary,
        status_code=200,
        responses=SCORING_ERRORS,
        security=API_KEY,
        response_headers=RESPONSE_HEADERS,
    )(handler)


#: When the models were listed first; vLLM's cards carry a ``created`` time.
_STARTED = int(time.time())


class ModelPermission(msgspec.Struct):
    """vLLM's (and OpenAI's former) permission record: everything allowed."""

    id: str
    created: int
    object: str = "model_permission"
    allow_create_engine: bool = False
    allow_sampling: bool = False
    allow_logprobs: bool = False
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(msgspec.Struct):
    id: str
    format: str
    max_length: int
    #: vLLM's fields: the context (same as max_length), the served name's source, and so on.
    created: int
    root: str
    max_model_len: int
    permission: list[ModelPermission]
    parent: str | None = None
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
                created=_STARTED,
                root=src.config.path,
                max_model_len=src.max_length,
                permission=[ModelPermission(id=f"modelperm-{name}", created=_STARTED)],
                aliases=sorted(a for a, t in aliases.items() if t == name),
            )
            for name, src in service.sources.items()
        ]
    )


class Replicas(msgspec.Struct):
    live: int
    total: int


class Status(msgspec.Struct, omit_defaults=True):
    #: ``ok`` (/health), ``ready`` (/ready), or ``degraded``: some device replicas are taken out.
    status: str
    #: Replicas serving, over the models run on several devices (``devices``); absent otherwise.
    replicas: Replicas | None = None
    #: Per model, the devices whose replica is taken out.
    down: dict[str, list[str]] | None = None


def _status(service: RerankService, fine: str) -> Status:
    capacity = service.capacity()
    if capacity is None:
        return Status(fine)
    replicas = Replicas(capacity.live, capacity.total)
    if capacity.live < capacity.total:
        return Status("degraded", replicas, capacity.down)
    return Status(fine, replicas)


@get(HEALTH, summary="The process is alive")
async def health(service: RerankService) -> Status:
    return _status(service, "ok")


@get(READY, summary="Every model is loaded and warm", responses=None)
async def ready(service: RerankService, request: AnyRequest) -> Response[Status | ErrorBody]:
    if service.ready:
        # Degraded capacity still serves: 200, with the replicas counted in the body.
        return Response(_status(service, "ready"))
    body = ErrorBody(
        message="not ready", detail="models are loading or an engine failed", id=request_id_of(request)
    )
    return Response(body, status_code=503, headers={"Retry-After": "5"})


ROUTES = [*(dialect_route(d) for d in DIALECTS), list_models, health, ready]
