"""Shared-prefix scoring for causal-LM rerankers: a prefix common to several rows is computed once.

Every row of one request starts with the same tokens (system prompt, instruction, query) and only
the document and the fixed suffix differ. A batch holds runs of such rows (the scheduler fills a
batch request by request, so one request's rows are adjacent), and runs of different requests
still share the system prompt. Such a batch is scored in one forward pass over one packed sequence
with no padding: each distinct prefix once, then every row's body (:func:`packed_hidden`, the CUDA
form). Attention is variable-length (one kernel call per layer over the whole batch):

- a prefix attends causally to itself;
- a body attends to its prefix's keys/values and causally to itself (the causal mask aligned to the
  bottom right: the body's first token sees the whole prefix), with position ids that continue
  after its prefix.

That is exactly the computation of the full rows: causal attention never lets a prefix token see
what follows it, so its keys/values do not depend on the row they came from. On CUDA the attention
is flash attention's variable-length kernel, so sharing keeps the fast kernel (a masked second pass
did not, and lost to full rows on the GPU); elsewhere a reference loop over the sequences. The
last real token of each row (the one scored) always lies in its body.

On the CPU, two batched passes are faster than that loop (:func:`shared_prefix_hidden`): the
distinct prefixes, then the bodies attending to their prefix's keys/values through a mask.
"""

from __future__ import annotations

import itertools
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
    "shared_prefix_hidden",
    "use_packed_attention",
]

