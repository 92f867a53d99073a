"""Shared by the API-key tests: the ``rerankd keys`` command line and polling helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

__all__ = ["ROUTES", "SCORE_BODY", "assert_error_body", "call", "eventually", "keys_cli", "new_key"]

#: Every guarded route, with a request that succeeds there.
SCORE_BODY: dict[str, Any] = {
    "query": "What is the capital of France?",
    "documents": ["Paris is the capital of France.", "Bananas are yellow."],
}
ROUTES = [("POST", "/v1/rerank"), ("POST", "/v2/rerank"), ("POST", "/rerank"), ("GET", "/v1/models")]


def keys_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``rerankd keys ARGS`` in a subprocess, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKD_")}
    done = subprocess.run(
        [sys.executable, "-m", "rerankd", "keys", *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check and done.returncode != 0:
        raise AssertionError(f"rerankd keys {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def new_key(name: str, *store: str, limits: tuple[str, ...] = ()) -> str:
    key = keys_cli("create", "--name", name, *limits, *store).stdout.strip()
    assert key.startswith("rk-"), key
    return key


def call(
    client: httpx.Client, method: str, path: str, key: str | None = None, *, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "GET":
        return client.get(path, headers=headers)
    return client.post(path, headers=headers, json=SCORE_BODY if body is None else body)


def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``check()`` is true; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def assert_error_body(r: httpx.Response, status: int) -> dict[str, str]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, str] = r.json()
    assert set(body) == {"message", "detail", "id"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body
    assert body["id"] == r.headers["x-request-id"]
    return body
