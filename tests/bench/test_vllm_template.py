"""The score template ``bench.compare`` gives ``vllm serve`` renders rerankd's prompt, token for token."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bench.servers import QWEN3_TEMPLATE, ModelChoice, vllm_serve_command
from rerankd.adapters.formats import EncodeOptions, make_format

DOCS = ["Paris is the capital of France.", "no", "Bananas are yellow fruit.\nNew line.", ""]


def test_template_renders_the_model_card_prompt(tiny_qwen3_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    fmt = make_format("llm-yes-no", tokenizer, 8192)
    query = "What is the capital of France?"
    ours = fmt.encode(query, DOCS, EncodeOptions()).ids
    template = QWEN3_TEMPLATE.read_text()
    for doc, ids in zip(DOCS, ours, strict=True):
        # As vLLM's score endpoint renders it: two messages, roles "query" and "document".
        text = tokenizer.apply_chat_template(
            [{"role": "query", "content": query}, {"role": "document", "content": doc}],
            chat_template=template,
            tokenize=False,
        )
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, doc


def test_vllm_serve_command(tiny_qwen3_dir: Path) -> None:
    cmd = vllm_serve_command(ModelChoice(str(tiny_qwen3_dir), dtype="bfloat16"), ["--max-num-seqs", "512"])
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    for pair in (["--runner", "pooling"], ["--chat-template", str(QWEN3_TEMPLATE)], ["--dtype", "bfloat16"]):
        i = cmd.index(pair[0])
        assert cmd[i : i + 2] == pair
    assert cmd[-2:] == ["--max-num-seqs", "512"]
