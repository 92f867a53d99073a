"""Long documents are cut before tokenizing, and the cut changes no token the model is fed."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd.adapters.formats import CHARS_PER_TOKEN, EncodeOptions, ModelFormat, make_format
from rerankd.adapters.loader import embedded_model, resolve_model
from rerankd.config import ModelConfig
from tests.fixtures.tiny_cross_encoder import build as build_cross_encoder

WORDS = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. "
LONG_DOCS = [
    WORDS * 6_000,  # about 460 KB
    # Mostly white space, which makes no tokens: the first cut holds too few and is doubled.
    ("word" + " " * 200) * 2_500,
    "x" * 100_000,  # one unbroken "word" (WordPiece makes it one unknown token: kept whole)
    "short document",
]


def formats(tmp_path: Path, tiny_qwen3_dir: Path) -> list[ModelFormat]:
    out = []
    for cfg in (
        embedded_model(),
        ModelConfig(name="ce", path=str(build_cross_encoder(tmp_path / "ce"))),
        ModelConfig(name="qwen", path=str(tiny_qwen3_dir), max_length=96),
    ):
        src = resolve_model(cfg)
        out.append(make_format(src.format, AutoTokenizer.from_pretrained(src.path), src.max_length))
    return out


@pytest.mark.parametrize(
    "opts",
    [
        EncodeOptions(),
        EncodeOptions(max_chunks=3),
        EncodeOptions(max_tokens_per_doc=40),
        EncodeOptions(truncation_side="left"),
    ],
    ids=["truncate", "chunks", "max-tokens", "left"],
)
def test_cut_documents_encode_exactly_as_whole_ones(
    tmp_path: Path, tiny_qwen3_dir: Path, opts: EncodeOptions
) -> None:
    for fmt in formats(tmp_path, tiny_qwen3_dir):
        cut = fmt.bound_texts(LONG_DOCS, opts)
        assert cut[-1] == LONG_DOCS[-1]
        kept = str.endswith if opts.truncation_side == "left" else str.startswith
        assert all(kept(d, c) for c, d in zip(cut, LONG_DOCS, strict=True))
        assert len(cut[0]) <= (fmt.max_length * opts.max_chunks + 64) * CHARS_PER_TOKEN
        assert len(cut[1]) < len(LONG_DOCS[1])
        whole = fmt.encode("what makes sugar?", LONG_DOCS, opts)
        bounded = fmt.encode("what makes sugar?", cut, opts)
        assert bounded.ids == whole.ids, fmt.kind
        assert bounded.owner == whole.owner
