"""vLLM's synchronous ``LLM`` API in one dedicated worker thread (``--engine vllm-sync``).

``LLM`` is not thread-safe: its step loop hands outputs to whichever caller runs it. So exactly
one thread, the scheduler's, builds and uses it. The scheduler merges the sequences of concurrent
requests into one ``LLM.encode`` call and routes each output back to its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from rerankd.adapters.base import EngineStats, LocalEngine, scheduler_stats
from rerankd.adapters.formats import Encoded, EncodeOptions
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.scheduler import Finish, Scheduler
from rerankd.adapters.vllm_engine import PoolingPlan, VLLMOptions, prepare, start_failure, vllm_cache_tag
from rerankd.config import BATCH_TOKENS_GPU, MAX_BATCH_SIZE, MAX_QUEUE_SEQUENCES, Settings
from rerankd.errors import EngineFailure, EngineStartError, EngineUnavailable

__all__ = ["VLLMSyncEngine", "build"]

log = logging.getLogger(__name__)


def _engine_dead(llm: Any) -> bool:
    # Set by vLLM's monitor thread when the engine-core process exits.
    resources = getattr(getattr(llm.llm_engine, "engine_core", None), "resources", None)
    return bool(getattr(resources, "engine_dead", False))


class VLLMSyncEngine(LocalEngine):
    def __init__(
        self,
        source: ModelSource,
        options: VLLMOptions,
        *,
        max_batch_tokens: int | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_queue: int = MAX_QUEUE_SEQUENCES,
    ) -> None:
        super().__init__(source)
        self.options = options
        self._plan: PoolingPlan | None = None
        self._llm: Any = None
        self._start_error: BaseException | None = None
        self._cache_tag = "vllm"
        self.scheduler = Scheduler(
            self._run_batch,
            max_batch_tokens=max_batch_tokens or BATCH_TOKENS_GPU,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            name=f"vllm-{source.name}",
            overlap=False,  # LLM.encode runs the batch to the end as it is launched
        )

    async def start(self) -> None:
        self.format, self._plan = await asyncio.to_thread(prepare, self.source, self.options)
        log.info(
            "starting vLLM (LLM) for %s (%s) from %s", self.source.name, self.source.format, self.source.path
        )
        self.scheduler.start()
        # The first batch builds the LLM on the worker thread, then warms it up.
        try:
            await self.score("warm-up", ["warm-up document"], EncodeOptions())
        except EngineFailure as exc:
            if self._start_error is None:
                raise
            raise EngineStartError(start_failure(self.source, self._start_error)) from exc

    @property
    def healthy(self) -> bool:
        return self.scheduler.alive and not (self._llm is not None and _engine_dead(self._llm))

    @property
    def cache_tag(self) -> str:
        return self._cache_tag

    def snapshot(self) -> EngineStats:
        return scheduler_stats(self.scheduler)

    async def close(self) -> None:
        await self.scheduler.close()
        # The worker thread has ended: nothing else touches the LLM now.
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.llm_engine.engine_core.shutdown)
        await super().close()

    async def infer(self, encoded: Encoded, *, deadline: float | None) -> Sequence[Any]:
        if self._llm is not None and _engine_dead(self._llm):
            raise EngineUnavailable()
        return await self.scheduler.submit(encoded.ids, encoded.type_ids, deadline=deadline)

    def _run_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        """Runs one merged batch to the end (``LLM.encode`` blocks). Scheduler thread only."""
        plan = self._plan
        assert plan is not None
        if self._llm is None:
            try:
                self._llm = _make_llm(plan)
            except Exception as exc:
                self._start_error = exc
                raise
            self._cache_tag = vllm_cache_tag(self._llm.llm_engine.model_config.dtype)
        prompts = [{"prompt_token_ids": row} for row in ids]
        params = [plan.params(type_ids[i] if type_ids else None) for i in range(len(ids))]
        outputs = self._llm.encode(prompts, params, pooling_task=plan.task, use_tqdm=False)
        scores = [plan.output(out.outputs.data) for out in outputs]
        return lambda: scores


def _make_llm(plan: PoolingPlan) -> Any:
    from vllm import LLM

    return LLM(**plan.engine_kwargs)


def build(source: ModelSource, settings: Settings) -> VLLMSyncEngine:
    """The engine table's entry point (``rerankd.adapters.registry``)."""
    return VLLMSyncEngine(
        source,
        VLLMOptions.from_settings(settings),
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue_sequences,
    )
