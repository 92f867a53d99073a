from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest

from rerankd.auth.keys import KEY_PREFIX, KeyRecord, digest_of, generate_key, parse_expires


def test_keys_carry_the_prefix_and_256_random_bits() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        body = key[len(KEY_PREFIX) :]
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body)
        assert len(base64.urlsafe_b64decode(body + "=")) == 32


def test_digest_is_sha256_of_the_whole_key() -> None:
    assert digest_of("rk-abc") == "sha256:" + hashlib.sha256(b"rk-abc").hexdigest()
    assert digest_of("rk-abc") != digest_of("rk-abd")


def test_parse_expires_forms() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert parse_expires("2027-01-31", now=now) == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_expires("2027-01-31T10:00:00+02:00", now=now) == datetime(2027, 1, 31, 8, tzinfo=UTC)
    assert parse_expires("30d", now=now) == now + timedelta(days=30)
    assert parse_expires("12h", now=now) == now + timedelta(hours=12)
    assert parse_expires("2w", now=now) == now + timedelta(weeks=2)
    with pytest.raises(ValueError, match="duration like 30d"):
        parse_expires("next tuesday", now=now)


def test_status_follows_revocation_then_expiry() -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    base = KeyRecord(name="a", digest=digest_of("rk-x"), created=now)
    assert base.status(now) == "active"
    later = KeyRecord(name="a", digest=base.digest, created=now, expires=now + timedelta(seconds=1))
    assert later.status(now) == "active"
    assert later.status(now + timedelta(seconds=1)) == "expired"
    revoked = KeyRecord(name="a", digest=base.digest, created=now, expires=now, revoked=now)
    assert revoked.status(now) == "revoked"
