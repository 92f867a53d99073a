"""Shared-prefix scoring for causal-LM rerankers: a prefix common to several rows is computed once.

Every row of one request starts with the same tokens (system prompt, instruction, query) and only
the document and the fixed suffix differ. A batch holds runs of such rows (the scheduler fills a
batch request by request, so one request's rows are adjacent), and runs of different requests
still share the system prompt.

:func:`packed_hidden` scores such a batch in one forward pass over one packed sequence with no
padding: each distinct prefix once, then every row's body, with position ids that continue after
the row's prefix. Everything that works token by token (projections, MLP, norms: nearly all the
work) runs on the packed tokens only. Attention alone sees whole rows: each layer gathers every
row's queries, keys and values (its prefix's, then its body's) into ordinary right-padded rows,
runs the same causal SDPA as a batch of full rows, and takes each packed token's output back. The
attention kernel is the one full rows get (cuDNN's or flash, with GQA); a variable-length kernel
with a bottom-right causal mask would avoid the gather, but PyTorch's (FA2) ran 2.8x slower than
cuDNN's on Hopper and gave the saving back (docs/benchmarks.md).

That is exactly the computation of the full rows: causal attention never lets a prefix token see
what follows it, so its keys/values do not depend on the row they came from; a prefix token's
attention is computed once per row and kept once. The last real token of each row (the one
scored) always lies in its body.

An earlier form ran two passes, the prefixes and then the bodies attending to their prefix's
keys/values through a mask: the mask kept it off the fast kernels, and it lost to full rows on the
GPU. The packed pass matches it on the CPU and wins on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ATTENTION",
    "MIN_SAVING",
    "Packed",
    "PrefixPlan",
    "pack",
    "packed_hidden",
    "plan_prefixes",
    "use_packed_attention",
]

#: Share only when at least this fraction of a batch's tokens is saved: below it the gather into
#: full rows and the scatter back cost more than the tokens they save.
MIN_SAVING = 0.125


@dataclass(frozen=True, slots=True)
class PrefixPlan:
    """Row ``r`` belongs to group ``group[r]``, whose prefix is ``ids[first[g]][:length[g]]``."""

    group: list[int]
    first: list[int]
    length: list[int]
    #: Tokens that the shared pass does not compute, out of ``total``.
    saved: int
    total: int


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    # Keep one token of each row out of the prefix: the scored position must be in the second pass.
    n = min(len(a), len(b)) - 1
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return max(i, 0)


def plan_prefixes(ids: Sequence[Sequence[int]], *, min_saving: float = MIN_SAVING) -> PrefixPlan | None:
    """Split the batch into runs of adjacent rows that share a prefix, choosing the runs that save
    the most tokens; ``None`` when sharing would save less than ``min_saving`` of them.

    A run's shared prefix is the least common prefix of its neighbouring rows, so a longer run may
    share less: e.g. two requests share the system prompt, each alone shares its query too. The
    exact best split is a small dynamic programme over the rows (quadratic, on at most a batch)."""
    n = len(ids)
    total = sum(map(len, ids))
    if n < 2:
        return None
    lcp = [_common(ids[i], ids[i + 1]) for i in range(n - 1)]
    # best[j]: most tokens saved over rows < j; cut[j]: where the last run of that split starts.
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    share = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j], share[j] = best[j - 1], j - 1, 0  # row j-1 alone
        shared = 1 << 62
        for i in range(j - 2, -1, -1):  # the run ids[i:j]
            shared = min(shared, lcp[i])
            if shared == 0:
                break
            gain = best[i] + (j - 1 - i) * shared
            if gain > best[j]:
                best[j], cut[j], share[j] = gain, i, shared
    if best[n] < min_saving * total:
        return None
    runs: list[tuple[int, int, int]] = []
    j = n
    while j > 0:
        runs.append((cut[j], j, share[j]))
        j = cut[j]
    runs.reverse()
    group = [0] * n
    first: list[int] = []
    length: list[int] = []
    for g, (start, end, shared) in enumerate(runs):
        first.append(start)
        length.append(shared)
        for r in range(start, end):
            group[r] = g
    return PrefixPlan(group=group, first=first, length=length, saved=best[n], total=total)


@dataclass(frozen=True, slots=True)
class Packed:
    """A batch laid out as one sequence: the distinct prefixes, then every row's body.

    ``rows[r, j]`` is the packed token at column ``j`` of row ``r`` as a full row (its prefix's
    tokens, then its body; right-padded with token 0, which padding columns never let a real one
    see). ``back[t]`` is where packed token ``t`` sits in the flattened rows (a prefix token: in
    its group's first row)."""

    input_ids: torch.Tensor  # (1, T)
    positions: torch.Tensor  # (1, T)
    rows: torch.Tensor  # (B, L)
    back: torch.Tensor  # (T,)
    #: Where each row's last token is in the packed sequence.
    last: torch.Tensor  # (B,)


def pack(ids: Sequence[Sequence[int]], plan: PrefixPlan) -> Packed:
    """Lay out ``ids`` as ``plan`` shares them (host tensors; see :class:`Packed`)."""
    tokens: list[int] = []
    positions: list[int] = []
    start: list[int] = []  # where each group's prefix begins in the packed sequence
    for g, n in enumerate(plan.length):
        start.append(len(tokens))
        tokens.extend(ids[plan.first[g]][:n])
        positions.extend(range(n))
    width = max(map(len, ids))
    rows: list[int] = []
    back = [0] * (len(tokens) + sum(len(row) - plan.length[plan.group[r]] for r, row in enumerate(ids)))
    last: list[int] = []
    for r, row in enumerate(ids):
        g = plan.group[r]
        n = plan.length[g]
        body = len(row) - n
        here = len(tokens)
        tokens.extend(row[n:])
        positions.extend(range(n, n + body))
        rows.extend(range(start[g], start[g] + n))
        rows.extend(range(here, here + body))
        rows.extend([0] * (width - len(row)))
        base = r * width
        if r == plan.first[g]:
            back[start[g] : start[g] + n] = range(base, base + n)
        back[here : here + body] = range(base + n, base + n + body)
        last.append(here + body - 1)
    return Packed(
        input_ids=torch.tensor([tokens], dtype=torch.long),
        positions=torch.tensor([positions], dtype=torch.long),
        rows=torch.tensor(rows, dtype=torch.long).view(len(ids), width),
        back=torch.tensor(back, dtype=torch.long),
        last=torch.tensor(last, dtype=torch.long),
    )


#: The transformers attention implementation that serves both packed and ordinary forward passes.
ATTENTION = "rerankd_packed"


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows = kwargs.pop("rerankd_rows", None)
    back = kwargs.pop("rerankd_back", None)
    if rows is None or back is None:
        # An ordinary batch (full rows): transformers' own SDPA path, exactly as before.
        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out, None
    b, width = rows.shape
    flat = rows.reshape(-1)

    def as_rows(x: torch.Tensor) -> torch.Tensor:
        # (1, heads, T, D) -> (B, heads, L, D): every row's prefix then body, gathered.
        gathered = x[0].index_select(1, flat)
        return gathered.view(gathered.shape[0], b, width, gathered.shape[2]).transpose(0, 1)

    out, _ = sdpa_attention_forward(
        module, as_rows(query), as_rows(key), as_rows(value), None, dropout=dropout, scaling=scaling, **kwargs
    )  # (B, L, heads, D), as full rows give it
    return out.flatten(0, 1).index_select(0, back).unsqueeze(0), None


def use_packed_attention(model: Any) -> None:
    """Give ``model`` (a transformers causal LM) the attention that packed batches need; ordinary
    batches keep SDPA. No mask is built for it: rows are right-padded and causal, as before."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _packed_attention)
    model.set_attn_implementation(ATTENTION)


def packed_hidden(decoder: Any, ids: Sequence[Sequence[int]], plan: PrefixPlan, move: Any) -> torch.Tensor:
    """The decoder's last hidden state at the last token of every row, the shared prefixes computed
    once. ``decoder`` is a transformers decoder (``model.get_decoder()``) of a model given
    :func:`use_packed_attention`; ``move`` puts a host tensor on the decoder's device."""
    p = pack(ids, plan)
    hidden = decoder(
        input_ids=move(p.input_ids),
        position_ids=move(p.positions),
        rerankd_rows=move(p.rows),
        rerankd_back=move(p.back),
        use_cache=False,
    ).last_hidden_state
    out: torch.Tensor = hidden[0].index_select(0, move(p.last))
    return out
