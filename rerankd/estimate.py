"""A safe upper bound on the input tokens a request can score, computed before scoring.

Token limits hold a request's tokens before it runs (:meth:`rerankd.auth.limits.Limiter.reserve`)
and settle the real count afterwards, so the bound must never be below what the engine reports,
whatever the tokenizer. It counts UTF-8 bytes: byte-level BPE emits at most one token per byte, and
WordPiece and SentencePiece at most one per character (plus a word marker), so no tokenizer makes
more tokens of a text than it has bytes, give or take the special tokens (``SPECIALS``, generous).
A document that fits in one window costs at most its sequence's bytes; one that does not costs at
most ``max_chunks`` full windows.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankd.adapters.formats import EncodeOptions
from rerankd.adapters.prompts import BGE_GEMMA, MXBAI_V2, QWEN3

__all__ = ["SPECIALS", "token_bound"]

#: Special tokens a tokenizer may add to one sequence ([CLS]/[SEP], <s>/</s>, a leading word marker).
SPECIALS = 8

# Every prompt a local format wraps around its rows (rerankd.adapters.formats).
_TEMPLATES = (QWEN3,)
_PAIR_PROMPTS = (MXBAI_V2, BGE_GEMMA)

# The longest prompt any LLM template wraps around (instruction, query, document), in bytes.
_TEMPLATE_BYTES = max(
    len(t.prefix.encode())
    + len(t.head.format(instruction="", query="").encode())
    + 1
    + len(t.suffix.encode())
    for t in _TEMPLATES
)
# Prompts that tokenize query and document apart: all their fixed text, separators included.
_TEMPLATE_BYTES = max(
    _TEMPLATE_BYTES,
    *(
        len((p.prefix + p.query + p.document + 2 * p.sep + p.task + p.suffix).encode()) + 1
        for p in _PAIR_PROMPTS
    ),
)
_DEFAULT_INSTRUCTION_BYTES = max(len(t.default_instruction.encode()) for t in _TEMPLATES)


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def token_bound(
    model_format: str, max_length: int, query: str, documents: Sequence[str], opts: EncodeOptions
) -> int:
    """At least the ``input_tokens`` that scoring ``documents`` against ``query`` can report.

    ``max_length`` is the model's tokens per sequence (0: unknown, as for remote models)."""
    q = _size(query)
    extra = 0
    if model_format == "bi-encoder":
        fixed = SPECIALS  # documents are embedded alone; the query once, as its own row
        extra = q + SPECIALS if not max_length else min(max_length, q + SPECIALS)
    elif model_format == "cross-encoder":  # query and document in one sequence
        fixed = q + SPECIALS
    else:
        # LLM rerankers, and remote models (whose upstream may wrap a prompt around each pair):
        # the longest prompt template known here, with its instruction.
        instruction = _size(opts.instruction) if opts.instruction else _DEFAULT_INSTRUCTION_BYTES
        fixed = _TEMPLATE_BYTES + instruction + q + SPECIALS
    chunks = max(1, opts.max_chunks)
    total = extra
    for doc in documents:
        one = fixed + _size(doc)
        if max_length and one <= max_length:
            total += one  # fits in one window
        else:
            total += chunks * (min(one, max_length) if max_length else one)
    return total
