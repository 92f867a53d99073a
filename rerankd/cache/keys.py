"""What the cache stores: one key per (scoring context, query, document), one small value per key.

Key: ``rerankd:pair:`` + hex BLAKE2b-128 of the fields ``format version, *context, query``, each
length-prefixed, followed by the document's UTF-8 bytes. The context names everything besides the texts that
changes a score: the model fingerprint (name, format, config, tokenizer, weights, scoring
version), the engine's precision, the effective instruction and the truncation/chunking options.
Length prefixes make the hashed bytes self-delimiting, so no two (context, query, document)
triples hash the same bytes.

Value: 15 bytes, ``<B d I H``: format version, score (float64, so cached and fresh scores are
equal bit for bit), tokens the pair cost when scored, scored chunks (Cohere bills chunks).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["KEY_PREFIX", "PairScore", "decode_value", "encode_value", "pair_keys"]

KEY_PREFIX = b"rerankd:pair:"
_KEY_VERSION = "pair-1"
_VALUE = struct.Struct("<BdIH")
_VALUE_VERSION = 1
_MAX_TOKENS = 2**32 - 1
_MAX_CHUNKS = 2**16 - 1

Context = Sequence[str | int | None]


@dataclass(frozen=True, slots=True)
class PairScore:
    """A scored pair: the score, and what scoring it cost (for usage reports of cached pairs)."""

    score: float
    tokens: int
    chunks: int


def pair_keys(context: Context, query: str, documents: Sequence[str]) -> list[bytes]:
    """One key per document, in order. The shared prefix is hashed once per request."""
    base = hashlib.blake2b(digest_size=16)
    for part in (_KEY_VERSION, *context, query):
        base.update(_field(part))
    keys = []
    for doc in documents:
        h = base.copy()
        h.update(_utf8(doc))
        keys.append(KEY_PREFIX + h.hexdigest().encode("ascii"))
    return keys


def _field(part: str | int | None) -> bytes:
    if part is None:
        return b"n;"
    if isinstance(part, int):
        return b"i%d;" % part
    raw = _utf8(part)
    return b"s%d:" % len(raw) + raw


def _utf8(text: str) -> bytes:
    # surrogatepass: any Python string hashes, even one no JSON decoder would produce.
    return text.encode("utf-8", "surrogatepass")


def encode_value(pair: PairScore) -> bytes:
    return _VALUE.pack(
        _VALUE_VERSION, pair.score, min(pair.tokens, _MAX_TOKENS), min(pair.chunks, _MAX_CHUNKS)
    )


def decode_value(raw: bytes) -> PairScore | None:
    """``None`` for anything that is not a value this version wrote: it is then a miss."""
    if len(raw) != _VALUE.size or raw[0] != _VALUE_VERSION:
        return None
    _, score, tokens, chunks = _VALUE.unpack(raw)
    if not math.isfinite(score):
        return None
    return PairScore(score, tokens, chunks)
