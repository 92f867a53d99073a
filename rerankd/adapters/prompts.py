"""Prompt templates of LLM rerankers, as constants and pure functions.

The strings are the model cards' own, byte for byte; ``tests/adapters/test_prompts.py`` pins them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BGE_GEMMA", "MXBAI_V2", "QWEN3", "PairPrompt", "PromptTemplate"]


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


@dataclass(frozen=True, slots=True)
class PairPrompt:
    """LLM rerankers that tokenize the query and the document apart, cut each to its own budget,
    then join ``prefix + [bos] + query + sep + document + sep + task + suffix``.

    The strings are the reference implementations' own (mxbai-rerank's ``MxbaiRerankV2``,
    FlagEmbedding's ``FlagLLMReranker``); how the budgets are split is the format's
    (``rerankd.adapters.formats.PairPromptFormat``)."""

    name: str
    #: Text before the query part ("" for none).
    prefix: str
    #: The query part; ``instructed_query`` when a request gives an instruction (None: the
    #: instruction replaces the task prompt instead, as FlagEmbedding's ``prompt`` argument does).
    query: str
    instructed_query: str | None
    document: str
    sep: str
    #: The task prompt after the document, then the suffix (the assistant turn, or "").
    task: str
    suffix: str
    #: The tokenizer's BOS token leads the query part (FlagEmbedding's rule, when BOS is not the pad).
    bos: bool
    #: The score is logit(yes) - logit(no), or logit(yes) alone when ``no_token`` is None.
    yes_token: str
    no_token: str | None

    def render_query(self, query: str, instruction: str | None) -> str:
        if instruction and self.instructed_query is not None:
            return self.instructed_query.format(instruction=instruction, query=query)
        return self.query.format(query=query)

    def render_task(self, instruction: str | None) -> str:
        return instruction if instruction and self.instructed_query is None else self.task

    def render(self, query: str, document: str, instruction: str | None = None, bos: str = "") -> str:
        """The full prompt as one string, nothing cut (for reference and tests)."""
        doc = self.document.format(document=document)
        head = f"{bos if self.bos else ''}{self.render_query(query, instruction)}"
        return f"{self.prefix}{head}{self.sep}{doc}{self.sep}{self.render_task(instruction)}{self.suffix}"


#: mixedbread-ai/mxbai-rerank-{base,large}-v2, as the ``mxbai-rerank`` package prompts them.
MXBAI_V2 = PairPrompt(
    name="mxbai-rerank-v2",
    prefix=(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n"
    ),
    query="query: {query}",
    instructed_query="instruction: {instruction}\nquery: {query}",
    document="document: {document}",
    sep="\n",
    task=(
        "You are a search relevance expert who evaluates how well documents match search queries. "
        "For each query-document pair, carefully analyze the semantic relationship between them, "
        "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
    ),
    suffix="<|im_end|>\n<|im_start|>assistant\n",
    bos=False,
    yes_token="1",
    no_token="0",
)

#: BAAI/bge-reranker-v2-gemma, as FlagEmbedding's ``FlagLLMReranker`` prompts it (its defaults:
#: query "A: ", passage "B: ", the task prompt below).
BGE_GEMMA = PairPrompt(
    name="bge-reranker-v2-gemma",
    prefix="",
    query="A: {query}",
    instructed_query=None,
    document="B: {document}",
    sep="\n",
    task=(
        "Given a query A and a passage B, determine whether the passage contains an answer to the "
        "query by providing a prediction of either 'Yes' or 'No'."
    ),
    suffix="",
    bos=True,
    yes_token="Yes",
    no_token=None,
)
