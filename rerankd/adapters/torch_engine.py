"""The transformers/torch engine: CPU or CUDA, one worker thread fed by the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.formats import LLMYesNoFormat, make_format
from rerankd.adapters.loader import ModelSource
from rerankd.errors import ConfigError
from rerankd.scheduler import Finish

__all__ = [
    "Head",
    "TorchEngine",
    "bi_encoder_head",
    "cross_encoder_head",
    "default_batch_tokens",
    "pick_device",
    "pick_dtype",
]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass when not set. A GPU needs large batches to be busy; on a CPU
    throughput hardly grows past a few thousand tokens while every batch is time that a request
    arriving meanwhile waits, so batches there are kept short."""
    return 16_384 if device.type == "cuda" else 1_024


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
        max_batch_size: int = 256,
        max_queue: int = 200_000,
        threads: int | None = None,
        compile: bool = False,
    ) -> None:
        device_ = pick_device(device)
        super().__init__(
            source,
            max_batch_tokens=max_batch_tokens or default_batch_tokens(device_),
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            # On CPU the forward pass runs as it is launched: overlapping would only add a batch of wait.
            overlap=device_.type != "cpu",
        )
        self.compile = compile
        self.device = device_
        self.dtype = pick_dtype(dtype, self.device)
        self._threads = threads
        self._head: Head | None = None
        self._pad_id = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        from transformers import AutoTokenizer

        if self._threads:
            torch.set_num_threads(self._threads)
        src = self.source
        tokenizer = AutoTokenizer.from_pretrained(src.path, trust_remote_code=src.config.trust_remote_code)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.format = make_format(src.format, tokenizer, src.max_length)
        log.info(
            "loading %s (%s) from %s on %s as %s", src.name, src.format, src.path, self.device, self.dtype
        )
        self._head = _HEADS[src.format](self, src)

    @property
    def cache_tag(self) -> str:
        return f"torch:{str(self.dtype).removeprefix('torch.')}"

    # -- scoring -----------------------------------------------------------------------------

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        # Pinned host memory lets the copy overlap with the previous batch's kernels.
        return t.pin_memory().to(self.device, non_blocking=True)

    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        """Launch one batch; the returned function waits for its outputs. Scheduler thread only."""
        assert self._head is not None
        longest = max(map(len, ids))
        pad = self._pad_id
        # One tensor from padded lists: far cheaper than filling row by row.
        input_ids = torch.tensor([row + [pad] * (longest - len(row)) for row in ids], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], dtype=torch.long)
        types = None
        if type_ids is not None:
            types = torch.tensor([row + [0] * (longest - len(row)) for row in type_ids], dtype=torch.long)
            types = self._to_device(types)
        with torch.inference_mode():
            out = self._head(self._to_device(input_ids), self._to_device(mask), types).float()
            if self.device.type == "cpu":
                return partial(_rows, out)
            # Copy back without waiting; finish() waits for this batch only, after the next one
            # has been launched behind it.
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
        return partial(_wait_rows, done, host)


def _rows(out: torch.Tensor) -> list[Any]:
    return list(out.unbind(0)) if out.dim() == 2 else out.tolist()


def _wait_rows(done: torch.cuda.Event, host: torch.Tensor) -> list[Any]:
    done.synchronize()
    return _rows(host)


def _load_model(engine: TorchEngine, auto_class: Any, src: ModelSource) -> Any:
    model = auto_class.from_pretrained(
        src.path, dtype=engine.dtype, trust_remote_code=src.config.trust_remote_code
    )
    return model.to(engine.device).eval()


def _maybe_compile(engine: TorchEngine, module: Any) -> Any:
    if not engine.compile:
        return module
    # dynamic=True: batch size and length vary with every batch; recompiling per shape would stall.
    return torch.compile(module, dynamic=True)


def _llm_head(engine: TorchEngine, src: ModelSource) -> Head:
    """logit(yes) - logit(no) from the last hidden state and two rows of the output matrix, never the
    full vocabulary; the format's sigmoid makes it P(yes)."""
    from transformers import AutoModelForCausalLM

    model = _load_model(engine, AutoModelForCausalLM, src)
    fmt = engine.format
    assert isinstance(fmt, LLMYesNoFormat)
    rows = model.get_output_embeddings().weight[[fmt.yes_id, fmt.no_id]].detach().float().clone()
    decoder = _maybe_compile(engine, model.get_decoder())

    def head(input_ids: torch.Tensor, mask: torch.Tensor, _types: torch.Tensor | None) -> torch.Tensor:
        # No padding mask: rows are right-padded and attention is causal, so no real token can see
        # a pad, and positions count from 0 as they should. Without a mask SDPA can take its
        # flash-attention kernel. Only the last real token of each row is read.
        hidden = decoder(input_ids=input_ids).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(1) - 1]
        logits = last.float() @ rows.T
        diff: torch.Tensor = logits[:, 0] - logits[:, 1]
        return diff

    return head


def _cross_head(engine: TorchEngine, src: ModelSource) -> Head:
    from transformers import AutoModelForSequenceClassification

    model = _load_model(engine, AutoModelForSequenceClassification, src)
    return cross_encoder_head(_maybe_compile(engine, model), src, model.config.num_labels)


def cross_encoder_head(model: Any, src: ModelSource, n_labels: int) -> Head:
    """Raw logits of a sequence classifier; the ONNX exporter traces this same function."""
    if n_labels not in (1, 2):
        raise ConfigError(f"model {src.name!r} has {n_labels} labels; a cross-encoder needs 1 or 2")

    def head(input_ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"token_type_ids": types} if types is not None else {}
        logits = model(input_ids=input_ids, attention_mask=mask, **kwargs).logits.float()
        # Raw logits; the format's sigmoid gives softmax[1] for two labels: sigmoid(l1 - l0).
        raw: torch.Tensor = logits[:, 0] if n_labels == 1 else logits[:, 1] - logits[:, 0]
        return raw

    return head


def _bi_head(engine: TorchEngine, src: ModelSource) -> Head:
    from transformers import AutoModel

    return bi_encoder_head(_maybe_compile(engine, _load_model(engine, AutoModel, src)), src)


def bi_encoder_head(model: Any, src: ModelSource) -> Head:
    """Pooled, L2-normalised embeddings; the ONNX exporter traces this same function."""
    cls_pooling = bool(_pooling_config(src).get("pooling_mode_cls_token"))

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


def _pooling_config(src: ModelSource) -> dict[str, Any]:
    import json

    try:
        data = json.loads((src.path / "1_Pooling" / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_HEADS: dict[str, Callable[[TorchEngine, ModelSource], Head]] = {
    "llm-yes-no": _llm_head,
    "cross-encoder": _cross_head,
    "bi-encoder": _bi_head,
}
