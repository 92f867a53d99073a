"""Settings: sources, precedence and validation messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerankd.config import ModelConfig, Settings, load_settings, parse_model_spec
from rerankd.errors import ConfigError


def test_defaults() -> None:
    s = load_settings({}, env={})
    assert (s.host, s.port, s.models, s.engine, s.device) == ("127.0.0.1", 8080, (), "auto", "auto")
    assert s.max_documents == 10_000


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "rerankd.toml"
    f.write_text(
        'port = 9000\nhost = "0.0.0.0"\nmax_documents = 7\n'
        '[aliases]\nx = "m"\n[[models]]\nname = "m"\npath = "/p"\n'
    )
    env = {"RERANKD_PORT": "9100", "RERANKD_CONFIG": str(f), "RERANKD_MAX_BATCH_TOKENS": "512"}
    s = load_settings({"port": 9200}, env=env)
    assert s.port == 9200  # flag beats env beats file
    assert s.host == "0.0.0.0"  # from the file
    assert s.max_batch_tokens == 512  # from the env, converted
    assert s.models == (ModelConfig(name="m", path="/p"),)
    assert s.aliases == {"x": "m"}
    assert load_settings({}, env=env).port == 9100


def test_yaml_and_json_files(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(
        "models:\n  - qwen=/models/qwen\n  - name: ce\n    path: /models/ce\n    format: cross-encoder\n"
    )
    s = load_settings({"config": str(y)}, env={})
    assert [m.name for m in s.models] == ["qwen", "ce"]
    assert s.models[1].format == "cross-encoder"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"device": "cpu", "log_level": "debug"}))
    assert load_settings({"config": str(j)}, env={}).device == "cpu"


def test_env_lists_and_maps() -> None:
    env = {"RERANKD_MODEL": "a=/x,/models/b", "RERANKD_ALIASES": "rerank-english-v3.0=a, other=b"}
    s = load_settings({}, env=env)
    assert [(m.name, m.path) for m in s.models] == [("a", "/x"), ("b", "/models/b")]
    assert s.aliases == {"rerank-english-v3.0": "a", "other": "b"}


@pytest.mark.parametrize(
    ("spec", "name", "path"),
    [
        ("qwen=Qwen/Qwen3-Reranker-0.6B", "qwen", "Qwen/Qwen3-Reranker-0.6B"),
        ("Qwen/Qwen3-Reranker-0.6B", "Qwen3-Reranker-0.6B", "Qwen/Qwen3-Reranker-0.6B"),
        ("/models/bge/", "bge", "/models/bge/"),
        ("/odd/path=with-equals", "path=with-equals", "/odd/path=with-equals"),
    ],
)
def test_model_specs(spec: str, name: str, path: str) -> None:
    assert parse_model_spec(spec) == {"name": name, "path": path}


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        ({"port": 70000}, {}, "port"),
        ({}, {"RERANKD_PORT": "eighty"}, "port"),
        ({"device": "gpu"}, {}, "device"),
        ({"engine": "magic"}, {}, "engine"),
        ({"max_documents": 0}, {}, "max_documents"),
        ({"models": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}, {}, "unique"),
        ({"models": [{"name": "a", "path": "/x"}], "aliases": {"b": "c"}}, {}, "alias"),
        ({"models": [{"name": "a", "path": "/x", "colour": "red"}]}, {}, "colour"),
        ({"config": "/nonexistent/rerankd.toml"}, {}, "cannot read"),
    ],
)
def test_invalid_settings_name_the_key(flags: dict[str, object], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(flags, env=env)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
