"""API keys, per-key rate limits and usage accounting; no HTTP here (see ``rerankd.proxy.auth``)."""

from rerankd.auth.gate import Gate, build_gate, check_exposure, is_loopback, open_store
from rerankd.auth.keys import KeyRecord, digest_of, generate_key, parse_expires
from rerankd.auth.limits import KeyUsage, Limiter, MemoryLimiter, RedisLimiter
from rerankd.auth.store import FileKeyStore, KeyStore, RedisKeyStore

__all__ = [
    "FileKeyStore",
    "Gate",
    "KeyRecord",
    "KeyStore",
    "KeyUsage",
    "Limiter",
    "MemoryLimiter",
    "RedisKeyStore",
    "RedisLimiter",
    "build_gate",
    "check_exposure",
    "digest_of",
    "generate_key",
    "is_loopback",
    "open_store",
    "parse_expires",
]
