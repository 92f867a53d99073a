"""Shared-prefix scoring: the split of a batch into runs, and the packed forward pass equal to full rows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import resolve_model
from rerankd.adapters.prefix import (
    pack,
    packed_hidden,
    plan_prefixes,
    use_packed_attention,
)
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig
from tests.fixtures.held_worker import queued_behind
from tests.fixtures.qwen3_reference import model_card_scores

SYSTEM = list(range(1, 11))


def test_runs_share_what_saves_most() -> None:
    a = [*SYSTEM, 50, 51, 52, 53, 54, 55]  # one request's head
    b = [*SYSTEM, 60, 61]
    rows = [[*a, 1, 2], [*a, 3], [*a, 4, 5, 6], [*b, 7], [*b, 8, 9]]
    plan = plan_prefixes(rows, min_saving=0)
    assert plan is not None
    # Each request shares its whole head: more than the system prompt shared by all five rows.
    assert plan.group == [0, 0, 0, 1, 1]
    assert plan.length == [len(a), len(b)]
    assert plan.saved == 2 * len(a) + len(b)
    assert plan.total == sum(map(len, rows))


def test_the_last_token_is_never_shared() -> None:
    row = [*SYSTEM, 5, 6]
    plan = plan_prefixes([row, row, row], min_saving=0)
    assert plan is not None
    assert plan.length == [len(row) - 1]


def test_nothing_shared_or_too_little() -> None:
    plan = plan_prefixes([[1, 2, 3], [4, 5, 6]], min_saving=0)
    assert plan is not None
    assert plan.saved == 0
    assert plan_prefixes([[1, 2, 3], [4, 5, 6]]) is None
    assert plan_prefixes([[1, 2, 3]]) is None
    # Two tokens of forty shared: under the default threshold.
    assert plan_prefixes([[1, 2] + [3] * 18, [1, 2] + [4] * 18]) is None


def test_packed_layout() -> None:
    """Each distinct prefix once, then the bodies; attention's rows gather a row's prefix, then its
    body, and every packed token's output comes back from exactly one place."""
    a, b = [*SYSTEM, 50], [*SYSTEM, 60, 61]
    rows = [[*a, 1, 2], [*a, 3], [7, 8], [*b, 4], [*b, 5, 6]]
    plan = plan_prefixes(rows, min_saving=0)
    assert plan is not None
    assert plan.length == [len(a), 0, len(b)]
    p = pack(rows, plan)
    na, nb = len(a), len(b)
    packed = p.input_ids[0].tolist()
    assert packed == [*a, *b, 1, 2, 3, 7, 8, 4, 5, 6]
    # Positions continue after the row's prefix; the row alone starts at 0.
    assert p.positions[0].tolist()[na + nb :] == [na, na + 1, na, 0, 1, nb, nb, nb + 1]
    width = max(map(len, rows))
    assert p.rows.shape == (len(rows), width)
    for r, row in enumerate(rows):
        # Gathered, each row is its full row, right-padded.
        assert [packed[i] for i in p.rows[r].tolist()[: len(row)]] == row
        assert p.last[r] == p.rows[r, len(row) - 1]
    back = p.back.tolist()
    assert sorted(back) == sorted(set(back))  # one place each
    flat = p.rows.reshape(-1).tolist()
    assert [flat[i] for i in back] == list(range(len(packed)))


def _varied_rows(seed: int = 0) -> list[list[int]]:
    """Runs of different prefix lengths, a row alone, bodies of different lengths."""
    gen = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(3, 500, (n,), generator=gen).tolist()

    head_a, head_b = SYSTEM + rand(30), SYSTEM + rand(7)
    return [head_a + rand(n) for n in (1, 9, 25)] + [rand(12)] + [head_b + rand(n) for n in (4, 40)]


@pytest.fixture(scope="module")
def decoder(tiny_qwen3_dir: Path) -> Any:
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    use_packed_attention(model)
    return model.get_decoder()


