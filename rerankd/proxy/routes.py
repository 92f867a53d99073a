"""Route handlers: decode, call the service, encode. Nothing else happens here."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi.spec import SecurityRequirement

from rerankd.proxy.auth import note_usage
from rerankd.proxy.errors import ErrorBody, error_responses, request_id_of
from rerankd.proxy.schemas import JINA, V1, V2, CohereResponse, JinaResponse, RerankRequest
from rerankd.service import RerankService

__all__ = ["ROUTES"]

AnyRequest = Request[Any, Any, Any]

# Guarded routes, for the OpenAPI description: a bearer key (when keys are on) and the one error body.
API_KEY: list[SecurityRequirement] = [{"apiKey": []}]
SCORING_ERRORS = error_responses(400, 401, 404, 413, 429, 500, 503)


@post("/v1/rerank", summary="Rerank (Cohere v1)", status_code=200, responses=SCORING_ERRORS, security=API_KEY)
async def rerank_v1(data: RerankRequest, service: RerankService, request: AnyRequest) -> CohereResponse:
    outcome = await service.rerank(V1.to_query(data), request_id=request_id_of(request))
    note_usage(request, outcome)
    return V1.cohere(data, outcome, request_id_of(request))


@post("/v2/rerank", summary="Rerank (Cohere v2)", status_code=200, responses=SCORING_ERRORS, security=API_KEY)
async def rerank_v2(data: RerankRequest, service: RerankService, request: AnyRequest) -> CohereResponse:
    outcome = await service.rerank(V2.to_query(data), request_id=request_id_of(request))
    note_usage(request, outcome)
    return V2.cohere(data, outcome, request_id_of(request))


@post(
    "/rerank",
    summary="Rerank (Jina / vLLM style)",
    status_code=200,
    responses=SCORING_ERRORS,
    security=API_KEY,
)
async def rerank_jina(data: RerankRequest, service: RerankService, request: AnyRequest) -> JinaResponse:
    outcome = await service.rerank(JINA.to_query(data), request_id=request_id_of(request))
    note_usage(request, outcome)
    return JINA.jina(data, outcome, request_id_of(request))


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
