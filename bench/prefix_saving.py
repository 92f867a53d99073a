"""What shared-prefix scoring saves at the 349-token shape: one batch of one request's pairs (the
bench's 100 x 256-word workload), run as full rows and packed (each prefix once), on CPU or GPU.

``python -m bench.prefix_saving [--layers 4] [--rows 16] [--device cpu] [--compile] [--json out.json]``

The model is Qwen3-Reranker-0.6B-shaped (``bench.make_qwen3_shaped``), with fewer layers for a quick
CPU run: the saving per layer is the same. Also checks that both ways give the same hidden states.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.make_qwen3_shaped import QWEN3_06B, corpus
from rerankd.adapters.formats import EncodeOptions, make_format
from rerankd.adapters.prefix import (
    packed_hidden,
    plan_prefixes,
    use_packed_attention,
)
from rerankd.adapters.torch_engine import compile_model
from rerankd.bench.workload import Workload
from tests.fixtures.tiny_qwen3 import build

__all__ = ["main"]


def _timed(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _pipelined(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    """Seconds a call with calls launched back to back, one wait at the end, as the server runs
    them: where the host launches slower than the device computes, this exceeds the device time."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def _profile(ways: dict[str, Callable[[], torch.Tensor]], device: torch.device) -> None:
    """Where each way's time goes: the top kernels over three calls, and the device's busy share."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in ways.items():
        with profile(activities=activities) as prof:
            for _ in range(3):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"--- {name}")
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=70))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prefix_saving", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=16, help="pairs of one request in the batch")
    p.add_argument("--doc-words", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="time both ways through torch.compile (dynamic)")
    p.add_argument(
        "--compile-scope", default="layers", choices=["layers", "model"], help="as the server's compile_scope"
    )
    p.add_argument(
        "--profile", action="store_true", help="print the torch profiler's top kernels of both ways"
    )
    p.add_argument("--json", dest="json_path", type=Path)
    ns = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(ns.device)
    dtype = getattr(torch, ns.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        shape = dataclasses.replace(QWEN3_06B, num_hidden_layers=ns.layers)
        path = build(Path(tmp) / "m", shape=shape, corpus=corpus(16384), vocab_size=16384, dtype=ns.dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        loaded: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = loaded.to(device).eval()
    use_packed_attention(model)
    decoder = model.get_decoder()
    if ns.compile:
        decoder = compile_model(decoder, ns.compile_scope)
    fmt = make_format("llm-yes-no", tokenizer, 8192)
    query, docs = Workload(documents=ns.rows, doc_words=(ns.doc_words, ns.doc_words)).request(0)
    ids = fmt.encode(query, docs, EncodeOptions()).ids
    plan = plan_prefixes(ids)
    assert plan is not None
    longest = max(map(len, ids))
    full_ids = torch.tensor([r + [0] * (longest - len(r)) for r in ids], device=device)
    last = torch.tensor([len(r) - 1 for r in ids], device=device)
    rows = torch.arange(len(ids), device=device)

    def full() -> torch.Tensor:
        out: torch.Tensor = decoder(input_ids=full_ids, use_cache=False).last_hidden_state[rows, last]
        return out

    def move(t: torch.Tensor) -> torch.Tensor:
        # As the engine moves a batch: pinned, without waiting for the kernels ahead of it.
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t

    def shared() -> torch.Tensor:
        return packed_hidden(decoder, ids, plan, move=move)

    with torch.inference_mode():
        started = time.perf_counter()
        full()
        first_full = time.perf_counter() - started
        started = time.perf_counter()
        shared()
        first_shared = time.perf_counter() - started
        t_full, h_full = _timed(full, ns.repeats, device)
        t_shared, h_shared = _timed(shared, ns.repeats, device)
        back_to_back = {"full_rows": _pipelined(full, ns.repeats, device)}
        back_to_back["shared_prefix"] = _pipelined(shared, ns.repeats, device)
        if ns.profile:
            _profile({"full_rows": full, "shared_prefix": shared}, device)
    result = {
        "device": str(device),
        "dtype": ns.dtype,
        "layers": ns.layers,
        "rows": len(ids),
        "mean_tokens_per_pair": plan.total / len(ids),
        "shared_prefix_tokens": plan.length,
        "tokens_saved_share": plan.saved / plan.total,
        "compiled": ns.compile,
        "first_call_s": {"full_rows": first_full, "shared_prefix": first_shared},
        "full_rows_s": t_full,
        "shared_prefix_s": t_shared,
        "speedup": t_full / t_shared,
        "back_to_back_s": back_to_back,
        "compile_scope": ns.compile_scope if ns.compile else None,
        "max_abs_diff_hidden": float((h_full.float() - h_shared.float()).abs().max()),
        "max_abs_hidden": float(h_full.float().abs().max()),
    }
    print(json.dumps(result, indent=2))
    if ns.json_path:
        ns.json_path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
