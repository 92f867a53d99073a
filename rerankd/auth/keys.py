"""API keys: generation, hashing and the stored record.

A key is ``rk-`` followed by 43 URL-safe characters (32 random bytes, 256 bits). Only its SHA-256
digest is stored. A fast hash is enough here: slow password hashes (bcrypt, argon2) exist to make
guessing low-entropy passwords expensive, and nobody can enumerate 2^256 random keys, while a fast
hash keeps the check per request at about a microsecond.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "KEY_PREFIX",
    "NAME_PATTERN",
    "KeyRecord",
    "KeyStatus",
    "digest_of",
    "generate_key",
    "parse_expires",
]

KEY_PREFIX = "rk-"
#: Names appear in logs, Redis keys and CLI output: keep them to a safe, bounded alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"

KeyName = Annotated[str, Meta(pattern=NAME_PATTERN)]
Digest = Annotated[str, Meta(pattern=_DIGEST_PATTERN)]
PerMinute = Annotated[int, Meta(ge=1)]
KeyStatus = Literal["active", "revoked", "expired"]


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What a store keeps about one key. The key itself is never stored."""

    name: KeyName
    digest: Digest
    created: datetime
    expires: datetime | None = None
    revoked: datetime | None = None
    #: Requests per minute; ``None``: unlimited.
    rpm: PerMinute | None = None
    #: Scored input tokens per minute; ``None``: unlimited.
    tpm: PerMinute | None = None

    def status(self, now: datetime | None = None) -> KeyStatus:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest_of(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


_RELATIVE = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_expires(text: str, *, now: datetime | None = None) -> datetime:
    """``2027-01-31`` (midnight UTC that day), an ISO date-time (UTC unless it names a zone),
    or a duration from now: ``12h``, ``30d``, ``8w``."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if m := _RELATIVE.match(text):
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a date, a date-time or a duration like 30d") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
