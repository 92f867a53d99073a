"""Build a Qwen3-Reranker-0.6B-shaped model with random weights, offline, for speed measurements.

``python -m bench.make_qwen3_shaped OUT_DIR [--vocab 16384] [--dtype bfloat16]`` (from the repository
root: it reuses ``tests/fixtures/tiny_qwen3.py`` with the 0.6B dimensions).

Same decoder as Qwen3-Reranker-0.6B: hidden 1024, 28 layers, 16 query heads, 8 key/value heads,
head dimension 128, MLP 3072, tied embeddings, bf16 safetensors. The vocabulary is smaller
(a byte-level BPE trained here on generated text instead of Qwen's 151,669 tokens), so the embedding
matrix is ~17M parameters instead of ~155M. rerankd reads only the yes/no rows of it, so its speed is
unchanged; a full-vocabulary head (``bench.baselines --scorer card``) is cheaper than with the real
vocabulary. The tokenizer covers the load generator's words one token each, as Qwen's does.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from rerankd.bench.workload import WORDS
from tests.fixtures.tiny_qwen3 import CORPUS, Shape, build

__all__ = ["QWEN3_06B", "corpus", "main"]

_SYLLABLES = [
    *("ka", "ri", "to", "ne", "su", "mo", "la", "pe", "vi", "do", "zu", "ha", "gre", "str"),
    *("an", "ex", "com", "pro", "tion", "ing", "ment", "ly", "ous", "able"),
]


def corpus(vocab_size: int, seed: int = 0) -> Iterator[str]:
    """Text for the BPE: the load generator's words (often, so each becomes one token), the
    fixture's prompt text, and enough distinct made-up words to fill a vocabulary of this size."""
    rng = random.Random(seed)
    yield from CORPUS * 20
    for _ in range(4000):
        yield " ".join(rng.choices(WORDS, k=40))
    made_up = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))) for _ in range(2 * vocab_size)]
    for _ in range(max(1, vocab_size // 10)):
        yield " ".join(rng.choices(made_up, k=30)) + " 0123456789 (a) [b] {c}, d; e: f! g? h."


QWEN3_06B = Shape(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    initializer_range=0.02,  # the real model's; random weights stay finite through 28 bf16 layers
)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.make_qwen3_shaped", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("out", type=Path, help="folder to write (config, bf16 safetensors, tokenizer)")
    p.add_argument("--vocab", type=int, default=16384, help="tokenizer vocabulary (default 16384)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick check of the tooling")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    shape = QWEN3_06B if not ns.layers else dataclasses.replace(QWEN3_06B, num_hidden_layers=ns.layers)
    started = time.perf_counter()
    build(
        ns.out,
        seed=ns.seed,
        shape=shape,
        corpus=corpus(ns.vocab, ns.seed),
        vocab_size=ns.vocab,
        dtype=ns.dtype,
    )
    print(f"{ns.out} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
