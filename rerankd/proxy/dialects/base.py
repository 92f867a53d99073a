"""What every API dialect is: its request struct, how it becomes rerank queries, how outcomes
become its response, and its rules for unknown fields and over-long queries.

Routes are built from the dialects by :func:`rerankd.proxy.routes.dialect_route`; a dialect knows
nothing of Litestar. One request may become several queries (vLLM's ``/score`` pairs several
queries with their documents); every other dialect makes one.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import msgspec

from rerankd.errors import BadRequest
from rerankd.service import RerankOutcome, RerankQuery, RerankService

__all__ = [
    "Dialect",
    "Reply",
    "UnknownFields",
    "check_query_length",
    "unknown_fields",
]

Req = TypeVar("Req", bound=msgspec.Struct)

#: What a query longer than the model's context gets: cut to fit, with a warning, or a 400.
LongQuery = Literal["truncate", "reject"]


class UnknownFields(BadRequest):
    """A request named fields its dialect does not have, and the server is strict."""

    status_code = 422


@dataclass(slots=True)
class Reply:
    """What a response carries besides its body: the request id and the warnings for the client."""

    request_id: str
    warnings: list[str] = field(default_factory=list)


class Dialect(ABC, Generic[Req]):
    """One API dialect. Subclasses set the class attributes and implement the two conversions."""

    #: Short name, for logs and docs.
    name: ClassVar[str]
    paths: ClassVar[tuple[str, ...]]
    summary: ClassVar[str]
    request_type: ClassVar[type[msgspec.Struct]]
    #: The response body's type, for the OpenAPI description (a union where the shape varies).
    response_type: ClassVar[Any]
    long_query: ClassVar[LongQuery] = "truncate"

    @abstractmethod
    def queries(self, req: Req) -> list[RerankQuery]:
        """The request in neutral form; :class:`BadRequest` for what its dialect's rules refuse."""

    @abstractmethod
    def respond(self, req: Req, outcomes: Sequence[RerankOutcome], reply: Reply) -> Any:
        """The response body, one outcome per query in the order :meth:`queries` gave them."""

    def long_query_rule(self, req: Req) -> LongQuery:
        """Per request where a dialect lets the client choose (TEI's ``truncate``)."""
        return self.long_query


def unknown_fields(body: bytes, request_type: type[msgspec.Struct]) -> list[str]:
    """Top-level keys of a JSON object body that ``request_type`` does not have."""
    try:
        keys: Iterable[str] = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return []  # the body was decoded into the request already: this cannot happen for objects
    known = set(request_type.__struct_encode_fields__)
    return [k for k in keys if k not in known]


#: Unknown fields named one by one; beyond, only counted (the warning goes into a header).
_MAX_NAMED = 10


def unknown_field_warnings(names: Sequence[str], request_type: type[msgspec.Struct]) -> list[str]:
    known = list(request_type.__struct_encode_fields__)
    out = []
    for name in names[:_MAX_NAMED]:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        # ascii(): a client's field name may hold line breaks or any character; a header may not.
        out.append(f"unknown field {name[:64]!a} ignored{hint}")
    if len(names) > _MAX_NAMED:
        out.append(f"{len(names) - _MAX_NAMED} more unknown fields ignored")
    return out


def check_query_length(service: RerankService, query: RerankQuery, rule: LongQuery, reply: Reply) -> None:
    """A query over the model's context: refused (``reject``) or noted in a warning (``truncate``;
    the format then cuts it). Engines without a local tokenizer (remote) are not checked."""
    name = service.resolve(query.model)
    engine = service.engines.get(name)
    fmt = getattr(engine, "format", None)
    if fmt is None:
        return  # not loaded yet (the service answers 503) or scored elsewhere
    over = fmt.query_over(query.query, query.options)
    if over is None:
        return
    tokens, room = over
    what = f"the query is {tokens} tokens, more than the {room} that fit in the context of model {name!r}"
    if rule == "reject":
        raise BadRequest(f"{what}. Please reduce the length of the input prompt.")
    reply.warnings.append(f"{what}: it was truncated")
