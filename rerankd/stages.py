"""Where one request's scoring time went, stage by stage (TEI's response-header stages).

The route makes one :class:`StageTimes` per scoring request; the service measures ``compute``, the
engines ``tokenization`` and, through the scheduler, ``queue`` and ``inference``; the request
middleware turns it into response headers and the metrics into histograms. Seconds throughout.

A request's documents are tokenized in chunks and scored in many batches, shared with other
requests, so each stage is a wall-clock span of this request, not a per-document average:

- ``tokenization``: the time its documents spent being tokenized;
- ``queue``: from its sequences entering the engine to the launch of the first batch that
  carries one of them;
- ``inference``: from that launch to the last of its sequences scored;
- ``compute``: the whole scoring step — cache look-up, tokenization, queue, inference and the
  merge of cached and fresh scores.

Stages that did not run (a fully cached request never tokenizes) stay 0. A request of several
queries (vLLM's ``/score`` with a list) adds up the stages of its queries.
"""

from __future__ import annotations

import msgspec

__all__ = ["StageTimes"]


class StageTimes(msgspec.Struct, gc=False):
    # A struct, not a dataclass: made on every scoring request, cached ones included, and a
    # struct's constructor runs no Python code. gc=False: four floats hold no cycles.
    tokenization: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    compute: float = 0.0
