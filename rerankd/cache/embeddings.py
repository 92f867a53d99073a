"""Keys and values of cached document embeddings (bi-encoders).

A bi-encoder embeds each document without the query, so a document's embedding can serve every
later query. Key: ``rerankd:emb:`` + the 16-byte BLAKE2b digest of the length-prefixed fields
``format version, *context`` followed by the document's UTF-8 bytes; the context is the model
fingerprint, the engine's tag (runtime and precision) and the options that change which tokens are
embedded (``max_tokens_per_doc``, windows, truncation side). No query, no instruction: they do not
change a document's embedding.

Value: ``<BHHI`` (format version, windows, dimension, tokens the document cost) followed by
windows x dimension float32, little-endian. float32, not float16: a cached embedding then gives
the very score a fresh one does.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rerankd.cache.keys import Context

__all__ = ["EMBEDDING_PREFIX", "DocEmbedding", "decode_embeddings", "embedding_keys", "encode_embedding"]

EMBEDDING_PREFIX = b"rerankd:emb:"
_KEY_VERSION = "emb-1"
_HEADER = struct.Struct("<BHHI")
_VALUE_VERSION = 1
_FLOAT = np.dtype("<f4")


class DocEmbedding(NamedTuple):
    #: One L2-normalised row per window of the document (one, unless it was split).
    vectors: np.ndarray
    tokens: int


def embedding_keys(context: Context, documents: Sequence[str]) -> list[bytes]:
    base = hashlib.blake2b(digest_size=16)
    for part in (_KEY_VERSION, *context):
        raw = b"n" if part is None else str(part).encode("utf-8", "surrogatepass")
        base.update(b"%d:" % len(raw) + raw)
    keys = []
    for doc in documents:
        h = base.copy()
        h.update(doc.encode("utf-8", "surrogatepass"))
        keys.append(EMBEDDING_PREFIX + h.digest())
    return keys


def encode_embedding(value: DocEmbedding) -> bytes:
    rows = np.ascontiguousarray(value.vectors, dtype=_FLOAT)
    windows, dim = rows.shape
    return _HEADER.pack(_VALUE_VERSION, windows, dim, min(value.tokens, 2**32 - 1)) + rows.tobytes()


def decode_embeddings(raws: Sequence[bytes | None]) -> tuple[list[DocEmbedding | None], int]:
    """One embedding or ``None`` per value; also how many values were present but not ours
    (wrong version or size: then they are misses)."""
    out: list[DocEmbedding | None] = []
    bad = 0
    for raw in raws:
        if raw is None:
            out.append(None)
            continue
        if raw.__class__ is bytes and len(raw) >= _HEADER.size:
            version, windows, dim, tokens = _HEADER.unpack_from(raw)
            if version == _VALUE_VERSION and windows and len(raw) == _HEADER.size + 4 * windows * dim:
                rows = np.frombuffer(raw, dtype=_FLOAT, offset=_HEADER.size).reshape(windows, dim)
                if np.isfinite(rows).all():
                    out.append(DocEmbedding(rows, tokens))
                    continue
        bad += 1
        out.append(None)
    return out, bad
