"""Shared-prefix scoring for causal-LM rerankers: a prefix common to several rows is computed once.

Every row of one request starts with the same tokens (system prompt, instruction, query) and only
the document and the fixed suffix differ. A batch holds runs of such rows (the scheduler fills a
batch request by request, so one request's rows are adjacent), and runs of different requests
still share the system prompt. A batch is scored in two passes:

1. the distinct prefixes, one row each (right-padded to the longest), keeping their keys/values;
2. the rest of every row, attending to its prefix's keys/values (copied per row) and causally to
   itself, with position ids that continue after its own prefix length.

That is exactly the computation of the full rows: causal attention never lets a prefix token see
what follows it, so its keys/values do not depend on the row they came from. Only the mask and the
positions change; the last real token of each row (the one scored) always lies in the second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MIN_SAVING", "PrefixPlan", "plan_prefixes", "shared_prefix_hidden"]

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
    """The decoder's last hidden state at the last token of every row, computed in two passes.

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
