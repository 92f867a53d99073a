"""What the cache stores: one key per (scoring context, query, document), one small value per key.

Key: the deployment's prefix (``rerankd:``), ``pair:``, a hash tag ``{t}`` and the 16-byte BLAKE2b
digest of the fields ``format version, *context, query``, each length-prefixed, followed by the
document's UTF-8 bytes. ``t`` is 6 hex digits of the digest of the fields alone, so every pair of
one (context, query) lands in one Redis Cluster slot and a request reads its pairs with one MGET on
one node; different queries spread over all slots (see docs/cache.md). The context names
everything besides the texts that changes a score: the model fingerprint (name, format, config,
tokenizer, weights, scoring version), the engine's precision, the effective instruction and the
truncation/chunking options. Length prefixes make the hashed bytes self-delimiting, so no two
(context, query, document) triples hash the same bytes.

Value: 15 bytes, ``<d I H B``: score (float64, so cached and fresh scores are equal bit for
bit), tokens the pair cost when scored, scored chunks (Cohere bills chunks), format version.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "KEY_PREFIX",
    "PairScore",
    "decode_all",
    "decode_value",
    "decode_values",
    "encode_value",
    "pair_keys",
]

#: The default deployment prefix with the cache's own part; keys are ``KEY_PREFIX{tag}digest``.
KEY_PREFIX = b"rerankd:pair:"
_PAIR = b"pair:"
_KEY_VERSION = "pair-1"
_VALUE = struct.Struct("<dIHB")
_VALUE_VERSION = 1
_VALUE_SIZE = _VALUE.size
_VERSION_BYTE = bytes([_VALUE_VERSION])
_MAX_TOKENS = 2**32 - 1
_MAX_CHUNKS = 2**16 - 1

Context = Sequence[str | int | None]


class PairScore(NamedTuple):
    """A scored pair: the score, and what scoring it cost (for usage reports of cached pairs).
    A tuple, not a dataclass: a fully cached request makes one per document, and this is cheaper."""

    score: float
    tokens: int
    chunks: int


def pair_keys(
    context: Context, query: str, documents: Sequence[str], *, prefix: bytes = b"rerankd:"
) -> list[bytes]:
    """One key per document, in order, each starting with ``prefix`` (the deployment's). The
    shared part is hashed once per request."""
    base = hashlib.blake2b(digest_size=16)
    for part in (_KEY_VERSION, *context, query):
        base.update(_field(part))
    # Hex: a raw digest byte could be a brace and end the tag early.
    tag = base.copy().digest()[:3].hex().encode()
    copy, prefix = base.copy, b"%b%b{%b}" % (prefix, _PAIR, tag)
    keys = []
    for doc in documents:  # the hot loop of a cached request: locals, no calls beyond hashing
        h = copy()
        h.update(doc.encode("utf-8", "surrogatepass"))
        keys.append(prefix + h.digest())
    return keys


def _field(part: str | int | None) -> bytes:
    if part is None:
        return b"n;"
    if isinstance(part, int):
        return b"i%d;" % part
    # surrogatepass: any Python string hashes, even one no JSON decoder would produce.
    raw = part.encode("utf-8", "surrogatepass")
    return b"s%d:" % len(raw) + raw


def encode_value(pair: PairScore) -> bytes:
    return _VALUE.pack(
        pair.score, min(pair.tokens, _MAX_TOKENS), min(pair.chunks, _MAX_CHUNKS), _VALUE_VERSION
    )


def decode_value(raw: bytes) -> PairScore | None:
    """``None`` for anything that is not a value this version wrote: it is then a miss."""
    return decode_values([raw])[0][0]


def decode_values(raws: Sequence[bytes | None]) -> tuple[list[PairScore | None], int]:
    """Decode a batch (``None`` stays ``None``); also says how many values were not ours,
    whatever they are (a misbehaving server may answer other types than bytes)."""
    out: list[PairScore | None] = []
    append, unpack, isfinite, new = out.append, _VALUE.unpack, math.isfinite, tuple.__new__
    bad = 0
    for raw in raws:  # hot on cached requests: one pass, no per-value function calls of our own
        if raw is None:
            append(None)
            continue
        if raw.__class__ is bytes and len(raw) == _VALUE_SIZE and raw[-1] == _VALUE_VERSION:
            fields = unpack(raw)
            if isfinite(fields[0]):
                append(new(PairScore, fields[:3]))
                continue
        bad += 1
        append(None)
    return out, bad


def decode_all(raws: Sequence[bytes | None]) -> tuple[list[float], int, int] | None:
    """The fully cached case in bulk: when every value is present and ours, the scores in order
    and the summed tokens and chunks; otherwise ``None`` (then :func:`decode_values` sorts it out).
    One join and one ``iter_unpack`` instead of a Python step per value."""
    n = len(raws)
    if not n:
        return [], 0, 0
    try:
        joined = b"".join(raws)  # type: ignore[arg-type]  # a None or a non-bytes value raises
    except TypeError:
        return None
    # None longer than a value and the right total: every value has exactly the value's size.
    if len(joined) != n * _VALUE_SIZE or max(map(len, raws)) != _VALUE_SIZE:  # type: ignore[arg-type]
        return None
    if joined[_VALUE_SIZE - 1 :: _VALUE_SIZE] != _VERSION_BYTE * n:
        return None
    scores, tokens, chunks, _ = zip(*_VALUE.iter_unpack(joined), strict=True)
    if not all(map(math.isfinite, scores)):
        return None
    return list(scores), sum(tokens), sum(chunks)
