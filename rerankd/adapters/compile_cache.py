"""What ``--compile`` produces, kept between starts: a second start of the same model on the same
kind of device loads its compiled kernels instead of compiling them again.

Two layers, both torch's own: inductor's on-disk caches (FX graph and AOT autograd caches) pointed
at a persistent folder, and torch's portable "mega-cache" (``torch.compiler.save_cache_artifacts``)
written after the warm-up and loaded before the first compile. Each setting that changes the
compiled code gets its own folder: the model fingerprint, torch's version, the device's name, the
dtype, and the engine's batch shape options. The start-up log says what was reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CompileCache", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)

_ARTIFACTS = "artifacts.bin"


def default_cache_dir(model_path: Path) -> Path:
    """``compile-cache`` beside the model's folder (the models volume, in the Helm chart) where it
    can be written, else under the user's cache folder."""
    beside = model_path.parent / "compile-cache"
    if os.access(beside if beside.exists() else model_path.parent, os.W_OK):
        return beside
    return Path.home() / ".cache" / "rerankd" / "compile"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"{device.type}-{platform.machine()}"


def cache_key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class CompileCache:
    folder: Path
    #: What the key was made of, for the log.
    described: str

    @classmethod
    def for_engine(
        cls,
        base: Path,
        *,
        fingerprint: str,
        device: torch.device,
        dtype: torch.dtype,
        shapes: str,
    ) -> CompileCache:
        name = device_name(device)
        parts = (fingerprint, torch.__version__, name, str(dtype), shapes)
        described = f"torch {torch.__version__}, {name}, {str(dtype).removeprefix('torch.')}, {shapes}"
        return cls(base / cache_key(*parts), described)

    def activate(self) -> str:
        """Point inductor's caches at this folder and load the saved artifacts; returns the log
        line. Call before the first compile."""
        import torch._inductor.config as inductor

        self.folder.mkdir(parents=True, exist_ok=True)
        # Read by inductor whenever it looks for its cache folder, not only at import.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder / "inductor")
        inductor.fx_graph_cache = True
        inductor.autotune_local_cache = True
        with contextlib.suppress(AttributeError):  # older torch: one cache layer fewer
            torch._functorch.config.enable_autograd_cache = True
        saved = self.folder / _ARTIFACTS
        if not saved.is_file():
            return f"compile cache {self.folder} ({self.described}): nothing saved yet, compiling"
        try:
            info = torch.compiler.load_cache_artifacts(saved.read_bytes())
        except Exception as exc:  # a corrupt or foreign file costs a compile, never a failed start
            log.warning("compile cache %s: cannot load %s (%s); compiling", self.folder, saved, exc)
            return f"compile cache {self.folder}: unreadable, compiling"
        if info is None:  # torch's answer to an empty or corrupt file (it logs which)
            return f"compile cache {self.folder}: nothing reusable in {_ARTIFACTS}, compiling"
        counts = {kind: len(v) for kind, v in info.artifacts.items() if v}
        reused = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"
        return f"compile cache {self.folder} ({self.described}): reused {reused}"

    def save(self) -> str:
        """Write what this process compiled (and loaded) for the next start; returns the log line."""
        result = torch.compiler.save_cache_artifacts()
        if result is None:
            return f"compile cache {self.folder}: nothing compiled to save"
        data, info = result
        tmp = self.folder / f".{_ARTIFACTS}.{os.getpid()}"
        tmp.write_bytes(data)
        tmp.replace(self.folder / _ARTIFACTS)  # whole or not at all, for a concurrent start
        n = sum(len(v) for v in info.artifacts.values())
        return f"compile cache {self.folder}: saved {n} artifacts ({len(data):,} bytes)"
