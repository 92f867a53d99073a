"""The Qwen3-Reranker prompt, pinned to the model card's strings."""

from __future__ import annotations

from rerankd.adapters.prompts import QWEN3
from tests.fixtures.qwen3_reference import INSTRUCTION, PREFIX, SUFFIX

# The card's strings, written out once, independently of rerankd, in the reference fixture.
CARD_PREFIX, CARD_SUFFIX, CARD_INSTRUCTION = PREFIX, SUFFIX, INSTRUCTION


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
