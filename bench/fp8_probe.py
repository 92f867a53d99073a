"""Forward-pass speed of the torch engine's decoder in bf16 and with FP8 projections, on one GPU.

    python -m bench.fp8_probe MODEL_DIR [--rows 48] [--tokens 349] [--iters 20] [--json OUT]

Loads the model twice (bf16, then FP8 projections: ``rerankd.adapters.fp8``), compiles each the way
the engine does (``torch.compile(dynamic=True)``), and times full batches of ``rows`` sequences of
``tokens`` tokens: tokens per second of the forward pass alone, no server, no tokenization. Also
prints how far the FP8 model's last hidden states (what the yes/no answer is read from) are from
bf16's, relative to their norm. Compare with the server's figures from ``bench/gpu.sh`` in the
same lease.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from rerankd.adapters.fp8 import quantize_linears


def _time(fn: Callable[[], Any], iters: int) -> float:
    fn()
    fn()  # compile, pick kernels
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--tokens", type=int, default=349)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--eager", action="store_true", help="do not compile")
    p.add_argument("--only", choices=["bf16", "fp8"], help="time one of the two")
    p.add_argument("--json")
    ns = p.parse_args(argv)
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda")
    loaded: Any = AutoModelForCausalLM.from_pretrained(ns.model, dtype=torch.bfloat16)
    base = loaded.to(device).eval()
    fp8 = copy.deepcopy(base)
    replaced = quantize_linears(fp8)
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(100, base.config.vocab_size, (ns.rows, ns.tokens), generator=gen).to(device)
    out: dict[str, Any] = {"rows": ns.rows, "tokens": ns.tokens, "fp8_linears": replaced}
    last: dict[str, torch.Tensor] = {}
    for name, model in (("bf16", base), ("fp8", fp8)):
        if ns.only and name != ns.only:
            continue
        decoder = model.get_decoder()
        run = decoder if ns.eager else torch.compile(decoder, dynamic=True)
        with torch.inference_mode():
            started = time.perf_counter()
            last[name] = run(input_ids=ids).last_hidden_state[:, -1].float()
            out[f"{name}_first_pass_s"] = round(time.perf_counter() - started, 1)
            seconds = _time(partial(run, input_ids=ids), ns.iters)
        out[f"{name}_tokens_per_s"] = round(ns.rows * ns.tokens / seconds)
        out[f"{name}_batch_ms"] = round(seconds * 1000, 2)
        rate = out[f"{name}_tokens_per_s"]
        print(f"{name}: {rate:,} tokens/s, {seconds * 1000:.2f} ms a batch", flush=True)
    if not ns.only:
        out["speedup"] = round(out["fp8_tokens_per_s"] / out["bf16_tokens_per_s"], 3)
        diff = (last["fp8"] - last["bf16"]).norm(dim=-1) / last["bf16"].norm(dim=-1)
        out["last_hidden_rel_error_median"] = round(float(diff.median()), 4)
        out["last_hidden_rel_error_max"] = round(float(diff.max()), 4)
    print(json.dumps(out))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
