"""Who a request's scoring work is for, as the schedulers that decide who goes first see it.

The service sets it for the duration of a request (a context variable, so it follows the request's
awaits into the engine without every layer passing it on); a scheduler reads it when the request's
sequences are queued.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from rerankd.stages import StageTimes

__all__ = ["Requester", "requested_by"]


@dataclass(frozen=True, slots=True)
class Requester:
    #: The API key's name, or the client's address where keys are off; "" when unknown.
    tenant: str = ""
    #: Cohere's priority: 0 (the default) first, 999 last.
    priority: int = 0
    #: Where the request's time goes; engines and the scheduler add their stages to it.
    stages: StageTimes | None = None


#: A frozen value, so one default shared by every context is safe.
requested_by: ContextVar[Requester] = ContextVar("rerankd_requester", default=Requester())  # noqa: B039
