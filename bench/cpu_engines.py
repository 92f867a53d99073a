"""CPU engines in-process, all arms in one run so their ratios are fair on a shared machine.

    python -m bench.cpu_engines engines [--arms torch,onnx,onnx-int8] [--seconds 15] [--json out.json]
    python -m bench.cpu_engines doc-cache [--arms onnx-int8] [--pool 200] [--json out.json]

``engines``: the embedded model (or ``--model``) on the torch engine, the ONNX Runtime engine in
fp32 and in int8, each driven by ``--clients`` concurrent requests of ``--docs`` fresh documents
(no cache). All arms are loaded at once and measured in interleaved windows (``--rounds``), so a
change of load on a shared machine falls on every arm alike. Reported: tokens/s, requests/s, p50
and p99 latency, and each arm's ratios to the first arm's.

``doc-cache``: a bi-encoder under a RAG-like load, fresh queries over repeating documents, through
the result cache without and with the document-embedding cache (see :func:`doc_cache`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from rerankd.adapters.base import BatchedEngine
from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.loader import ModelSource, embedded_model, resolve_model
from rerankd.bench.workload import WORDS
from rerankd.config import ModelConfig

__all__ = ["drive", "main", "make_engine"]

Score = Callable[[str, list[str]], Awaitable[int]]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def make_engine(arm: str, source: ModelSource, cache_dir: Path, threads: int | None) -> BatchedEngine:
    if arm == "torch":
        from rerankd.adapters.torch_engine import TorchEngine

        return TorchEngine(source, device="cpu", dtype="float32", threads=threads)
    from rerankd.adapters.onnx_engine import OnnxEngine, Quantize

    quantize: Quantize = "int8" if arm == "onnx-int8" else "none"
    return OnnxEngine(source, cache_dir=cache_dir, quantize=quantize, threads=threads)


async def drive(
    score: Score,
    make_request: Callable[[random.Random], tuple[str, list[str]]],
    *,
    clients: int,
    seconds: float,
    seed: int = 0,
) -> dict[str, Any]:
    """``clients`` closed-loop callers for ``seconds``. Each request counts with the share of its
    lifetime inside the window (as ``rerankd bench`` counts), so a window shorter than one request
    still measures; latencies are those of the requests that ended inside it."""
    tokens = requests = 0.0
    latencies: list[float] = []
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(k: int) -> None:
        nonlocal tokens, requests
        rng = random.Random(seed + k)
        while time.perf_counter() < stop_at:
            query, docs = make_request(rng)
            t0 = time.perf_counter()
            n = await score(query, docs)
            t1 = time.perf_counter()
            share = max(0.0, min(t1, stop_at) - max(t0, start)) / max(t1 - t0, 1e-9)
            tokens += n * share
            requests += share
            if t1 <= stop_at:
                latencies.append(t1 - t0)

    await asyncio.gather(*(client(k) for k in range(clients)))
    return {"tokens": tokens, "requests": requests, "seconds": seconds, "latencies": latencies}


def merge(parts: list[dict[str, float]], latencies: list[float]) -> dict[str, float]:
    seconds = sum(p["seconds"] for p in parts)
    latencies = sorted(latencies)
    return {
        "tokens_per_s": sum(p["tokens"] for p in parts) / seconds,
        "requests_per_s": sum(p["requests"] for p in parts) / seconds,
        "requests": sum(p["requests"] for p in parts),
        "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0,
    }


async def interleaved(
    arms: Mapping[str, tuple[Score, Callable[[random.Random], tuple[str, list[str]]]]],
    *,
    clients: int,
    seconds: float,
    rounds: int,
    warmup: float,
) -> list[dict[str, Any]]:
    """Every arm gets ``rounds`` windows of ``seconds / rounds``, in turn (a, b, c, a, b, c, ...):
    a change of load on the shared machine then falls on all arms alike."""
    for score, request in arms.values():
        await drive(score, request, clients=clients, seconds=warmup, seed=10_000)
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    lat: dict[str, list[float]] = {name: [] for name in arms}
    for rnd in range(rounds):
        for name, (score, request) in arms.items():
            r = await drive(score, request, clients=clients, seconds=seconds / rounds, seed=rnd * 100)
            parts[name].append(r)
            lat[name].extend(r.pop("latencies"))
    return [{"arm": name, **merge(parts[name], lat[name])} for name in arms]


async def engines(source: ModelSource, ns: argparse.Namespace, cache_dir: Path) -> list[dict[str, Any]]:
    started: dict[str, BatchedEngine] = {}
    start_s: dict[str, float] = {}

    def request(rng: random.Random) -> tuple[str, list[str]]:
        return text(rng, 8), [text(rng, ns.words) for _ in range(ns.docs)]

    def scorer(engine: BatchedEngine) -> Score:
        async def score(query: str, docs: list[str]) -> int:
            return (await engine.score(query, docs, EncodeOptions())).n_tokens

        return score

    try:
        for arm in ns.arms.split(","):
            engine = make_engine(arm, source, cache_dir, ns.threads)
            t0 = time.perf_counter()
            await engine.start()
            start_s[arm] = time.perf_counter() - t0
            started[arm] = engine
        arms = {arm: (scorer(engine), request) for arm, engine in started.items()}
        rows = await interleaved(
            arms, clients=ns.clients, seconds=ns.seconds, rounds=ns.rounds, warmup=ns.warmup
        )
    finally:
        for engine in started.values():
            await engine.close()
    return [{**row, "start_s": start_s[row["arm"]]} for row in rows]


async def doc_cache(source: ModelSource, ns: argparse.Namespace, cache_dir: Path) -> list[dict[str, Any]]:
    """A RAG-like workload on one engine (``--arms``' first): every request a fresh query over
    ``--docs`` documents drawn from a pool of ``--pool`` that repeat. Arms: through the result cache
    without, then with, the document-embedding cache (the pair cache misses either way: every
    query is new)."""
    from rerankd.cache import MemoryStore
    from rerankd.scoring import PairScorer

    engine = make_engine(ns.arms.split(",")[0], source, cache_dir, ns.threads)
    await engine.start()
    rng = random.Random(7)
    pool = [text(rng, ns.words) + f" #{i}" for i in range(ns.pool)]
    serial = iter(range(10**9))

    def request(rng: random.Random) -> tuple[str, list[str]]:
        return text(rng, 8) + f" q{next(serial)}", rng.sample(pool, ns.docs)

    def through(scorer: PairScorer) -> Score:
        async def score(query: str, docs: list[str]) -> int:
            return (await scorer.score(engine, query, docs, EncodeOptions(), context=("bench",))).n_tokens

        return score

    plain = PairScorer(MemoryStore(max_entries=10**6, max_bytes=2**30), ttl_s=3600, write_queue=10**5)
    plain.embeddings = None  # the result cache as it was: pairs only
    cached = PairScorer(MemoryStore(max_entries=10**6, max_bytes=2**30), ttl_s=3600, write_queue=10**5)
    try:
        for scorer in (plain, cached):
            await scorer.open()
        # The documents have been seen before: one pass over the pool fills the embedding cache.
        for start in range(0, len(pool), 64):
            await cached.score(engine, "warm-up", pool[start : start + 64], EncodeOptions(), context=("w",))
        arms = {"uncached": (through(plain), request), "doc-embedding cache": (through(cached), request)}
        rows = await interleaved(
            arms, clients=ns.clients, seconds=ns.seconds, rounds=ns.rounds, warmup=ns.warmup
        )
    finally:
        for scorer in (plain, cached):
            await scorer.close()
        await engine.close()
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["tokens_per_s"] or 1.0
    base_p50 = rows[0]["p50_ms"] or 1.0
    lines = [
        "| arm | tokens/s | requests/s | p50 ms | p99 ms | throughput vs first | p50 vs first |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['tokens_per_s']:,.0f} | {r['requests_per_s']:.2f} | {r['p50_ms']:,.0f} "
            f"| {r['p99_ms']:,.0f} | {r['tokens_per_s'] / base:.2f}x | {r['p50_ms'] / base_p50:.2f}x |"
        )
    return "\n".join(lines)


def _source(ns: argparse.Namespace) -> ModelSource:
    cfg = ModelConfig(name="model", path=ns.model) if ns.model else embedded_model()
    return resolve_model(cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["engines", "doc-cache"])
    p.add_argument("--model", default=None, help="model folder (default: the embedded MiniLM)")
    p.add_argument("--arms", default="torch,onnx,onnx-int8")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--pool", type=int, default=200, help="doc-cache: documents the requests draw from")
    p.add_argument("--words", type=int, default=200, help="words per document (about one token each)")
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per arm, in all")
    p.add_argument("--rounds", type=int, default=3, help="windows per arm, interleaved with the others")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--onnx-cache-dir", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--json", dest="json_path", type=Path, default=None)
    ns = p.parse_args(argv)
    source = _source(ns)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = ns.onnx_cache_dir or Path(tmp)
        run = engines if ns.what == "engines" else doc_cache
        rows = asyncio.run(run(source, ns, cache_dir))
    print(_table(rows))
    if ns.json_path:
        doc = {"kind": f"cpu-{ns.what}", "args": vars(ns) | {"json_path": None}, "load": os.getloadavg()}
        ns.json_path.write_text(json.dumps({**doc, "rows": rows}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
