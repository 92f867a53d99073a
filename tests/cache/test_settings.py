"""Cache settings: every source fills them, bad ones stop start-up with a one-line reason."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rerankd.config import Settings, load_settings
from rerankd.errors import ConfigError

CACHE_KEYS = [k for k in Settings.__struct_fields__ if k == "redis_url" or k.startswith("cache")]


def test_env_and_flags_reach_the_cache_settings() -> None:
    env = {"RERANKD_CACHE": "false", "RERANKD_REDIS_URL": "rediss://:pw@cache:6380/1"}
    s = load_settings({"cache_ttl_s": 5, "cache_timeout_ms": 20.5}, env=env)
    assert (s.cache, s.redis_url, s.cache_ttl_s, s.cache_timeout_ms) == (
        False,
        "rediss://:pw@cache:6380/1",
        5,
        20.5,
    )
    defaults = load_settings(env={})
    assert defaults.cache
    assert defaults.redis_url is None
    assert defaults.cache_ttl_s == 7 * 24 * 3600
    assert defaults.cache_timeout_ms == 50


@pytest.mark.parametrize(
    "env",
    [
        {"RERANKD_REDIS_URL": "http://cache:6379"},
        {"RERANKD_CACHE_TTL_S": "0"},
        {"RERANKD_CACHE_TIMEOUT_MS": "-1"},
        {"RERANKD_CACHE_WRITE_QUEUE": "0"},
    ],
)
def test_bad_cache_settings_are_config_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env=env)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerankd", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_rejects_a_bad_redis_url_without_echoing_it() -> None:
    out = run("--redis-url", "ftp://user:secret@cache")
    assert out.returncode == 2
    assert "redis_url" in out.stderr
    assert "secret" not in out.stderr


def test_every_cache_setting_is_documented() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for key in CACHE_KEYS:
        flag = "--" + key.replace("_", "-")
        env = "RERANKD_" + key.upper()
        assert re.search(rf"\| `{key}` \| `{flag}`.* \| `{env}` \|", docs), key
