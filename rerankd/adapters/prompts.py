"""Prompt templates of LLM rerankers, as constants and pure functions.

The strings are the model cards' own, byte for byte; ``tests/adapters/test_prompts.py`` pins them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QWEN3", "TEMPLATES", "PromptTemplate"]


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """``prefix + head(instruction, query) + " " + document + suffix``; answer tokens score it."""

    name: str
    prefix: str
    #: Everything between the prefix and the document. It ends right before the space that
    #: precedes the document, so the document's first word keeps its leading-space token,
    #: exactly as when the whole body is tokenized at once.
    head: str
    suffix: str
    yes_token: str
    no_token: str
    default_instruction: str

    def render_head(self, query: str, instruction: str | None) -> str:
        return self.head.format(instruction=instruction or self.default_instruction, query=query)

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        """The full prompt as one string (for reference and tests)."""
        return f"{self.prefix}{self.render_head(query, instruction)} {document}{self.suffix}"


QWEN3 = PromptTemplate(
    name="qwen3",
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
    ),
    head="<Instruct>: {instruction}\n<Query>: {query}\n<Document>:",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    yes_token="yes",
    no_token="no",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
)

TEMPLATES: dict[str, PromptTemplate] = {QWEN3.name: QWEN3}
