"""Redis URLs: one server, Sentinel and Cluster forms; what logs show of them; the prefix setting."""

from __future__ import annotations

import pytest

from rerankd.config import Settings, load_settings
from rerankd.errors import ConfigError
from rerankd.redisconn import RedisTarget, describe_url, parse_redis_url


def test_single_server_urls_stay_for_redis_py() -> None:
    for url in ("redis://h:6379/0", "rediss://u@h:6380/2", "unix:///run/redis.sock?db=1"):
        assert parse_redis_url(url) == RedisTarget("single", url)


def test_sentinel_url() -> None:
    t = parse_redis_url(
        "rediss+sentinel://app:p%40ss@s1:26379,s2,[::1]:26380/my-master/3?sentinel_password=x"
    )
    assert t.mode == "sentinel"
    assert t.tls
    assert t.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (t.master, t.db, t.username, t.password, t.sentinel_password) == (
        "my-master",
        3,
        "app",
        "p@ss",
        "x",
    )


def test_cluster_url() -> None:
    t = parse_redis_url("redis+cluster://:secret@n1:7000,n2:7001")
    assert (t.mode, t.tls, t.nodes, t.password, t.username) == (
        "cluster",
        False,
        (("n1", 7000), ("n2", 7001)),
        "secret",
        None,
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "names its master"),
        ("redis+cluster://n1:7000/2", "db 0"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://n1:port", "bad port"),
        ("memcached://h:11211", "unknown Redis URL scheme"),
    ],
)
def test_bad_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_redis_url(url)


def test_logged_urls_carry_no_password() -> None:
    assert describe_url("redis+cluster://:secret@n1:7000,n2:7001") == "redis+cluster://n1:7000,n2:7001"
    assert describe_url("redis+sentinel://u:pw@s1:26379/m/0?sentinel_password=pw") == (
        "redis+sentinel://s1:26379/m/0"
    )
    assert describe_url("redis://user:secret@cache:6380/2") == "redis://cache:6380/2"


def test_settings_take_the_new_schemes_and_a_prefix_without_braces() -> None:
    s = load_settings({"redis_url": "redis+cluster://n1:7000", "redis_prefix": "search-prod:"}, env={})
    assert s.redis_prefix == "search-prod:"
    assert Settings().redis_prefix == "rerankd:"
    with pytest.raises(ConfigError, match="redis_prefix"):
        load_settings({"redis_prefix": "tenant-{a}:"}, env={})
    with pytest.raises(ConfigError, match="redis_url"):
        load_settings({"redis_url": "redis+replica://n1"}, env={})


def test_a_bad_cluster_url_is_a_config_error_at_start_up() -> None:
    from rerankd.service import open_redis

    with pytest.raises(ConfigError, match="invalid redis_url"):
        open_redis(Settings(redis_url="redis+sentinel://s1:26379"))
