"""The ONNX Runtime engine for CPU (``--engine onnx``): encoder models exported once, then run by
onnxruntime behind the same scheduler as the torch engine.

At first load the model is exported from torch to ONNX, through the very head functions the torch
engine runs (``bi_encoder_head``, ``cross_encoder_head``), so both engines return the same raw
outputs and the format turns them into scores alike. Exports are kept on disk by model fingerprint,
exporter, opset, runtime versions and quantization; later starts load them without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import uuid
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.formats import make_format
from rerankd.adapters.loader import ModelSource
from rerankd.adapters.registry import ENGINES
from rerankd.adapters.scheduler import Finish
from rerankd.config import BATCH_TOKENS_CPU, MAX_BATCH_SIZE, MAX_QUEUE_SEQUENCES, Settings
from rerankd.errors import ConfigError

__all__ = [
    "ONNX_FORMATS",
    "OPSET",
    "OnnxEngine",
    "Quantize",
    "build",
    "default_cache_dir",
    "default_threads",
    "export_path",
    "exported_model",
]

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
#: Formats this engine runs (its row of the engine table); the LLM formats stay with torch and vLLM.
ONNX_FORMATS = ENGINES["onnx"].formats
OPSET = 17
#: Bump when the exported graph changes (inputs, head, export options): old exports are then ignored.
_EXPORT_VERSION = "1"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rerankd" / "onnx"


def default_threads() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def export_path(source: ModelSource, cache_dir: Path, quantize: Quantize) -> Path:
    """The file an export of ``source`` lives in. Anything that changes the graph or its numbers is
    in the name: a new torch, exporter setting or quantization never reuses an old file."""
    h = hashlib.sha256()
    for part in (
        _EXPORT_VERSION,
        f"opset={OPSET}",
        f"torch={_version('torch')}",
        f"transformers={_version('transformers')}",
        f"onnx={_version('onnx')}",
        f"onnxruntime={_version('onnxruntime')}",
        f"quantize={quantize}",
    ):
        h.update(part.encode() + b"\0")
    return cache_dir / f"{source.fingerprint}-{h.hexdigest()[:12]}-{quantize}.onnx"


def exported_model(source: ModelSource, cache_dir: Path, quantize: Quantize) -> Path:
    """The model's ONNX file, exported (and quantized) now unless an earlier start did."""
    path = export_path(source, cache_dir, quantize)
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    if quantize == "none":
        log.info("exporting %s to ONNX (once per model version): %s", source.name, path)
        _atomic(path, partial(_export, source))
    else:
        fp32 = exported_model(source, cache_dir, "none")
        log.info("quantizing %s to %s: %s", source.name, quantize, path)
        _atomic(path, partial(_quantize, fp32))
    return path


def _atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: two processes exporting
    at once each write their own file, and readers only ever see a whole one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export(source: ModelSource, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from rerankd.adapters.torch_engine import bi_encoder_head, cross_encoder_head

    auto = AutoModel if source.format == "bi-encoder" else AutoModelForSequenceClassification
    # Eager attention traces to plain MatMul/Softmax, which onnxruntime fuses into its attention kernel.
    model = auto.from_pretrained(
        source.path,
        dtype=torch.float32,
        attn_implementation="eager",
        trust_remote_code=source.config.trust_remote_code,
    ).eval()
    if source.format == "bi-encoder":
        head = bi_encoder_head(model, source)
    else:
        head = cross_encoder_head(model, source, model.config.num_labels)
    tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=source.config.trust_remote_code)
    with_types = "token_type_ids" in tokenizer.model_input_names

    class Traced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registered, so its weights become the graph's initializers

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return head(inputs[0], inputs[1], inputs[2] if with_types else None)

    # Two rows, one padded: the trace must see a real padding mask.
    ids = torch.tensor([[101, 2000, 2001, 2002, 102], [101, 2003, 102, 0, 0]])
    ids = ids.clamp(max=model.config.vocab_size - 1)
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    names = list(_INPUTS if with_types else _INPUTS[:2])
    args = (ids, mask, torch.zeros_like(ids)) if with_types else (ids, mask)
    # The tracer warns of every Python branch on a tensor (shape checks in transformers' masks);
    # the fidelity tests check the traced graph on other shapes, so the warnings are only noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Traced().eval(),
            args,
            str(out),
            dynamo=False,
            input_names=names,
            output_names=["output"],
            dynamic_axes={**{n: {0: "batch", 1: "length"} for n in names}, "output": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )


