"""The transformers/torch engine: CPU or CUDA, one worker thread fed by the scheduler.

With several devices (``devices``) each holds a replica of the model with its own worker thread,
all fed by the one scheduler (data parallelism; see ``rerankd.adapters.scheduler``)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rerankd.adapters.base import BatchedEngine, EngineStats
from rerankd.adapters.compile_cache import CompileCache, default_cache_dir
from rerankd.adapters.devices import expand_devices
from rerankd.adapters.formats import EncodeOptions, LLMYesNoFormat, PairPromptFormat, make_format
from rerankd.adapters.fp8 import fp8_supported, quantize_linears
from rerankd.adapters.loader import ModelSource, read_json
from rerankd.adapters.prefix import (
    PrefixPlan,
    packed_hidden,
    plan_prefixes,
    use_packed_attention,
)
from rerankd.adapters.scheduler import Finish, Replica, Runner
from rerankd.config import BATCH_TOKENS_CPU, BATCH_TOKENS_GPU, MAX_BATCH_SIZE, MAX_QUEUE_SEQUENCES, Settings
from rerankd.errors import ConfigError
from rerankd.threads import in_daemon_thread

__all__ = [
    "Head",
    "TorchEngine",
    "bi_encoder_head",
    "build",
    "cross_encoder_head",
    "default_batch_tokens",
    "pick_device",
    "pick_dtype",
]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
#: A head that scores rows sharing prefixes in one packed pass (``rerankd.adapters.prefix``).
SharedHead = Callable[[list[list[int]], PrefixPlan], torch.Tensor]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass when not set (the figures and why: ``rerankd.config``)."""
    return BATCH_TOKENS_GPU if device.type == "cuda" else BATCH_TOKENS_CPU


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


