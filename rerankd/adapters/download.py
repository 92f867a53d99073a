"""Download hub models into the Hugging Face cache, with progress as structured log lines.

``huggingface_hub`` draws tqdm bars on stderr, which end up as raw carriage-return lines in a JSON
log. Here each file is fetched on its own with a progress object that logs instead: one line when
a file starts, about one a second while it runs, one when it is done, each with
``event=download``, ``model``, ``file``, ``bytes`` and ``total``. A last ``snapshot_download`` then
records the revision and file listing in the cache (files already there are not fetched again), so
that a later start with ``HF_HUB_OFFLINE=1`` finds the snapshot.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any, cast

__all__ = ["HUB_PATTERNS", "download_model", "quiet_progress_bars"]

log = logging.getLogger(__name__)

# What a rerank model needs from a hub repository; skips other weight formats (onnx, openvino, ...).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "1_Pooling/*"]

#: Seconds between two progress lines of one file.
PROGRESS_EVERY_S = 1.0


class _FileProgress:
    """Stands in for tqdm in ``hf_hub_download``: the same calls, log lines instead of a bar."""

    def __init__(
        self, model: str, file: str, *, total: int | None = None, initial: int = 0, **_: Any
    ) -> None:
        self.model, self.file = model, file
        self.total = total
        self.n = initial
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._emit("start")

    def _emit(self, phase: str) -> None:
        fields = {
            "event": "download",
            "phase": phase,
            "model": self.model,
            "file": self.file,
            "bytes": self.n,
            "total": self.total,
        }
        of = f" of {self.total}" if self.total is not None else ""
        msg = "download %s %s: %s, %d%s bytes"
        log.info(msg, self.model, self.file, phase, self.n, of, extra={"fields": fields})

    def update(self, n: int | float | None = 1) -> None:
        with self._lock:
            self.n += int(n or 0)
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY_S:
                self._last = now
                self._emit("progress")

    def close(self) -> None:
        self._emit("done")

    def __enter__(self) -> _FileProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    # tqdm methods huggingface_hub may call; nothing to draw.
    def refresh(self) -> None:
        pass

    def set_description(self, *_: Any, **__: Any) -> None:
        pass

    def set_postfix_str(self, *_: Any, **__: Any) -> None:
        pass


class _Silent:
    """A tqdm stand-in that draws nothing (the final snapshot pass only checks the cache)."""

    def __init__(self, *_: Any, **kwargs: Any) -> None:
        self.total = kwargs.get("total")
        self.n = 0

    def update(self, n: int | float | None = 1) -> None:
        self.n += int(n or 0)

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Any:
        return iter(())


def quiet_progress_bars() -> None:
    """Turn off the tqdm bars of huggingface_hub and transformers (weight loading draws them too)
    and the hub client's per-request lines: rerankd logs its own structured ones."""
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()
    # The hub client's HTTP library logs every request at info; the download lines say enough.
    for name in ("httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the remote engine runs without transformers
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def download_model(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Fetch a model's files into the cache (``cache_dir``, default huggingface_hub's: ``HF_HUB_CACHE``
    or ``HF_HOME/hub``) and return its snapshot folder. Offline (``HF_HUB_OFFLINE=1``) this only
    looks the snapshot up. Errors are huggingface_hub's (offline, 404, auth, disk)."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.utils._paths import filter_repo_objects

    if not is_offline_mode():
        info = HfApi().model_info(repo_id, revision=revision)
        names = [s.rfilename for s in info.siblings or []]
        wanted = list(filter_repo_objects(names, allow_patterns=HUB_PATTERNS))
        fields = {"event": "download", "phase": "listed", "model": repo_id, "files": len(wanted)}
        log.info("downloading %s: %d file(s)", repo_id, len(wanted), extra={"fields": fields})
        for name in wanted:
            # One file at a time, pinned to the listed commit, each with its own progress lines.
            hf_hub_download(
                repo_id,
                name,
                revision=info.sha,
                cache_dir=cache_dir,
                # A callable, not a tqdm class: huggingface_hub then passes it only the bar's
                # sizes (total, initial), without tqdm's own options.
                tqdm_class=cast(Any, functools.partial(_FileProgress, repo_id, name)),
            )
    folder = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=HUB_PATTERNS,
        tqdm_class=_Silent,
    )
    return Path(folder)
