"""The README's client snippets run as written against a live server (only its address swapped in)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apart import LLAMA_INDEX
from tests.servers import RerankdServer

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLIENTS = README[README.index("## Clients") :]
SNIPPETS = re.findall(r"```python\n(.*?)```", CLIENTS, re.S)


def test_the_readme_has_client_snippets() -> None:
    assert len(SNIPPETS) >= 7


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.split("\n")[0][:40] for s in SNIPPETS])
def test_readme_snippet_runs(minilm_server: RerankdServer, snippet: str) -> None:
    code = snippet.replace("http://127.0.0.1:8080", minilm_server.url)
    path = os.pathsep.join([str(ROOT / ".infinity-client"), os.environ.get("PYTHONPATH", "")])
    # LiteLLM's packaged price list: it would fetch one from the network otherwise.
    env = {**os.environ, "PYTHONPATH": path, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    # LlamaIndex lives in a venv of its own (tests/apart.py).
    python = str(LLAMA_INDEX.python) if "llama_index" in code else sys.executable
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Paris" in out.stdout or "relevance_score" in out.stdout or "score" in out.stdout, out.stdout
