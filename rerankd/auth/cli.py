"""``rerankd keys create|list|update|revoke|usage``: manage keys in the keys file or in Redis."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

from rerankd.auth.gate import open_store
from rerankd.auth.keys import NAME_PATTERN, KeyRecord, digest_of, generate_key, parse_expires
from rerankd.auth.limits import KeyUsage, ModelDayUsage, RedisLimiter
from rerankd.auth.store import KeyStore
from rerankd.config import Settings, load_settings
from rerankd.errors import ConfigError, RerankdError
from rerankd.flags import add_option, env_help, option

__all__ = ["add_parser", "run"]


def _per_minute(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _name(text: str) -> str:
    if not re.match(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def add_parser(sub: Any) -> None:
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--config", help="settings file (.toml, .yaml or .json); env RERANKD_CONFIG")
    # The server's own settings, flags and env names: the keys commands must find the same store.
    for field, what in (
        ("keys_file", "JSON keys file"),
        ("redis_url", "Redis for keys (without a keys file) and usage"),
        ("redis_prefix", "prefix of the deployment's names in Redis"),
    ):
        opt = option(field)
        add_option(store, opt, help=env_help(what, opt.env, opt.shown_default))
    keys = sub.add_parser(
        "keys",
        help="manage API keys",
        description="Manage API keys in the keys file (--keys-file) or else in Redis (--redis-url).",
    )
    cmds = keys.add_subparsers(dest="keys_command", required=True)
    create = cmds.add_parser("create", parents=[store], help="create a key and print it (only this once)")
    create.add_argument("--name", required=True, type=_name, help="a unique name; logs and usage show it")
    create.add_argument("--rpm", type=_per_minute, help="requests per minute (default: unlimited)")
    create.add_argument("--tpm", type=_per_minute, help="scored input tokens per minute (default: unlimited)")
    create.add_argument(
        "--expires", help="YYYY-MM-DD (midnight UTC), an ISO date-time, or a duration: 12h, 30d, 8w"
    )
    listing = cmds.add_parser("list", parents=[store], help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    update = cmds.add_parser(
        "update", parents=[store], help="change a key's limits; servers apply them within seconds"
    )
    update.add_argument("name")
    for limit, what in (("rpm", "requests"), ("tpm", "scored input tokens")):
        group = update.add_mutually_exclusive_group()
        group.add_argument(f"--{limit}", type=_per_minute, help=f"new limit of {what} per minute")
        group.add_argument(
            f"--no-{limit}", dest=limit, action="store_const", const=0, help=f"no limit of {what}"
        )
    revoke = cmds.add_parser("revoke", parents=[store], help="revoke a key; servers drop it within seconds")
    revoke.add_argument("name")
    usage = cmds.add_parser(
        "usage", parents=[store], help="requests, search units and tokens of a key (Redis)"
    )
    usage.add_argument("name", nargs="?", help="one key (default: every key)")
    usage.add_argument("--json", action="store_true", help="JSON instead of text")
    usage.add_argument(
        "--by",
        choices=["model", "day"],
        help="split scored requests, units and tokens by model or by day (UTC)",
    )


def run(ns: argparse.Namespace) -> int:
    """Run a ``keys`` command; errors become one line on stderr and exit status 1."""
    flags = {"config": ns.config, "keys_file": ns.keys_file, "redis_url": ns.redis_url}
    flags["redis_prefix"] = ns.redis_prefix
    settings = load_settings(flags)
    try:
        return asyncio.run(_run(ns, settings))
    except ConfigError:
        raise
    except RerankdError as exc:
        print(f"rerankd: {exc.detail}", file=sys.stderr)
        return 1


def _when(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _limit(n: int | None) -> str:
    return "-" if n is None else str(n)


async def _run(ns: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    if store is None:
        raise ConfigError(
            "no key store: give --keys-file or --redis-url (or RERANKD_KEYS_FILE, RERANKD_REDIS_URL)"
        )
    async with store:
        command = ns.keys_command
        if command == "create":
            return await _create(ns, store)
        if command == "list":
            return _list(await store.records(), as_json=ns.json)
        if command == "update":
            return await _update(ns, store)
        if command == "revoke":
            record = await store.revoke(ns.name)
            print(
                f"revoked key {record.name!r} ({_when(record.revoked)}) in {store.description}",
                file=sys.stderr,
            )
            return 0
        return await _usage(ns, settings, store)


async def _create(ns: argparse.Namespace, store: KeyStore) -> int:
    now = datetime.now(UTC)
    expires = None
    if ns.expires:
        try:
            expires = parse_expires(ns.expires, now=now)
        except ValueError as exc:
            raise ConfigError(f"--expires: {exc}") from None
        if expires <= now:
            raise ConfigError(f"--expires: {_when(expires)} is in the past")
    key = generate_key()
    record = KeyRecord(
        name=ns.name, digest=digest_of(key), created=now, expires=expires, rpm=ns.rpm, tpm=ns.tpm
    )
    await store.create(record)
    # The key alone on stdout, so `KEY=$(rerankd keys create ...)` works; the rest on stderr.
    print(key)
    print(
        f"created key {record.name!r} in {store.description}: rpm {_limit(record.rpm)}, "
        f"tpm {_limit(record.tpm)}, expires {_when(record.expires)}. "
        "The key is shown only now; only its hash is stored.",
        file=sys.stderr,
    )
    return 0


async def _update(ns: argparse.Namespace, store: KeyStore) -> int:
    # 0 stands for --no-rpm / --no-tpm (a limit is at least 1); None: the flag was not given.
    changes = {k: (v or None) for k in ("rpm", "tpm") if (v := getattr(ns, k)) is not None}
    if not changes:
        raise ConfigError("keys update: give --rpm, --tpm, --no-rpm or --no-tpm")
    record = await store.update(ns.name, changes)
    print(
        f"updated key {record.name!r} in {store.description}: rpm {_limit(record.rpm)}, "
        f"tpm {_limit(record.tpm)}; servers apply it within seconds",
        file=sys.stderr,
    )
    return 0


class _Listed(msgspec.Struct):
    name: str
    status: str
    created: datetime
    expires: datetime | None
    revoked: datetime | None
    rpm: int | None
    tpm: int | None


def _list(records: list[KeyRecord], *, as_json: bool) -> int:
    now = datetime.now(UTC)
    rows = [
        _Listed(r.name, r.status(now), r.created, r.expires, r.revoked, r.rpm, r.tpm)
        for r in sorted(records, key=lambda r: r.name)
    ]
    if as_json:
        print(msgspec.json.encode(rows).decode())
        return 0
    table = [("NAME", "STATUS", "CREATED", "EXPIRES", "RPM", "TPM")]
    table += [
        (r.name, r.status, _when(r.created), _when(r.expires), _limit(r.rpm), _limit(r.tpm)) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _usage(ns: argparse.Namespace, settings: Settings, store: KeyStore) -> int:
    if not settings.redis_url:
        raise ConfigError("usage is counted in Redis: give --redis-url (or RERANKD_REDIS_URL)")
    if ns.name is not None:
        if await store.get(ns.name) is None:
            print(f"rerankd: no key named {ns.name!r} in {store.description}", file=sys.stderr)
            return 1
        names = [ns.name]
    else:
        names = sorted(r.name for r in await store.records())
    limiter = RedisLimiter(settings.redis_url, prefix=settings.redis_prefix)
    try:
        if ns.by is not None:
            split = {name: _split_by(await limiter.usage_split(name), ns.by) for name in names}
        else:
            usage = {name: await limiter.usage(name) for name in names}
    finally:
        await limiter.close()
    if ns.by is not None:
        return _print_split(split, ns)
    if ns.json:
        print(msgspec.json.encode(usage if ns.name is None else usage[ns.name]).decode())
        return 0
    for name, u in usage.items():
        print(_usage_line(name, u))
    return 0


class _SplitRow(msgspec.Struct):
    #: The model's name, or the day as YYYY-MM-DD.
    key: str
    requests: int
    search_units: int
    tokens: int


def _split_by(rows: list[ModelDayUsage], by: str) -> list[_SplitRow]:
    totals: dict[str, list[int]] = {}
    for r in rows:
        t = totals.setdefault(r.model if by == "model" else r.day.isoformat(), [0, 0, 0])
        t[0] += r.requests
        t[1] += r.search_units
        t[2] += r.tokens
    return [_SplitRow(k, *t) for k, t in sorted(totals.items())]


def _print_split(split: dict[str, list[_SplitRow]], ns: argparse.Namespace) -> int:
    if ns.json:
        data = [
            {"name": n, ns.by: r.key, **msgspec.structs.asdict(r)} for n, rows in split.items() for r in rows
        ]
        for d in data:
            del d["key"]
        print(msgspec.json.encode(data).decode())
        return 0
    for name, rows in split.items():
        for r in rows:
            print(
                f"{name} {ns.by} {r.key}: requests {r.requests}, search_units {r.search_units}, "
                f"tokens {r.tokens}"
            )
    return 0


def _usage_line(name: str, u: KeyUsage) -> str:
    return (
        f"{name}: requests {u.requests}, search_units {u.search_units}, tokens {u.tokens}, "
        f"rate_limited {u.rate_limited}, last_used {_when(u.last_used)}"
    )
