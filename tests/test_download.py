"""Hub models over a local fake hub: ``rerankd download`` fills a cache that an offline server
starts from; ``rerankd serve`` with a hub id binds first, answers 503 while it downloads and logs
its progress as JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.fake_hub import FakeHub, fake_hub
from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder
from tests.servers import rerankd_server, wait_for

REPO = "acme/tiny-rerank"


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_cross_encoder(tmp_path_factory.mktemp("hub-repo"))
    # A file larger than huggingface_hub's 10 MiB read chunk, so a slowed download shows progress
    # lines part-way through (``*.txt`` files are among those fetched).
    (folder / "padding.txt").write_bytes(os.urandom(24 * 1024 * 1024))
    return folder


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[FakeHub]:
    with fake_hub({REPO: repo_dir}) as h:
        yield h


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log, parsed; fails on any line that is not one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _hub_env(hub: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "RERANKD_LOG_FORMAT": "json"}


def test_download_fills_the_cache_an_offline_server_starts_from(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "models"
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "download", REPO, "--cache-dir", str(cache)],
        env={**os.environ, **_hub_env(hub)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    repo, folder = out.stdout.strip().split("\t")
    assert repo == REPO
    assert Path(folder).is_relative_to(cache)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in Path(folder).iterdir()}
    done = {
        e["file"] for e in _json_lines(out.stderr) if e.get("event") == "download" and e["phase"] == "done"
    }
    assert {"config.json", "model.safetensors", "padding.txt"} <= done

    fetched = len(hub.requests)
    env = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.url}
    with rerankd_server(["--model", f"tiny={REPO}", "--model-cache-dir", str(cache)], env=env) as srv:
        r = httpx.post(srv.url + "/v2/rerank", json={"model": "tiny", "query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 2
    assert len(hub.requests) == fetched  # offline: the hub was not asked again


def test_download_of_an_unknown_repo_exits_1_with_one_line(hub: FakeHub, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "download", "acme/missing", "--cache-dir", str(tmp_path)],
        env={**os.environ, **_hub_env(hub)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("rerankd:")]
    assert len(errors) == 1
    assert "cannot download acme/missing" in errors[0]


def test_serve_binds_first_and_logs_download_progress(hub: FakeHub, tmp_path: Path) -> None:
    hub.seconds_per_mib = 0.3  # about 10 s for the repository: long enough to watch
    args = ["--model", f"tiny={REPO}", "--model-cache-dir", str(tmp_path / "models")]
    with rerankd_server(args, env=_hub_env(hub), wait_ready=False, timeout=180) as srv:
        # /health answered (rerankd_server waited for it) while the weights are still on the way.
        ready = httpx.get(srv.url + "/ready")
        assert ready.status_code == 503
        assert ready.headers["retry-after"]
        early = httpx.post(
            srv.url + "/v2/rerank",
            json={"model": "tiny", "query": "q", "documents": ["a", "b"]},
            headers={"X-Request-ID": "while-downloading"},
        )
        assert early.status_code == 503, early.text
        assert int(early.headers["retry-after"]) >= 1
        assert early.json()["message"]
        wait_for(lambda: httpx.get(srv.url + "/ready").status_code == 200, 180, "ready after download")
        r = httpx.post(srv.url + "/v2/rerank", json={"model": "tiny", "query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200, r.text
        time.sleep(0.2)  # the request line is written as the response goes out
        text = srv.log()
    assert "\r" not in text
    assert "%|" not in text
    events = _json_lines(text)  # every line one JSON object
    downloads = [e for e in events if e.get("event") == "download"]
    padding = [e for e in downloads if e.get("file") == "padding.txt"]
    assert padding[0]["phase"] == "start"
    assert padding[-1]["phase"] == "done"
    assert padding[-1]["bytes"] == padding[-1]["total"] == 24 * 1024 * 1024
    assert any(0 < e["bytes"] < e["total"] for e in padding if e["phase"] == "progress")
    # The server was up before the download ended, and the early 503 is logged once.
    started = next(i for i, e in enumerate(events) if "Uvicorn running" in e["msg"])
    assert started < events.index(padding[-1])
    early_lines = [e for e in events if "while-downloading" in json.dumps(e)]
    assert len(early_lines) == 1
    assert early_lines[0]["status"] == 503
    assert early_lines[0]["error"]


def test_serve_of_a_missing_repo_exits_1_with_one_line(hub: FakeHub) -> None:
    cmd = [sys.executable, "-m", "rerankd", "serve", "--port", "0", "--model", "acme/missing"]
    env = {**os.environ, **_hub_env(hub)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    reasons = [line for line in out.stderr.splitlines() if line.startswith("rerankd: cannot start")]
    assert len(reasons) == 1
    assert "cannot download 'acme/missing'" in reasons[0]