#: Share only when at least this fraction of a batch's tokens is saved: below it the second pass
#: and the masked attention cost more than the tokens they save.
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

    Sequence ``s`` of the variable-length attention has queries ``cu_q[s]:cu_q[s+1]`` of the packed
    tokens and keys ``kv_index[cu_k[s]:cu_k[s+1]]`` of them (a body's keys are its prefix's, then
    its own)."""

    input_ids: torch.Tensor  # (1, T)
    positions: torch.Tensor  # (1, T)
    kv_index: torch.Tensor  # (K,)
    cu_q: torch.Tensor  # (S + 1,) int32
    cu_k: torch.Tensor  # (S + 1,) int32
    #: The longest query and key run, on the host: the kernel sizes its grid by them.
    bounds: torch.Tensor  # (2,) int64, CPU
    #: Where each row's last token is in the packed sequence.
    last: torch.Tensor  # (B,)


def pack(ids: Sequence[Sequence[int]], plan: PrefixPlan) -> Packed:
    """Lay out ``ids`` as ``plan`` shares them (host tensors; see :class:`Packed`)."""
    tokens: list[int] = []
    positions: list[int] = []
    kv: list[int] = []
    cu_q, cu_k = [0], [0]
    start: list[int] = []  # where each group's prefix begins in the packed sequence
    for g, n in enumerate(plan.length):
        start.append(len(tokens))
        if n == 0:
            continue  # rows alone: nothing to compute before their bodies
        tokens.extend(ids[plan.first[g]][:n])
        positions.extend(range(n))
        kv.extend(range(start[g], start[g] + n))
        cu_q.append(cu_q[-1] + n)
        cu_k.append(cu_k[-1] + n)
    last: list[int] = []
    for r, row in enumerate(ids):
        g = plan.group[r]
        n = plan.length[g]
        body = row[n:]
        here = len(tokens)
        tokens.extend(body)
        positions.extend(range(n, n + len(body)))
        kv.extend(range(start[g], start[g] + n))
        kv.extend(range(here, here + len(body)))
        cu_q.append(cu_q[-1] + len(body))
        cu_k.append(cu_k[-1] + n + len(body))
        last.append(here + len(body) - 1)
    max_q = max(b - a for a, b in itertools.pairwise(cu_q))
    max_k = max(b - a for a, b in itertools.pairwise(cu_k))
    return Packed(
        input_ids=torch.tensor([tokens], dtype=torch.long),
        positions=torch.tensor([positions], dtype=torch.long),
        kv_index=torch.tensor(kv, dtype=torch.long),
        cu_q=torch.tensor(cu_q, dtype=torch.int32),
        cu_k=torch.tensor(cu_k, dtype=torch.int32),
        bounds=torch.tensor([max_q, max_k], dtype=torch.long),
        last=torch.tensor(last, dtype=torch.long),
    )


@torch.library.custom_op("rerankd::varlen_causal", mutates_args=())
def varlen_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    bounds: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of packed sequences, the mask aligned to each sequence's bottom right (a
    query run shorter than its key run sees all the keys before it). ``q`` (T, H, D); ``k``, ``v``
    (K, H_kv, D), H a multiple of H_kv. An opaque op: the compiler neither traces nor specialises
    on the sequence boundaries, so one graph serves every batch."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        max_q, max_k = bounds.tolist()
        # Flash attention's variable-length kernel: GQA natively, causal aligned bottom right.
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale
        )[0]
        return out  # type: ignore[no-any-return]
    return _reference_varlen(q, k, v, cu_q.tolist(), cu_k.tolist(), scale)


@varlen_causal.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    bounds: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    return torch.empty_like(q)


def _reference_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: list[int], cu_k: list[int], scale: float
) -> torch.Tensor:
    """One SDPA call per sequence: the CPU's (and any device without the flash kernel's) form."""
    out = torch.empty_like(q)
    groups = q.shape[1] // k.shape[1]
    for s in range(len(cu_q) - 1):
        a, b, c, d = cu_q[s], cu_q[s + 1], cu_k[s], cu_k[s + 1]
        if a == b:
            continue
        keys = k[c:d].transpose(0, 1)
        values = v[c:d].transpose(0, 1)
        if groups > 1:
            keys = keys.repeat_interleave(groups, dim=0)
            values = values.repeat_interleave(groups, dim=0)
        nq, nk = b - a, d - c
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
        att = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), keys, values, attn_mask=mask, scale=scale
        )
        out[a:b] = att.transpose(0, 1)
    return out


def _padded(rows: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    longest = max(map(len, rows))
    return torch.tensor([list(row) + [pad] * (longest - len(row)) for row in rows], dtype=torch.long)


def shared_prefix_hidden(
    decoder: Any,
    ids: Sequence[Sequence[int]],
    plan: PrefixPlan,
    *,
    pad: int,
    device: torch.device,
    move: Any = None,
) -> torch.Tensor:
    """The decoder's last hidden state at the last token of every row, computed in two passes: the
    distinct prefixes (keeping their keys/values), then every row's body attending to its prefix's
    keys/values through a mask. The CPU's form: one batched masked attention there is faster than
    the packed pass's loop over sequences (docs/benchmarks.md).

    ``decoder`` is a transformers decoder (``model.get_decoder()``) that takes ``past_key_values``,
    ``position_ids`` and a 4D boolean ``attention_mask``; ``move`` puts a host tensor on ``device``."""
    to = move if move is not None else (lambda t: t.to(device))
    prefixes = [list(ids[plan.first[g]][:n]) for g, n in enumerate(plan.length)]
    width = max(plan.length)
    if width == 0:
        prefixes = [[pad] for _ in prefixes]  # no run shares anything: a one-token pass of pads
        width = 1
    # Pass 1: no padding mask needed, as in the plain path: pads follow every real prefix token.
    first = decoder(input_ids=to(_padded(prefixes, pad)), use_cache=True)
    cache = first.past_key_values
    group = torch.tensor(plan.group, dtype=torch.long)
    cache.reorder_cache(to(group))  # one copy of its prefix's keys/values per row
    lengths = torch.tensor(plan.length, dtype=torch.long)[group]  # (B,) prefix length of each row
    bodies = [list(row[plan.length[plan.group[r]] :]) for r, row in enumerate(ids)]
    body_ids = _padded(bodies, pad)
    rows, longest = body_ids.shape
    steps = torch.arange(longest)
    positions = lengths[:, None] + steps[None, :]
    # Keys: [prefix slots 0..width) then the body. A row sees its own prefix's real slots and,
    # causally, its body; pad slots of a shorter prefix are never seen.
    sees_prefix = (torch.arange(width)[None, :] < lengths[:, None])[:, None, :].expand(rows, longest, width)
    causal = (steps[None, :] <= steps[:, None])[None].expand(rows, longest, longest)
    mask = torch.cat([sees_prefix, causal], dim=2)[:, None]
    hidden = decoder(
        input_ids=to(body_ids),
        position_ids=to(positions),
        attention_mask=to(mask),
        past_key_values=cache,
        use_cache=False,
    ).last_hidden_state
    last = torch.tensor([len(b) - 1 for b in bodies], dtype=torch.long)
    out: torch.Tensor = hidden[torch.arange(rows, device=hidden.device), to(last)]
    return out


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
    kv_index = kwargs.pop("rerankd_kv_index", None)
    if kv_index is None:
        # An ordinary batch (full rows): transformers' own SDPA path, exactly as before.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        out, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out, None
    # (1, H, T, D) -> (T, H, D): the projections' own layout, so these are views.
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).index_select(0, kv_index)
    v = value[0].transpose(0, 1).index_select(0, kv_index)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    out = varlen_causal(
        q, k, v, kwargs["rerankd_cu_q"], kwargs["rerankd_cu_k"], kwargs["rerankd_bounds"], scale
    )
    return out.unsqueeze(0), None


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
        rerankd_kv_index=move(p.kv_index),
        rerankd_cu_q=move(p.cu_q),
        rerankd_cu_k=move(p.cu_k),
        rerankd_bounds=p.bounds,
        use_cache=False,
    ).last_hidden_state
    out: torch.Tensor = hidden[0].index_select(0, move(p.last))
    return out