class TorchEngine(BatchedEngine):
    def __init__(
        self,
        source: ModelSource,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_queue: int = MAX_QUEUE_SEQUENCES,
        threads: int | None = None,
        compile: bool = False,
        compile_scope: str = "layers",
        shared_prefix: bool = True,
        compile_cache_dir: str | None = None,
        devices: Sequence[str] = (),
        fault_devices: Sequence[int] = (),
        fault_after_batches: int = 0,
        quantize: str = "none",
    ) -> None:
        self.compile = compile
        if compile_scope not in ("layers", "model"):
            raise ConfigError(f"compile scope {compile_scope!r}: layers or model")
        #: ``layers``: each repeated layer compiled (one graph for all); ``model``: the whole model.
        self.compile_scope = compile_scope
        self._compile_cache: CompileCache | None = None
        self._prefix_batches = 0
        self._prefix_saved = 0
        labels = expand_devices(devices, torch.cuda.device_count()) if devices else []
        self.device = pick_device(labels[0] if labels else device)
        self.dtype = pick_dtype(dtype, self.device)
        if quantize == "fp8":
            reason = fp8_supported(self.device)
            if reason is not None:
                raise ConfigError(f"quantize fp8: {reason} (device {self.device})")
        elif quantize != "none":
            raise ConfigError(
                f"quantize {quantize}: the onnx engine's; the torch engine quantizes to fp8 on CUDA"
            )
        #: FP8 projections (rerankd.adapters.fp8): another score, so another cache tag and compile cache.
        self.fp8 = quantize == "fp8"
        #: Compute a prefix common to adjacent rows once per batch (LLM formats only).
        self.shared_prefix = shared_prefix
        self._threads = threads
        self._pad_id = 0
        if len(labels) > 1:
            cpu = self.device.type == "cpu"  # CPU replicas share the processor; labels tell them apart
            self._replicas = [_Replica(self, torch.device("cpu" if cpu else x), x) for x in labels]
        else:
            self._replicas = [_Replica(self, self.device, str(self.device))]
        self._main = self._replicas[0]
        runners: list[Runner] = [
            _faulty(r.run, fault_after_batches) if i in fault_devices else r.run
            for i, r in enumerate(self._replicas)
        ]
        super().__init__(
            source,
            max_batch_tokens=max_batch_tokens or default_batch_tokens(self.device),
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            # On CPU the forward pass runs as it is launched: overlapping would only add a batch of wait.
            overlap=self.device.type != "cpu",
            replicas=[
                Replica(r.label, run, setup=r.setup, memory=r.memory)
                for r, run in zip(self._replicas, runners, strict=True)
            ],
        )
        if compile:
            base = Path(compile_cache_dir) if compile_cache_dir else default_cache_dir(source.path)
            # Not keyed by shared_prefix: without it the engine compiles a subset of the same graphs.
            shapes = f"batch<={max_batch_tokens or default_batch_tokens(self.device)}x{max_batch_size}"
            shapes += ",fp8" if self.fp8 else ""
            shapes += ",whole" if compile_scope == "model" else ""
            self._compile_cache = CompileCache.for_engine(
                base, fingerprint=source.fingerprint, device=self.device, dtype=self.dtype, shapes=shapes
            )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await in_daemon_thread(self.load)  # a stop signal while loading need not wait for it
        self.scheduler.start()
        # Warm-up: the first forward pass allocates and (on CUDA) picks kernels; pay it now. Two
        # documents of one request take the shared-prefix path, one alone the full-row path.
        await self.score("warm-up", ["warm-up document"], EncodeOptions())
        await self.score("warm-up", ["warm-up document", "another warm-up document"], EncodeOptions())
        if self._compile_cache is not None:
            log.info("%s", await asyncio.to_thread(self._compile_cache.save))

    def load(self) -> None:
        from transformers import AutoTokenizer

        n = len(self._replicas)
        if n > 1 and self.device.type == "cpu":
            # CPU replicas run at once on one processor: each forward pass gets its share of threads.
            torch.set_num_threads(max(1, (self._threads or torch.get_num_threads()) // n))
        elif self._threads:
            torch.set_num_threads(self._threads)
        src = self.source
        tokenizer = AutoTokenizer.from_pretrained(src.path, trust_remote_code=src.config.trust_remote_code)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.format = make_format(src.format, tokenizer, src.max_length)
        if self._compile_cache is not None:
            log.info("%s", self._compile_cache.activate())
        for replica in self._replicas:
            log.info(
                "loading %s (%s) from %s on %s as %s",
                src.name,
                src.format,
                src.path,
                replica.label,
                self.dtype,
            )
            replica.head = _HEADS[src.format](self, src, replica)
        if n > 1 or self.compile:
            self._warm_every_path()

    def _warm_every_path(self) -> None:
        """Each replica's first pass of every path a batch can take: a row alone, one request's
        rows (shared prefix, where the format has one) and full rows of several. The scheduler's
        warm-up reaches one replica, and a compiled graph specialises a batch of one row, so
        without this a replica or a path would pay its first pass (a compile) on live traffic."""
        opts = EncodeOptions()
        docs = ["warm-up document", "a longer warm-up document"]
        one = self.format.encode("warm-up", self.format.bound_texts(docs[:1], opts), opts)
        two = self.format.encode("warm-up", self.format.bound_texts(docs, opts), opts)
        for replica in self._replicas:
            replica.setup()
            replica.run(one.ids, one.type_ids)()
            replica.run(two.ids, two.type_ids)()
            if replica.shared is not None:
                with torch.inference_mode():
                    replica._padded_batch(two.ids, two.type_ids)

    @property
    def cache_tag(self) -> str:
        return f"torch:{str(self.dtype).removeprefix('torch.')}{'+fp8' if self.fp8 else ''}"

    def snapshot(self) -> EngineStats:
        # Present (0) where no prefix is shared too: one set of families whatever the model.
        return dataclasses.replace(
            super().snapshot(), prefix_batches=self._prefix_batches, prefix_saved_tokens=self._prefix_saved
        )

    # -- scoring -----------------------------------------------------------------------------

    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        return self._main.run(ids, type_ids)


class _Replica:
    """The model on one device: the head and the launch of a batch there."""

    def __init__(self, engine: TorchEngine, device: torch.device, label: str) -> None:
        self.engine = engine
        self.device = device
        self.label = label
        self.head: Head | None = None
        #: The head's packed form over shared prefixes, where the format and setting allow it.
        self.shared: SharedHead | None = None

    def setup(self) -> None:
        if self.device.type == "cuda" and self.device.index is not None:
            # The current CUDA device is per thread: the worker's events and copies go to this one.
            # A bare "cuda" is the current device already.
            torch.cuda.set_device(self.device)

    def memory(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return float(torch.cuda.memory_allocated(self.device))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        # Pinned host memory lets the copy overlap with the previous batch's kernels.
        return t.pin_memory().to(self.device, non_blocking=True)

    def run(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        """Launch one batch; the returned function waits for its outputs. Worker thread only."""
        assert self.head is not None
        with torch.inference_mode():
            out = self._shared_batch(ids) if self.shared is not None else None
            if out is None:
                out = self._padded_batch(ids, type_ids)
            if self.device.type == "cpu":
                return partial(_rows, out)
            # Copy back without waiting; finish() waits for this batch only, after the next one
            # has been launched behind it.
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
        return partial(_wait_rows, done, host)

    def _shared_batch(self, ids: list[list[int]]) -> torch.Tensor | None:
        assert self.shared is not None
        plan = plan_prefixes(ids)
        if plan is None:
            return None
        try:
            out = self.shared(ids, plan).float()
        except Exception:
            # The full-row path scores the same batch alike: lose the saving, never the batch.
            log.exception(
                "shared-prefix scoring failed; %s scores full rows on %s from now on",
                self.engine.source.name,
                self.label,
            )
            self.shared = None
            return None
        self.engine._prefix_batches += 1
        self.engine._prefix_saved += plan.saved
        return out

    def _padded_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> torch.Tensor:
        assert self.head is not None
        longest = max(map(len, ids))
        pad = self.engine._pad_id
        # One tensor from padded lists: far cheaper than filling row by row.
        input_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in ids], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], dtype=torch.long)
        types = None
        if type_ids is not None:
            types = torch.tensor([row + [0] * (longest - len(row)) for row in type_ids], dtype=torch.long)
            types = self._to_device(types)
        return self.head(self._to_device(input_ids), self._to_device(mask), types).float()


def _faulty(run: Runner, after: int) -> Runner:
    """``run`` that raises from its ``after + 1``-th batch on (the ``fault_devices`` setting, for
    fail-over tests): a replica whose forward pass keeps failing, as a broken GPU's does."""
    count = 0

    def faulty(ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        nonlocal count
        count += 1
        if count > after:
            raise RuntimeError("injected fault (fault_devices): this replica's forward pass fails")
        return run(ids, type_ids)

    return faulty


def _rows(out: torch.Tensor) -> list[Any]:
    return list(out.unbind(0)) if out.dim() == 2 else out.tolist()


def _wait_rows(done: torch.cuda.Event, host: torch.Tensor) -> list[Any]:
    done.synchronize()
    return _rows(host)


def _load_model(engine: TorchEngine, auto_class: Any, src: ModelSource, device: torch.device) -> Any:
    model = auto_class.from_pretrained(
        src.path, dtype=engine.dtype, trust_remote_code=src.config.trust_remote_code
    )
    model = model.to(device).eval()
    if engine.fp8:
        # Before compiling: the compiled graph then fuses each activation's quantization.
        n = quantize_linears(model)
        log.info("%s: %d linear layers in fp8 on %s", src.name, n, device)
    return model


def _maybe_compile(engine: TorchEngine, module: Any) -> Any:
    return compile_model(module, engine.compile_scope) if engine.compile else module


def compile_model(module: Any, scope: str = "layers") -> Any:
    """``module`` compiled as ``compile_scope`` says (the engine's and the benchmarks' one way).
    ``layers`` compiles the stack of layers in place and returns ``module`` itself."""
    if scope == "layers":
        blocks = repeated_blocks(module)
        if blocks:
            # One graph serves every layer (their weights are its inputs): the compile costs one
            # layer's, not the model's, which is what makes a start fast.
            for block in blocks:
                block.compile(dynamic=True)
            log.info("compiling %d repeated %s layers as one graph", len(blocks), type(blocks[0]).__name__)
            return module
    # dynamic=True: batch size and length vary with every batch; recompiling per shape would stall.
    return torch.compile(module, dynamic=True)


def repeated_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of layers: the longest ``ModuleList`` of one class (a transformer's
    decoder or encoder layers); empty when it has none."""
    best: list[torch.nn.Module] = []
    for child in module.modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) > len(best):
            items = list(child)
            if len(items) >= 2 and len({type(m) for m in items}) == 1:
                best = items
    return best


def _llm_head(engine: TorchEngine, src: ModelSource, replica: _Replica) -> Head:
    """logit(yes) - logit(no) (or logit(yes) alone, for formats scored by one answer token) from
    the last hidden state and those rows of the output matrix, never the full vocabulary; the
    format's sigmoid makes it a probability."""
    from transformers import AutoModelForCausalLM

    model = _load_model(engine, AutoModelForCausalLM, src, replica.device)
    fmt = engine.format
    assert isinstance(fmt, LLMYesNoFormat | PairPromptFormat)
    answers = [fmt.yes_id] if fmt.no_id is None else [fmt.yes_id, fmt.no_id]
    rows = model.get_output_embeddings().weight[answers].detach().float().clone()
    # Gemma 2 squashes its output logits; the answer logits must be squashed the same way.
    cap = getattr(model.config, "final_logit_softcapping", None)
    # Checked against the model card for Qwen3-style yes/no rerankers only (the fidelity tests);
    # the other LLM families run whole rows.
    share = engine.shared_prefix and src.format == "llm-yes-no"
    if share:
        use_packed_attention(model)  # before compiling: the compiled graph calls it
    decoder = _maybe_compile(engine, model.get_decoder())

    def answer(last: torch.Tensor) -> torch.Tensor:
        logits = last.float() @ rows.T
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out: torch.Tensor = logits[:, 0] if len(answers) == 1 else logits[:, 0] - logits[:, 1]
        return out

    def head(input_ids: torch.Tensor, mask: torch.Tensor, _types: torch.Tensor | None) -> torch.Tensor:
        # No padding mask: rows are right-padded and attention is causal, so no real token can see
        # a pad, and positions count from 0 as they should. Without a mask SDPA can take its
        # flash-attention kernel. Only the last real token of each row is read.
        hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
        return answer(hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1])

    def shared(ids: list[list[int]], plan: PrefixPlan) -> torch.Tensor:
        # The same outputs as ``head``, the prefixes common to adjacent rows computed once.
        return answer(packed_hidden(decoder, ids, plan, move=replica._to_device))

    if share:
        replica.shared = shared
    return head


def _cross_head(engine: TorchEngine, src: ModelSource, replica: _Replica) -> Head:
    from transformers import AutoModelForSequenceClassification

    model = _load_model(engine, AutoModelForSequenceClassification, src, replica.device)
    return cross_encoder_head(_maybe_compile(engine, model), src, model.config.num_labels)


def cross_encoder_head(model: Any, src: ModelSource, n_labels: int) -> Head:
    """Raw logits of a sequence classifier; the ONNX exporter traces this same function."""
    if n_labels not in (1, 2):
        raise ConfigError(f"model {src.name!r} has {n_labels} labels; a cross-encoder needs 1 or 2")
    # XLM-RoBERTa's and ModernBERT's tokenizers give no segment ids; ModernBERT takes none.
    forward = getattr(model, "_orig_mod", model).forward  # a compiled module wraps the model
    takes_types = "token_type_ids" in inspect.signature(forward).parameters

    def head(input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"token_type_ids": types} if types is not None and takes_types else {}
        logits = model(input_ids=input_ids, attention_mask=mask, **kwargs).logits.float()
        # Raw logits; the format's sigmoid gives softmax[1] for two labels: sigmoid(l1 - l0).
        raw: torch.Tensor = logits[:, 0] if n_labels == 1 else logits[:, 1] - logits[:, 0]
        return raw

    return head


def _bi_head(engine: TorchEngine, src: ModelSource, replica: _Replica) -> Head:
    from transformers import AutoModel

    return bi_encoder_head(_maybe_compile(engine, _load_model(engine, AutoModel, src, replica.device)), src)


def bi_encoder_head(model: Any, src: ModelSource) -> Head:
    """Pooled, L2-normalised embeddings; the ONNX exporter traces this same function."""
    cls_pooling = bool(read_json(src.path / "1_Pooling" / "config.json").get("pooling_mode_cls_token"))

    def head(input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"token_type_ids": types} if types is not None else {}
        hidden = model(input_ids=input_ids, attention_mask=mask, **kwargs).last_hidden_state.float()
        if cls_pooling:
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    return head


_HEADS: dict[str, Callable[[TorchEngine, ModelSource, _Replica], Head]] = {
    "llm-yes-no": _llm_head,
    "mxbai-rerank-v2": _llm_head,
    "bge-reranker-v2-gemma": _llm_head,
    "cross-encoder": _cross_head,
    "bi-encoder": _bi_head,
}


def build(source: ModelSource, settings: Settings) -> TorchEngine:
    """The engine table's entry point (``rerankd.adapters.registry``)."""
    return TorchEngine(
        source,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue_sequences,
        threads=settings.torch_threads or settings.threads,
        compile=settings.compile,
        compile_scope=settings.compile_scope,
        shared_prefix=settings.shared_prefix,
        compile_cache_dir=settings.compile_cache_dir,
        devices=settings.devices,
        fault_devices=settings.fault_devices,
        fault_after_batches=settings.fault_after_batches,
        quantize=settings.quantize,
    )
