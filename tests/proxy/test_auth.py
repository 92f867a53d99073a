"""API keys against a real ``rerankd serve`` with its keys, limits and usage in a private Redis."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cohere
import httpx
import msgspec
import pytest
from cohere.errors import UnauthorizedError

from rerankd.adapters.loader import EMBEDDED_MODEL_NAME as MODEL
from rerankd.auth.keys import KeyRecord, digest_of, generate_key
from rerankd.auth.store import RedisKeyStore
from tests.proxy.auth_helpers import (
    ROUTES,
    SCORE_BODY,
    assert_error_body,
    call,
    eventually,
    keys_cli,
    new_key,
)
from tests.servers import RedisServer, RerankdServer, free_port, redis_server, rerankd_server

MAX_BODY = 200_000


@dataclass
class Keys:
    valid: str
    revoked: str
    expired: str
    metered: str


@dataclass
class Keyed:
    server: RerankdServer
    redis: RedisServer
    keys: Keys

    @property
    def store(self) -> tuple[str, str]:
        return ("--redis-url", self.redis.url)


@pytest.fixture(scope="module")
def keyed_redis() -> Iterator[RedisServer]:
    with redis_server() as redis:
        yield redis


@pytest.fixture(scope="module")
async def keyed_keys(keyed_redis: RedisServer) -> Keys:
    store = ("--redis-url", keyed_redis.url)
    valid, revoked, metered = (new_key(n, *store) for n in ("valid", "revoked", "metered"))
    keys_cli("revoke", "revoked", *store)
    # The CLI refuses past dates, so the expired key goes straight into the store.
    expired = generate_key()
    async with RedisKeyStore(keyed_redis.url) as s:
        created = datetime.now(UTC) - timedelta(days=2)
        await s.create(
            KeyRecord(
                name="expired",
                digest=digest_of(expired),
                created=created,
                expires=created + timedelta(days=1),
            )
        )
    return Keys(valid=valid, revoked=revoked, expired=expired, metered=metered)


@pytest.fixture(scope="module")
def keyed(keyed_redis: RedisServer, keyed_keys: Keys) -> Iterator[Keyed]:
    args = ["--redis-url", keyed_redis.url, "--log-level", "debug", "--max-body-bytes", str(MAX_BODY)]
    args += ["--max-documents", "20", "--max-query-chars", "500"]
    with rerankd_server(args) as server:
        yield Keyed(server, keyed_redis, keyed_keys)


@pytest.fixture
def client(keyed: Keyed) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.server.url, timeout=60) as c:
        yield c


CASES = {
    "no header": (None, "missing API key"),
    "malformed: basic": ("Basic dXNlcjpwYXNz", "malformed"),
    "malformed: bare scheme": ("Bearer", "malformed"),
    "malformed: two tokens": ("Bearer rk-a rk-b", "malformed"),
    "unknown key": ("Bearer {unknown}", "invalid API key"),
    "revoked key": ("Bearer {revoked}", "'revoked' is revoked"),
    "expired key": ("Bearer {expired}", "'expired' is expired"),
}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("case", list(CASES))
def test_guarded_routes_refuse_without_a_valid_key(
    client: httpx.Client, keyed: Keyed, method: str, path: str, case: str
) -> None:
    template, expected = CASES[case]
    headers = {}
    if template is not None:
        headers["Authorization"] = template.format(
            unknown=generate_key(), revoked=keyed.keys.revoked, expired=keyed.keys.expired
        )
    r = client.request(method, path, headers=headers, json=SCORE_BODY if method == "POST" else None)
    body = assert_error_body(r, 401)
    assert expected in body["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_valid_key_passes(client: httpx.Client, keyed: Keyed, method: str, path: str) -> None:
    r = call(client, method, path, keyed.keys.valid)
    assert r.status_code == 200, r.text
    if method == "POST":
        assert r.json()["results"][0]["index"] == 0


def test_the_scheme_is_case_insensitive(client: httpx.Client, keyed: Keyed) -> None:
    r = client.get("/v1/models", headers={"Authorization": f"bearer {keyed.keys.valid}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/health", "/ready", "/docs/openapi.json", "/docs/assets/swagger-ui.css"])
def test_probes_and_the_api_description_are_open(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_a_key_created_while_running_works_within_seconds_and_revoking_stops_it(
    client: httpx.Client, keyed: Keyed
) -> None:
    key = new_key("late", *keyed.store)
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 200, 10, "the new key works")
    keys_cli("revoke", "late", *keyed.store)
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 401, 10, "the revoked key fails")
    assert "'late' is revoked" in call(client, "POST", "/v2/rerank", key).json()["detail"]


def test_requests_per_minute_give_429_with_retry_after_then_recover(
    client: httpx.Client, keyed: Keyed
) -> None:
    key = new_key("limited", *keyed.store, limits=("--rpm", "120"))
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 200, 10, "the new key works")
    for _ in range(1000):
        r = call(client, "GET", "/v1/models", key)
        if r.status_code != 200:
            break
    body = assert_error_body(r, 429)
    assert "'limited' is over its rate limit (120 requests per minute)" in body["detail"]
    retry_after = int(r.headers["retry-after"])
    assert retry_after == 1  # one request comes back every 0.5 s
    time.sleep(retry_after)
    assert call(client, "GET", "/v1/models", key).status_code == 200
    usage = msgspec.json.decode(keys_cli("usage", "limited", "--json", *keyed.store).stdout)
    assert usage["rate_limited"] >= 1
    assert usage["requests"] >= 120


def test_tokens_per_minute_reserve_a_bound_then_settle(client: httpx.Client, keyed: Keyed) -> None:
    tokens = call(client, "POST", "/v2/rerank", keyed.keys.valid).json()["meta"]["tokens"]["input_tokens"]
    assert tokens > 10
    # One and a half requests' worth. A request reserves more than it scores (its bound counts
    # bytes) and more than this bucket holds, so it runs only on a full bucket: the first passes
    # and gives back what it did not use; the second does not fit what is left.
    tpm = tokens * 3 // 2
    key = new_key("tokens", *keyed.store, limits=("--tpm", str(tpm)))
    eventually(lambda: call(client, "POST", "/v2/rerank", key).status_code == 200, 10, "the new key works")
    r = call(client, "POST", "/v2/rerank", key)
    body = assert_error_body(r, 429)
    assert "tokens per minute" in body["detail"]
    # Until the bucket is full again: it holds tpm - tokens after the first request.
    longest = tokens * 60 / tpm
    assert longest - 10 <= int(r.headers["retry-after"]) <= math.ceil(longest)
    usage = msgspec.json.decode(keys_cli("usage", "tokens", "--json", *keyed.store).stdout)
    assert (usage["tokens"], usage["requests"], usage["rate_limited"]) == (tokens, 1, 1)


def test_usage_counts_requests_search_units_and_tokens(client: httpx.Client, keyed: Keyed) -> None:
    key = keyed.keys.metered
    tokens = units = 0
    for path in ("/v1/rerank", "/v2/rerank"):
        meta = call(client, "POST", path, key).json()["meta"]
        tokens += meta["tokens"]["input_tokens"]
        units += meta["billed_units"]["search_units"]
    jina = call(client, "POST", "/rerank", key).json()
    tokens += jina["usage"]["total_tokens"]
    units += 1
    assert call(client, "GET", "/v1/models", key).status_code == 200
    assert call(client, "POST", "/v2/rerank", key, body={"query": "", "documents": ["a"]}).status_code == 400
    usage = msgspec.json.decode(keys_cli("usage", "metered", "--json", *keyed.store).stdout)
    assert usage["requests"] == 5  # every request let through, whatever its outcome
    assert (usage["tokens"], usage["search_units"], usage["rate_limited"]) == (tokens, units, 0)
    text = keys_cli("usage", "metered", *keyed.store).stdout
    assert text.startswith(f"metered: requests 5, search_units {units}, tokens {tokens}, rate_limited 0")


def test_a_running_server_enforces_a_key_s_new_limit(client: httpx.Client, keyed: Keyed) -> None:
    key = new_key("retuned", *keyed.store)
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 200, 10, "the new key works")
    for _ in range(5):
        assert call(client, "GET", "/v1/models", key).status_code == 200  # no limit yet
    done = keys_cli("update", "retuned", "--rpm", "2", *keyed.store)
    assert "updated key 'retuned'" in done.stderr
    assert "rpm 2" in done.stderr

    def refused() -> bool:
        return call(client, "GET", "/v1/models", key).status_code == 429

    eventually(refused, 15, "the new limit is enforced")
    r = call(client, "GET", "/v1/models", key)
    assert "'retuned' is over its rate limit (2 requests per minute)" in assert_error_body(r, 429)["detail"]
    keys_cli("update", "retuned", "--no-rpm", *keyed.store)
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 200, 15, "the limit is gone")
    listed = {k["name"]: k for k in json.loads(keys_cli("list", "--json", *keyed.store).stdout)}
    assert listed["retuned"]["rpm"] is None


def test_usage_by_model_and_by_day(client: httpx.Client, keyed: Keyed) -> None:
    key = new_key("split", *keyed.store)
    eventually(lambda: call(client, "GET", "/v1/models", key).status_code == 200, 10, "the new key works")
    tokens = sum(
        call(client, "POST", "/v2/rerank", key).json()["meta"]["tokens"]["input_tokens"] for _ in "ab"
    )
    by_model = json.loads(keys_cli("usage", "split", "--by", "model", "--json", *keyed.store).stdout)
    assert by_model == [{"name": "split", "model": MODEL, "requests": 2, "search_units": 2, "tokens": tokens}]
    by_day = json.loads(keys_cli("usage", "split", "--by", "day", "--json", *keyed.store).stdout)
    today = datetime.now(UTC).date().isoformat()
    assert by_day == [{"name": "split", "day": today, "requests": 2, "search_units": 2, "tokens": tokens}]
    text = keys_cli("usage", "split", "--by", "model", *keyed.store).stdout
    assert text == f"split model {MODEL}: requests 2, search_units 2, tokens {tokens}\n"
    # The totals, as before: the /v1/models calls count as requests, not in the split.
    totals = json.loads(keys_cli("usage", "split", "--json", *keyed.store).stdout)
    assert (totals["requests"], totals["tokens"]) == (3, tokens)


def test_keys_list_shows_status_and_never_a_key(keyed: Keyed) -> None:
    out = keys_cli("list", *keyed.store).stdout
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert lines["valid"] == "active"
    assert lines["revoked"] == "revoked"
    assert lines["expired"] == "expired"
    for key in (keyed.keys.valid, keyed.keys.metered):
        assert key not in out
        assert key[3:] not in out


def test_the_server_log_names_keys_but_never_shows_one(client: httpx.Client, keyed: Keyed) -> None:
    keys = keyed.keys
    unknown = generate_key()
    for key in (keys.valid, keys.revoked, keys.expired, unknown):
        call(client, "POST", "/v2/rerank", key)
    client.get("/v1/models", headers={"Authorization": f"Basic {unknown}"})
    client.get("/v1/models", headers={"Authorization": f"Bearer {unknown} extra"})
    time.sleep(0.5)  # let the server flush its log lines
    log = keyed.server.log()
    assert "key valid" in log
    assert "'revoked' is revoked" in log
    assert "(key -)" in log
    for key in (keys.valid, keys.revoked, keys.expired, keys.metered, unknown):
        assert key[3:] not in log


def test_an_oversized_body_gets_413_after_the_key_check(client: httpx.Client, keyed: Keyed) -> None:
    big = {"query": "q", "documents": ["x" * 1000] * (MAX_BODY // 1000 + 10)}
    assert_error_body(call(client, "POST", "/v2/rerank", keyed.keys.valid, body=big), 413)
    assert_error_body(call(client, "POST", "/v2/rerank", None, body=big), 401)


def test_global_limits_on_documents_and_query_length(client: httpx.Client, keyed: Keyed) -> None:
    many = {"query": "q", "documents": ["doc"] * 21}
    body = assert_error_body(call(client, "POST", "/v1/rerank", keyed.keys.valid, body=many), 400)
    assert "too many documents: 21; at most 20" in body["message"]
    long = {"query": "q" * 501, "documents": ["doc"]}
    body = assert_error_body(call(client, "POST", "/rerank", keyed.keys.valid, body=long), 400)
    assert "query too long: 501 characters; at most 500" in body["message"]


# -- start-up rules and the keys file ----------------------------------------------------------


def serve_briefly(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rerankd", "serve", "--port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_refuses_to_start_on_all_interfaces_without_keys(tmp_path: Path) -> None:
    done = serve_briefly("--host", "0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "rerankd: refusing to serve on 0.0.0.0 without API keys: create one with `rerankd keys create` "
        "(and give --keys-file or --redis-url), or pass --no-auth to serve without keys"
    ]
    empty = tmp_path / "keys.json"
    empty.write_text('{"keys": []}')
    done = serve_briefly("--host", "0.0.0.0", "--keys-file", str(empty))
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0" in done.stderr
    done = serve_briefly("--keys-file", str(tmp_path / "missing.json"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_keys_file_server_on_all_interfaces_follows_file_changes(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    first = new_key("first", "--keys-file", path)
    with (
        rerankd_server(["--host", "0.0.0.0", "--keys-file", path]) as server,
        httpx.Client(base_url=server.url, timeout=60) as c,
    ):
        assert_error_body(call(c, "POST", "/v2/rerank"), 401)
        assert call(c, "POST", "/v2/rerank", first).status_code == 200
        second = new_key("second", "--keys-file", path, limits=("--rpm", "2"))
        eventually(lambda: call(c, "GET", "/v1/models", second).status_code == 200, 10, "the new key works")
        assert call(c, "GET", "/v1/models", second).status_code == 200
        # Without Redis the limits hold in the process.
        assert_error_body(call(c, "GET", "/v1/models", second), 429)
        keys_cli("revoke", "first", "--keys-file", path)
        eventually(
            lambda: call(c, "POST", "/v2/rerank", first).status_code == 401, 10, "the revoked key fails"
        )


def test_the_cohere_sdk_sends_its_api_key_as_the_bearer_key(keyed: Keyed) -> None:
    docs = ["Berlin is the capital of Germany.", "Paris is the capital of France."]
    co = cohere.ClientV2(api_key=keyed.keys.valid, base_url=keyed.server.url)
    result = co.rerank(model="all-MiniLM-L6-v2", query="capital of France?", documents=docs)
    assert result.results[0].index == 1
    wrong = cohere.ClientV2(api_key="unused", base_url=keyed.server.url)
    with pytest.raises(UnauthorizedError) as info:
        wrong.rerank(model="all-MiniLM-L6-v2", query="capital of France?", documents=docs)
    assert info.value.body["detail"] == "invalid API key"