def _quantize(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weights to int8, activations quantized per batch at run time: no calibration data needed.
    quantize_dynamic(fp32, out, weight_type=QuantType.QInt8)


class OnnxEngine(BatchedEngine):
    def __init__(
        self,
        source: ModelSource,
        *,
        quantize: Quantize = "none",
        cache_dir: Path | None = None,
        threads: int | None = None,
        max_batch_tokens: int | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_queue: int = MAX_QUEUE_SEQUENCES,
    ) -> None:
        if source.format not in ONNX_FORMATS:
            raise ConfigError(
                f"model {source.name!r} is {source.format}: the onnx engine runs cross-encoders and "
                "bi-encoders; serve it with --engine torch or vllm"
            )
        super().__init__(
            source,
            # As the torch engine on CPU: past ~1k padded tokens a batch gains nothing, only delay.
            max_batch_tokens=max_batch_tokens or BATCH_TOKENS_CPU,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            overlap=False,  # a session run returns when its outputs are there
        )
        self.quantize: Quantize = quantize
        self.cache_dir = cache_dir or default_cache_dir()
        self.threads = threads or default_threads()
        self.model_path: Path | None = None
        self._session: Any = None
        self._inputs: tuple[str, ...] = ()
        self._pad_id = 0

    def load(self) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        src = self.source
        tokenizer = AutoTokenizer.from_pretrained(src.path, trust_remote_code=src.config.trust_remote_code)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.format = make_format(src.format, tokenizer, src.max_length)
        self.model_path = exported_model(src, self.cache_dir, self.quantize)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.threads
        # One batch at a time (the scheduler's thread); parallelism is within each operator.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        log.info(
            "loading %s (%s) from %s with onnxruntime %s, %d threads",
            src.name,
            src.format,
            self.model_path,
            ort.__version__,
            self.threads,
        )
        self._session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = tuple(i.name for i in self._session.get_inputs())

    @property
    def cache_tag(self) -> str:
        return f"onnx:{'float32' if self.quantize == 'none' else self.quantize}"

    def run_batch(self, ids: list[list[int]], type_ids: list[list[int]] | None) -> Finish:
        """Run one batch to the end (``InferenceSession.run`` blocks). Scheduler thread only."""
        session = self._session
        assert session is not None
        longest = max(map(len, ids))
        pad = self._pad_id
        feed = {
            "input_ids": np.array([row + [pad] * (longest - len(row)) for row in ids], dtype=np.int64),
            "attention_mask": np.array(
                [[1] * len(row) + [0] * (longest - len(row)) for row in ids], dtype=np.int64
            ),
        }
        if "token_type_ids" in self._inputs:
            types = type_ids or [[0] * len(row) for row in ids]
            feed["token_type_ids"] = np.array(
                [row + [0] * (longest - len(row)) for row in types], dtype=np.int64
            )
        out = session.run(["output"], feed)[0]
        rows: Sequence[Any] = list(out) if out.ndim == 2 else out.tolist()
        return lambda: rows


def build(source: ModelSource, settings: Settings) -> OnnxEngine:
    """The engine table's entry point (``rerankd.adapters.registry``)."""
    if settings.quantize == "fp8":  # the table's check refuses it first; this narrows the type
        raise ConfigError("quantize fp8 is the torch engine's")
    return OnnxEngine(
        source,
        quantize=settings.quantize,
        cache_dir=Path(settings.onnx_cache_dir).expanduser() if settings.onnx_cache_dir else None,
        threads=settings.threads,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue_sequences,
    )