def test_shared_prefixes_equal_full_rows(decoder: Any) -> None:
    """Every row's last hidden state equals the one computed from its full row (fp32)."""
    rows = _varied_rows()
    plan = plan_prefixes(rows, min_saving=0)
    assert plan is not None
    assert len(set(plan.length)) >= 3  # two shared prefixes and a row alone
    with torch.inference_mode():
        shared = packed_hidden(decoder, rows, plan, move=lambda t: t)
        for r, row in enumerate(rows):
            full = decoder(input_ids=torch.tensor([row])).last_hidden_state[0, -1]
            assert torch.allclose(shared[r], full, atol=1e-4), r


def test_one_compiled_graph_serves_every_packed_batch(decoder: Any) -> None:
    """The sequence boundaries are data to the compiler, not constants: batches of other sizes and
    splits reuse the graph instead of recompiling (a recompile stalls every request behind it)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compiled = torch.compile(decoder, backend=counter, dynamic=True)
    with torch.inference_mode():
        for seed, take in ((0, 6), (1, 4), (2, 5), (3, 3)):
            rows = _varied_rows(seed)[:take]
            plan = plan_prefixes(rows, min_saving=0)
            assert plan is not None
            got = packed_hidden(compiled, rows, plan, move=lambda t: t)
            want = packed_hidden(decoder, rows, plan, move=lambda t: t)
            assert torch.allclose(got, want, atol=1e-5)
    assert counter.frame_count == 1


async def _two_requests(path: Path, queries: list[str], docs: list[str]) -> tuple[list[list[float]], float]:
    source = resolve_model(ModelConfig(name="tiny", path=str(path), max_length=120))
    engine = TorchEngine(source, device="cpu", dtype="float32", max_batch_tokens=4000)
    await engine.start()
    try:
        before = engine.stats()["mixed_batches"]
        results = await queued_behind(
            engine.scheduler,
            engine.score("hold", ["the worker"], EncodeOptions()),
            lambda: asyncio.gather(*(engine.score(q, docs, EncodeOptions()) for q in queries)),
            rows=len(queries) * len(docs),
        )
        assert engine.stats()["mixed_batches"] > before  # the requests shared a batch
        return [r.scores for r in results], engine.stats()["prefix_saved_tokens"]
    finally:
        await engine.close()


def test_requests_in_one_batch_match_model_card(tiny_qwen3_dir: Path) -> None:
    queries = ["What is the capital of France?", "fruit", "yes or no " * 6]
    docs = ["Paris is the capital of France.", "Bananas are yellow fruit.", "no", "The quick brown fox."]
    ours, saved = asyncio.run(_two_requests(tiny_qwen3_dir, queries, docs))
    assert saved > 0
    for query, scores in zip(queries, ours, strict=True):
        ref = model_card_scores(tiny_qwen3_dir, query, docs, max_length=120)
        assert max(abs(a - b) for a, b in zip(scores, ref, strict=True)) < 1e-4


def test_a_failing_shared_pass_degrades_to_full_rows(tiny_qwen3_dir: Path) -> None:
    docs = ["Paris is the capital of France.", "Bananas are yellow fruit.", "no"]
    query = "What is the capital of France?"

    async def run() -> tuple[list[float], bool]:
        source = resolve_model(ModelConfig(name="tiny", path=str(tiny_qwen3_dir), max_length=120))
        engine = TorchEngine(source, device="cpu", dtype="float32")
        await engine.start()
        try:

            def broken(ids: list[list[int]], plan: object) -> torch.Tensor:
                raise RuntimeError("out of memory")  # as a device would fail it

            engine._replicas[0].shared = broken
            result = await engine.score(query, docs, EncodeOptions())
            return result.scores, engine._replicas[0].shared is None
        finally:
            await engine.close()

    scores, switched_off = asyncio.run(run())
    assert switched_off
    ref = model_card_scores(tiny_qwen3_dir, query, docs, max_length=120)
    assert max(abs(a - b) for a, b in zip(scores, ref, strict=True)) < 1e-4
