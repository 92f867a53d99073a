"""The Qwen3-Reranker prompt, pinned to the model card's strings."""

from __future__ import annotations

from rerankd.adapters.prompts import QWEN3

CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def card_body(instruction: str, query: str, doc: str) -> str:
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def test_qwen3_constants_match_the_card() -> None:
    assert QWEN3.prefix == CARD_PREFIX
    assert QWEN3.suffix == CARD_SUFFIX
    assert QWEN3.default_instruction == CARD_INSTRUCTION
    assert (QWEN3.yes_token, QWEN3.no_token) == ("yes", "no")


def test_qwen3_render_is_the_card_prompt() -> None:
    got = QWEN3.render("what is rerankd?", "A rerank server.")
    assert (
        got == CARD_PREFIX + card_body(CARD_INSTRUCTION, "what is rerankd?", "A rerank server.") + CARD_SUFFIX
    )
    custom = QWEN3.render("q", "d", "Find code")
    assert custom == CARD_PREFIX + card_body("Find code", "q", "d") + CARD_SUFFIX
