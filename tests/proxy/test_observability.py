"""Metrics, request logs and keys against a real ``rerankd serve`` with a keys file and a private Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proxy.auth_helpers import eventually, new_key
from tests.servers import RedisServer, RerankdServer, redis_server, rerankd_server

MODEL = "all-MiniLM-L6-v2"
#: Distinctive texts: none of them may ever show up in the log.
SECRET_QUERY = "zebra-quokka-query-7731"
SECRET_DOCS = ["marmoset-doc-4410 about the capital", "okapi-doc-9902 about bananas"]


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``, keyed by name and labels."""
    r = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none match)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class Observed:
    server: RerankdServer
    redis: RedisServer
    key: str
    limited: str

    def post(self, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.post(self.server.url + "/v2/rerank", json=body, headers={**auth, **headers}, timeout=60)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.server.log().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.json"
    key = new_key("obs-client", "--keys-file", str(keys_file))
    limited = new_key("obs-limited", "--keys-file", str(keys_file), limits=("--rpm", "1"))
    with redis_server() as redis:
        args = ["--keys-file", str(keys_file), "--redis-url", redis.url, "--log-format", "json"]
        with rerankd_server(args) as server:
            yield Observed(server, redis, key, limited)


def test_metrics_are_open_and_describe_the_server(observed: Observed) -> None:
    samples = scrape(observed.server.url)  # no key: /metrics is open unless metrics_auth is set
    assert value(samples, "rerankd_ready") == 1
    assert value(samples, "rerankd_engine_healthy", model=MODEL) == 1
    assert value(samples, "rerankd_engine_info", model=MODEL, engine="onnx:float32") == 1  # the CPU default
    for family in ("rerankd_queue_depth", "rerankd_cache_write_pending"):
        assert any(n == family for n, _ in samples), family


def test_request_families_move(observed: Observed) -> None:
    url = observed.server.url
    before = scrape(url)
    body = {"query": "capital of France?", "documents": ["Paris is the capital.", "Bananas.", "Berlin."]}
    assert observed.post(body).status_code == 200
    after = scrape(url)

    def moved(name: str, by: float | None = None, /, **labels: str) -> None:
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta > 0 if by is None else delta == by, (name, labels, delta)

    ok = {"route": "/v2/rerank", "model": MODEL, "status": "200"}
    moved("rerankd_requests_total", 1, **ok)
    moved("rerankd_request_duration_seconds_count", 1, **ok)
    moved("rerankd_request_duration_seconds_sum", **ok)
    moved("rerankd_documents_total", 3, model=MODEL)
    moved("rerankd_input_tokens_total", model=MODEL)
    moved("rerankd_engine_batches_total", model=MODEL)
    moved("rerankd_engine_sequences_total", model=MODEL)
    moved("rerankd_engine_tokens_total", model=MODEL, kind="real")
    moved("rerankd_engine_tokens_total", model=MODEL, kind="padded")
    moved("rerankd_engine_busy_seconds_total", model=MODEL)
    moved("rerankd_batch_size_count", model=MODEL)
    moved("rerankd_batch_size_bucket", model=MODEL, le="+Inf")
    moved("rerankd_queue_wait_seconds_count", model=MODEL)
    moved("rerankd_cache_misses_total", 3)


def test_errors_are_labelled_by_status_and_route_template(observed: Observed) -> None:
    url = observed.server.url
    before = scrape(url)
    bad = observed.post({"query": "q", "documents": []})
    assert bad.status_code == 400
    unknown = observed.post({"query": "q", "documents": ["d"], "model": "no-such-model"})
    assert unknown.status_code == 404
    assert httpx.get(url + "/no/such/path/123", timeout=10).status_code == 404
    after = scrape(url)
    for labels in (
        {"route": "/v2/rerank", "model": MODEL, "status": "400"},
        {"route": "/v2/rerank", "model": "", "status": "404"},  # an unserved name is never a label
        {"route": "unmatched", "status": "404"},  # raw paths are never labels
    ):
        assert (
            value(after, "rerankd_requests_total", **labels)
            - value(before, "rerankd_requests_total", **labels)
            == 1
        ), labels
    assert not any("no-such-model" in str(ls) or "/no/such" in str(ls) for _, ls in after)


def test_cache_hits_move(observed: Observed) -> None:
    url = observed.server.url
    body = {"query": "a query for the cache test", "documents": ["first cached doc", "second cached doc"]}
    assert observed.post(body).status_code == 200
    before = value(scrape(url), "rerankd_cache_hits_total")

    def hit() -> bool:  # writes to Redis land behind the response
        return observed.post(body).headers["x-cache-hits"] == "2/2"

    eventually(hit, 10, "the pairs to be cached")
    assert value(scrape(url), "rerankd_cache_hits_total") - before >= 2


def test_auth_failures_and_rate_limits_move(observed: Observed) -> None:
    url = observed.server.url
    before = scrape(url)
    body = {"query": "q", "documents": ["d"]}
    assert observed.post(body, key="rk-not-a-real-key").status_code == 401
    statuses = [observed.post(body, key=observed.limited).status_code for _ in range(3)]
    assert 429 in statuses, statuses
    after = scrape(url)
    failures = "rerankd_auth_failures_total"
    assert value(after, failures, reason="invalid_key") - value(before, failures, reason="invalid_key") == 1
    assert value(after, "rerankd_rate_limited_total") - value(before, "rerankd_rate_limited_total") == (
        statuses.count(429)
    )


def test_request_log_line_has_fields_and_no_texts(observed: Observed) -> None:
    r = observed.post({"query": SECRET_QUERY, "documents": SECRET_DOCS}, **{"X-Request-ID": "obs-log-line-1"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "obs-log-line-1"

    def logged() -> list[dict[str, Any]]:
        return [ln for ln in observed.log_lines() if ln.get("request_id") == "obs-log-line-1"]

    eventually(lambda: bool(logged()), 5, "the request's log line")
    [line] = logged()
    assert line["logger"] == "rerankd.request"
    assert line["route"] == "/v2/rerank"
    assert line["model"] == MODEL
    assert line["key"] == "obs-client"
    assert line["documents"] == 2
    assert line["tokens"] == r.json()["meta"]["tokens"]["input_tokens"]
    assert line["cache_hits"] == 0
    assert line["status"] == 200
    assert line["latency_ms"] > 0
    text = observed.server.log()
    for secret in (SECRET_QUERY, *SECRET_DOCS, observed.key, observed.limited):
        assert secret not in text
    assert "uvicorn.access" not in text  # rerankd's line replaces uvicorn's access log


def test_refused_requests_are_logged_with_their_key_name(observed: Observed) -> None:
    r = observed.post({"query": "q", "documents": ["d"]}, key="rk-bogus", **{"X-Request-ID": "obs-refused-1"})
    assert r.status_code == 401
    eventually(
        lambda: any(
            ln.get("request_id") == "obs-refused-1" and ln.get("status") == 401 for ln in observed.log_lines()
        ),
        5,
        "the refused request's log line",
    )
    assert "rk-bogus" not in observed.server.log()


def test_cache_errors_move_when_redis_is_gone(observed: Observed) -> None:
    # Last in this module: it stops the Redis server.
    url = observed.server.url
    before = value(scrape(url), "rerankd_cache_errors_total", kind="store")
    observed.redis.stop()
    body = {"query": "after redis stopped", "documents": ["never seen before"]}
    assert observed.post(body).status_code == 200  # the cache degrades; scoring goes on
    assert value(scrape(url), "rerankd_cache_errors_total", kind="store") > before


def test_metrics_auth_guards_metrics(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = new_key("scraper", "--keys-file", str(keys_file))
    with rerankd_server(["--keys-file", str(keys_file), "--metrics-auth"]) as server:
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
        assert value(scrape(server.url, Authorization=f"Bearer {key}"), "rerankd_ready") == 1
