"""One-line keys: ``--api-key KEY`` (repeatable) and ``RERANKD_API_KEY[S]``, held as digests."""

from __future__ import annotations

import httpx
import pytest

from rerankd.config import load_settings
from rerankd.errors import ConfigError
from tests.servers import rerankd_server

BODY = {"query": "capital of France?", "documents": ["Paris", "Berlin"]}


def test_static_keys_from_flags_and_env_guard_the_scoring_routes() -> None:
    env = {"RERANKD_API_KEYS": "env-key-one,env-key-two"}
    with rerankd_server(["--api-key", "flag-key", "--host", "0.0.0.0"], env=env) as server:
        url = server.url + "/v2/rerank"
        assert httpx.post(url, json=BODY, timeout=60).status_code == 401
        wrong = httpx.post(url, json=BODY, headers={"Authorization": "Bearer nope"}, timeout=60)
        assert wrong.status_code == 401
        # Flags win over the environment, as for every setting.
        ok = httpx.post(url, json=BODY, headers={"Authorization": "Bearer flag-key"}, timeout=60)
        assert ok.status_code == 200, ok.text
        env_key = httpx.post(url, json=BODY, headers={"Authorization": "Bearer env-key-one"}, timeout=60)
        assert env_key.status_code == 401
        assert httpx.get(server.url + "/health").status_code == 200
        assert "flag-key" not in server.log()


def test_env_keys_alone() -> None:
    with rerankd_server([], env={"RERANKD_API_KEY": "only-key"}) as server:
        url = server.url + "/rerank"
        assert httpx.post(url, json=BODY, timeout=60).status_code == 401
        ok = httpx.post(url, json=BODY, headers={"Authorization": "Bearer only-key"}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert "only-key" not in server.log()


def test_static_keys_and_a_keys_file_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_settings({"api_keys": ["k"], "keys_file": "/tmp/keys.json"}, env={})
    with pytest.raises(ConfigError, match="api_keys"):
        load_settings({"api_keys": ["has space"]}, env={})
