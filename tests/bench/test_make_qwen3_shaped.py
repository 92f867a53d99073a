"""The Qwen3-0.6B-shaped model builder: the real decoder dimensions, a tokenizer that fits the load."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from bench.make_qwen3_shaped import main
from rerankd.bench.workload import WORDS


def test_builds_the_06b_shape_with_a_fitting_tokenizer(tmp_path: Path) -> None:
    out = tmp_path / "q"
    assert main([str(out), "--layers", "1", "--vocab", "2000"]) == 0  # one layer keeps it quick
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    shape = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "head_dim")}
    assert shape == {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "head_dim": 128,
    }
    assert config["num_key_value_heads"] == 8
    assert config["num_hidden_layers"] == 1
    assert config["tie_word_embeddings"] is True
    assert config["dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(out)
    assert config["vocab_size"] == len(tok) <= 2000
    # Documents are sent after a space: every load-generator word must be one token there.
    assert all(len(tok.encode(" " + w, add_special_tokens=False)) == 1 for w in WORDS)
    assert (
        len(tok.encode("yes", add_special_tokens=False))
        == len(tok.encode("no", add_special_tokens=False))
        == 1
    )
