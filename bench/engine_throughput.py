"""In-process throughput of the torch engine against the bare model, on a Qwen3-Reranker-0.6B-shaped
model with random weights (built here: no hub needed).

    python -m bench.engine_throughput --out results.json [--modes eager,compile] [--budgets 16384,32768]

Three numbers per setting, from one run: the bare model (pre-sorted, pre-padded batches straight into
the decoder: the ceiling for this batch size), and the engine fed by N concurrent requests of 100
documents each (tokenization, scheduling, batching included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.make_qwen3_shaped import QWEN3_06B, corpus
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.bench.workload import WORDS
from rerankd.config import ModelConfig
from tests.fixtures.tiny_qwen3 import build


def documents(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) + f" #{i}" for i in range(n)]


def make_model(folder: Path) -> Path:
    return build(folder, shape=QWEN3_06B, vocab_size=16384, corpus=corpus(16384), dtype="bfloat16")


async def engine_run(
    path: Path, *, budget: int, compile: bool, concurrency: int, docs: int, words: int, seconds: float
) -> dict[str, float]:
    source = resolve_model(ModelConfig(name="qwen3-shaped", path=str(path)))
    engine = TorchEngine(source, device="cuda", dtype="bfloat16", max_batch_tokens=budget, compile=compile)
    started = time.perf_counter()
    await engine.start()
    pool = documents(4000, words, 2)
    query = "What is the history of the river city market?"
    # Warm-up: compiled graphs for the shapes that will come.
    await asyncio.gather(
        *(engine.score(query, pool[i * docs : (i + 1) * docs], EncodeOptions()) for i in range(4))
    )
    start_s = time.perf_counter() - started
    tokens = pairs = requests = 0
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal tokens, pairs, requests
        rng = random.Random(k)
        while time.perf_counter() < stop_at:
            batch = rng.sample(pool, docs)
            t0 = time.perf_counter()
            result = await engine.score(query, batch, EncodeOptions())
            latencies.append(time.perf_counter() - t0)
            tokens += result.n_tokens
            pairs += docs
            requests += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stats = engine.stats()
    await engine.close()
    latencies.sort()
    return {
        "tokens_per_s": tokens / elapsed,
        "pairs_per_s": pairs / elapsed,
        "requests_per_s": requests / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "padding_overhead": stats["padded_tokens"] / max(1, stats["real_tokens"]) - 1,
        "gpu_busy_share": stats["busy_seconds"] / elapsed,
        "start_s": start_s,
        "mean_tokens_per_pair": tokens / max(1, pairs),
    }


def bare_model(path: Path, *, rows: int, length: int, compile: bool, seconds: float) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model = model.cuda().eval()
    decoder: Any = model.get_decoder()
    head = model.get_output_embeddings().weight[[5, 6]].float()
    if compile:
        decoder = torch.compile(decoder, dynamic=True)
    ids = torch.randint(10, model.config.vocab_size, (rows, length), device="cuda")
    # Causal attention without a padding mask, as the engine runs it (rows are right-padded).
    with torch.inference_mode():
        for _ in range(3):
            decoder(input_ids=ids)
        torch.cuda.synchronize()
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            h = decoder(input_ids=ids).last_hidden_state[:, -1]
            (h.float() @ head.T).cpu()
            n += 1
        elapsed = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return {"tokens_per_s": n * rows * length / elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", default="16384,32768")
    p.add_argument("--modes", default="eager,compile", help="eager, compile or both")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--docs", type=int, default=100)
    p.add_argument(
        "--words", type=int, default=253, help="words per document (one token each: about 256 tokens)"
    )
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = make_model(Path(tmp) / "qwen3-0.6b-shaped")
        modes = [m == "compile" for m in args.modes.split(",")]
        for compile in modes:
            for rows, length in ((64, 320), (128, 320)):
                r = bare_model(path, rows=rows, length=length, compile=compile, seconds=args.seconds / 2)
                results["runs"].append(
                    {"kind": "bare", "compile": compile, "rows": rows, "length": length, **r}
                )
                print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
            for budget in (int(b) for b in args.budgets.split(",")):
                r = asyncio.run(
                    engine_run(
                        path,
                        budget=budget,
                        compile=compile,
                        concurrency=args.concurrency,
                        docs=args.docs,
                        words=args.words,
                        seconds=args.seconds,
                    )
                )
                results["runs"].append({"kind": "engine", "compile": compile, "budget": budget, **r})
                print(json.dumps(results["runs"][-1]), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
