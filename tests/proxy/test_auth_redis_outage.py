"""Redis goes away under a running server: keys already loaded keep working, limits fail open."""

from __future__ import annotations

import time

import httpx
import msgspec

from rerankd.auth.keys import generate_key
from tests.proxy.auth_helpers import assert_error_body, call, eventually, keys_cli, new_key
from tests.servers import RedisServer, rerankd_server


def test_a_redis_outage_degrades_and_recovers(redis: RedisServer) -> None:
    store = ("--redis-url", redis.url)
    key = new_key("app", *store, limits=("--rpm", "1000"))
    with (
        rerankd_server([*store, "--log-level", "debug"]) as server,
        httpx.Client(base_url=server.url, timeout=60) as c,
    ):
        assert call(c, "POST", "/v2/rerank", key).status_code == 200
        redis.stop()
        # The keys stay as last loaded; limits and usage are skipped rather than failing requests.
        for _ in range(3):
            assert call(c, "POST", "/v2/rerank", key).status_code == 200
        assert_error_body(call(c, "POST", "/v2/rerank", generate_key()), 401)
        assert c.get("/ready").status_code == 200
        time.sleep(2.5)  # at least one poll of the store meets the outage
        assert call(c, "GET", "/v1/models", key).status_code == 200
        log = server.log()
        assert log.count("rate limits are not enforced") == 1
        assert log.count("keeping the keys last loaded") == 1

        # A fresh, empty Redis: the old key is gone with its data, a new one works within seconds.
        redis.start()
        fresh = new_key("fresh", *store)
        # Until the server has read the new key, the empty Redis leaves this loopback server open.
        eventually(lambda: call(c, "GET", "/v1/models", key).status_code == 401, 10, "keys of the new Redis")
        assert call(c, "GET", "/v1/models", fresh).status_code == 200

        # Limits and usage resume once the Redis breaker's next probe finds Redis back.
        def limits_back() -> bool:
            assert call(c, "GET", "/v1/models", fresh).status_code == 200  # admitted: probes the breaker
            return "rate limits and usage accounting are back" in server.log()

        eventually(limits_back, 15, "limits and usage back")
        tokens = call(c, "POST", "/v2/rerank", fresh).json()["meta"]["tokens"]["input_tokens"]
        usage = msgspec.json.decode(keys_cli("usage", "fresh", "--json", *store).stdout)
        assert usage["requests"] >= 1
        assert usage["tokens"] == tokens
        assert "rate limits and usage accounting are back" in server.log()
        assert server.process.poll() is None
