from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from rerankd.cache.keys import KEY_PREFIX, PairScore, decode_value, decode_values, encode_value, pair_keys

CONTEXT = ("fingerprint", "torch:float32", None, None, 1)


def test_one_key_per_document_stable_across_calls() -> None:
    keys = pair_keys(CONTEXT, "query", ["a", "b", "a"])
    assert keys == pair_keys(CONTEXT, "query", ["a", "b", "a"])
    assert keys[0] == keys[2] != keys[1]
    # prefix, an 8-byte hash tag "{......}", the 16-byte digest
    assert all(k.startswith(KEY_PREFIX + b"{") and len(k) == len(KEY_PREFIX) + 8 + 16 for k in keys)
    assert pair_keys(CONTEXT, "query", ["b"]) == [keys[1]]  # a pair's key ignores its neighbours


@pytest.mark.parametrize(
    "context",
    [
        ("other-fingerprint", "torch:float32", None, None, 1),
        ("fingerprint", "torch:bfloat16", None, None, 1),
        ("fingerprint", "torch:float32", "an instruction", None, 1),
        ("fingerprint", "torch:float32", "", None, 1),
        ("fingerprint", "torch:float32", None, 512, 1),
        ("fingerprint", "torch:float32", None, None, 10),
    ],
)
def test_every_context_field_changes_the_key(context: tuple[str | int | None, ...]) -> None:
    assert pair_keys(context, "q", ["d"]) != pair_keys(CONTEXT, "q", ["d"])


def test_field_boundaries_cannot_be_shifted() -> None:
    assert pair_keys(("ab", "c"), "q", ["d"]) != pair_keys(("a", "bc"), "q", ["d"])
    assert pair_keys(CONTEXT, "ab", ["c"]) != pair_keys(CONTEXT, "a", ["bc"])
    assert pair_keys((1,), "q", ["d"]) != pair_keys(("1",), "q", ["d"])


def test_any_python_string_hashes() -> None:
    assert len(pair_keys(CONTEXT, "q\ud800", ["\udfff", "emoji 🙂"])) == 2


def test_values_round_trip_exactly() -> None:
    pair = PairScore(score=0.1 + 0.2, tokens=123_456, chunks=7)
    assert decode_value(encode_value(pair)) == pair


def test_values_of_other_types_are_misses_too() -> None:
    good = encode_value(PairScore(0.25, 3, 1))
    odd: list[Any] = [good.decode("latin-1"), 15, [good], bytearray(good)]
    assert decode_values(odd) == ([None] * 4, 4)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"0.97",
        encode_value(PairScore(0.5, 1, 1))[:-1],
        encode_value(PairScore(0.5, 1, 1)) + b"x",
        encode_value(PairScore(0.5, 1, 1))[:-1] + b"\x02",  # another format version
        struct.pack("<dIHB", math.nan, 1, 1, 1),
        struct.pack("<dIHB", -math.inf, 1, 1, 1),
    ],
)
def test_anything_else_decodes_to_a_miss(raw: bytes) -> None:
    assert decode_value(raw) is None
    good = encode_value(PairScore(0.25, 3, 1))
    assert decode_values([good, raw, None]) == ([PairScore(0.25, 3, 1), None, None], 1)


def test_a_requests_keys_share_one_cluster_slot_and_queries_spread() -> None:
    from redis.crc import key_slot

    docs = [f"document {i}" for i in range(50)]
    assert len({key_slot(k) for k in pair_keys(CONTEXT, "one query", docs)}) == 1
    # Other queries (or contexts) land elsewhere: load spreads over the cluster by query.
    slots = {key_slot(pair_keys(CONTEXT, f"query {i}", ["d"])[0]) for i in range(50)}
    assert len(slots) > 40


def test_the_deployment_prefix_starts_every_key() -> None:
    keys = pair_keys(CONTEXT, "q", ["a", "b"], prefix=b"staging:")
    assert all(k.startswith(b"staging:pair:{") for k in keys)
    assert set(keys).isdisjoint(pair_keys(CONTEXT, "q", ["a", "b"]))
