"""Model formats: how (query, documents) become token sequences, and outputs become scores.

A format is engine-agnostic: the torch engine and the vLLM engine feed the same sequences to
different runtimes. Long documents are either truncated (``max_chunks=1``) or split into
overlapping windows whose best score is the document's score.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from rerankd.adapters.prompts import BGE_GEMMA, MXBAI_V2, QWEN3, PairPrompt, PromptTemplate

__all__ = [
    "CHARS_PER_TOKEN",
    "LLM_KINDS",
    "BgeGemmaFormat",
    "BiEncoderFormat",
    "CrossEncoderFormat",
    "EncodeOptions",
    "Encoded",
    "FormatKind",
    "LLMYesNoFormat",
    "ModelFormat",
    "MxbaiV2Format",
    "PairPromptFormat",
    "make_format",
    "sigmoid",
    "windows",
]

FormatKind = Literal["llm-yes-no", "cross-encoder", "bi-encoder", "mxbai-rerank-v2", "bge-reranker-v2-gemma"]
#: Formats of causal-LM rerankers, scored from the answer tokens' logits at the last position.
LLM_KINDS: frozenset[str] = frozenset({"llm-yes-no", "mxbai-rerank-v2", "bge-reranker-v2-gemma"})

#: Characters kept per token a document may need, before tokenizing (text averages about four).
CHARS_PER_TOKEN = 8
#: Tokens tokenized beyond those needed, so that a word cut in two lies past the ones scored.
_CUT_MARGIN_TOKENS = 16


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    instruction: str | None = None
    #: Read at most this many tokens of each document (Cohere v2 ``max_tokens_per_doc``).
    max_tokens_per_doc: int | None = None
    #: Windows per document when it exceeds the model's context; 1 means plain truncation.
    max_chunks: int = 1
    #: Scores as the model outputs them (a logit, a cosine), without the format's activation.
    raw: bool = False
    #: Which end of a document truncation cuts: "right" keeps its start, "left" its end.
    truncation_side: Literal["right", "left"] = "right"


@dataclass(slots=True)
class Encoded:
    """Sequences to score. ``owner[i]`` is the document of sequence ``i`` (-1: the query itself)."""

    ids: list[list[int]]
    owner: list[int]
    n_documents: int
    type_ids: list[list[int]] | None = None
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = sum(map(len, self.ids))

    @property
    def n_chunks(self) -> int:
        return sum(1 for o in self.owner if o >= 0)

    @classmethod
    def concat(cls, parts: Sequence[Encoded]) -> Encoded:
        """The parts of one request encoded in chunks of documents, as if encoded at once: owners
        are offset, and a query row that every part carries (bi-encoders) is kept once."""
        ids: list[list[int]] = []
        owner: list[int] = []
        types: list[list[int]] | None = [] if parts[0].type_ids is not None else None
        offset = 0
        for part in parts:
            for row, who in enumerate(part.owner):
                if who < 0 and offset > 0:
                    continue
                ids.append(part.ids[row])
                owner.append(who if who < 0 else who + offset)
                if types is not None and part.type_ids is not None:
                    types.append(part.type_ids[row])
            offset += part.n_documents
        return cls(ids=ids, owner=owner, n_documents=offset, type_ids=types)


def windows(ids: Sequence[int], size: int, max_chunks: int) -> list[list[int]]:
    """Split ``ids`` into windows of ``size`` overlapping by an eighth; at most ``max_chunks``."""
    if len(ids) <= size or max_chunks <= 1:
        return [list(ids[:size])]
    stride = max(1, size - size // 8)
    out: list[list[int]] = []
    for start in range(0, len(ids), stride):
        out.append(list(ids[start : start + size]))
        if start + size >= len(ids) or len(out) == max_chunks:
            break
    return out


class ModelFormat(ABC):
    kind: ClassVar[FormatKind]

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    @abstractmethod
    def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded: ...

    def combine(self, encoded: Encoded, outputs: Sequence[Any], *, raw: bool = False) -> list[float]:
        """Per-sequence raw outputs to per-document scores: the best chunk wins (the activation
        is monotonic, so before or after it the same chunk wins), then the activation unless
        ``raw``."""
        scores = [-math.inf] * encoded.n_documents
        for owner, out in zip(encoded.owner, outputs, strict=True):
            if owner < 0:  # the query's own row (bi-encoders), not a document
                continue
            scores[owner] = max(scores[owner], float(out))
        return scores if raw else [self.activate(s) for s in scores]

    def activate(self, raw: float) -> float:
        """The model's raw output (a logit) as a 0..1 relevance score."""
        return sigmoid(raw)

    def query_over(self, query: str, opts: EncodeOptions) -> tuple[int, int] | None:
        """``None`` when the query fits in the context uncut; else its tokens as this format counts
        them and the most that fit.

        Most queries are short: no tokenizer runs when the text's UTF-8 bytes, plus the special
        tokens, fit. No tokenizer makes more tokens than that (each token covers at least one byte,
        byte fallback included; one more for a SentencePiece word-start piece), and a cached request
        must not pay for tokenizing its query."""
        text, room = self._query_text(query, opts), self._query_room(opts)
        if len(text.encode("utf-8", "surrogatepass")) + self._query_specials() + 1 <= room:
            return None
        tokens = self._query_tokens(text)
        return None if tokens <= room else (tokens, room)

    def _query_text(self, query: str, opts: EncodeOptions) -> str:
        """What is tokenized to count the query's tokens."""
        return query

    def _query_specials(self) -> int:
        """Special tokens the count of :meth:`_query_tokens` includes."""
        return 0

    def _query_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @abstractmethod
    def _query_room(self, opts: EncodeOptions) -> int:
        """The most tokens the query may have without being cut."""

    def _keep_last(self, documents: Sequence[str], room: int) -> list[str]:
        """Left truncation: keep the last ``room`` tokens of each text, cut at a character offset."""
        enc = self.tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets in zip(documents, enc["offset_mapping"], strict=True):
            out.append(text[offsets[-room][0] :] if room > 0 and len(offsets) > room else text)
        return out

    def bound_texts(self, documents: Sequence[str], opts: EncodeOptions) -> list[str]:
        """Cut each document to a prefix (a suffix, where the request keeps a document's last tokens)
        that still holds every token the model can be fed.

        Tokenizing costs time and memory in proportion to the text, but only ``max_length`` tokens
        per window are scored: a 5 MB document is cut before it is tokenized. The cut is exact, not
        a guess: a long document is cut after ``CHARS_PER_TOKEN`` characters per needed token, the
        cut is tokenized, and if it holds fewer tokens than needed (plus a margin, so the word split
        at the cut lies beyond them) the cut is doubled and tried again."""
        need = self.max_length * max(1, opts.max_chunks)
        if opts.max_tokens_per_doc:
            need = min(need, opts.max_tokens_per_doc)
        need += _CUT_MARGIN_TOKENS
        # Left truncation of one window keeps the end; a max_tokens_per_doc cap reads from the start.
        tail = opts.truncation_side == "left" and opts.max_chunks <= 1 and not opts.max_tokens_per_doc
        return [
            doc if len(doc) <= need * CHARS_PER_TOKEN else self._cut(doc, need, tail=tail)
            for doc in documents
        ]

    def _cut(self, doc: str, need: int, *, tail: bool) -> str:
        cut = need * CHARS_PER_TOKEN
        while cut < len(doc):
            part = doc[-cut:] if tail else doc[:cut]
            if len(self.tokenizer(part, add_special_tokens=False, verbose=False)["input_ids"]) >= need:
                return part
            cut *= 2
        return doc

    def _cap_texts(self, documents: Sequence[str], cap: int | None) -> list[str]:
        """Cut each text after ``cap`` tokens, at a character offset so the text stays intact."""
        if cap is None:
            return list(documents)
        enc = self.tokenizer(list(documents), add_special_tokens=False, return_offsets_mapping=True)
        out = []
        for text, offsets in zip(documents, enc["offset_mapping"], strict=True):
            out.append(text[: offsets[cap - 1][1]] if len(offsets) > cap else text)
        return out


class LLMYesNoFormat(ModelFormat):
    """Causal-LM rerankers scored by P(yes) over {yes, no} at the last position (Qwen3-Reranker)."""

    kind = "llm-yes-no"

    def __init__(self, tokenizer: Any, max_length: int, template: PromptTemplate) -> None:
        super().__init__(tokenizer, max_length)
        self.template = template
        self.prefix_ids: list[int] = self._ids(template.prefix)
        self.suffix_ids: list[int] = self._ids(template.suffix)
        self.yes_id = self._single_token(template.yes_token)
        self.no_id = self._single_token(template.no_token)
        if max_length <= len(self.prefix_ids) + len(self.suffix_ids):
            raise ValueError(f"max_length {max_length} leaves no room between the prompt's prefix and suffix")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _single_token(self, text: str) -> int:
        ids = self._ids(text)
        if len(ids) != 1:
            raise ValueError(f"answer token {text!r} is not a single token for this tokenizer: {ids}")
        return ids[0]

    def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        # The head (instruction + query) is tokenized once per request, not once per document.
        head = self._ids(self.template.render_head(query, opts.instruction))
        docs = self.tokenizer([" " + d for d in documents], add_special_tokens=False)["input_ids"]
        room = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        ids: list[list[int]] = []
        owner: list[int] = []
        for i, doc in enumerate(docs):
            doc = doc[: opts.max_tokens_per_doc] if opts.max_tokens_per_doc else doc
            # The body (head + document) is truncated, never the suffix: the answer position must
            # follow the assistant tag or the yes/no logits are meaningless.
            if len(head) >= room:
                bodies = [head[:room]]
            elif opts.truncation_side == "left" and opts.max_chunks <= 1:
                bodies = [head + doc[len(head) - room :]]  # the document's last tokens
            else:
                bodies = [head + w for w in windows(doc, room - len(head), opts.max_chunks)]
            for body in bodies:
                ids.append(self.prefix_ids + body + self.suffix_ids)
                owner.append(i)
        return Encoded(ids=ids, owner=owner, n_documents=len(documents))

    def _query_text(self, query: str, opts: EncodeOptions) -> str:
        return self.template.render_head(query, opts.instruction)

    def _query_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def _query_room(self, opts: EncodeOptions) -> int:
        # The body must keep at least one document token after the head.
        return self.max_length - len(self.prefix_ids) - len(self.suffix_ids) - 1


class CrossEncoderFormat(ModelFormat):
    """Sequence-classification rerankers: ``[CLS] query [SEP] document [SEP]`` → one logit or two."""

    kind = "cross-encoder"

    def _short_query(self, query: str) -> str:
        # 'only_second' truncation fails when the query alone fills the context: keep half for it.
        ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        half = self.max_length // 2
        return query if len(ids) <= half else str(self.tokenizer.decode(ids[:half]))

    def _query_room(self, opts: EncodeOptions) -> int:
        return self.max_length // 2

    def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        docs = self._cap_texts(documents, opts.max_tokens_per_doc)
        chunked = opts.max_chunks > 1
        if opts.truncation_side == "right" and not chunked:
            # sentence-transformers' CrossEncoder truncation: the longer of query and document
            # loses tokens first, so a long query keeps half the room and the document the rest.
            enc = self.tokenizer(
                [query] * len(docs), docs, truncation="longest_first", max_length=self.max_length
            )
            return _limit_chunks(enc, len(docs), 1, False)
        query = self._short_query(query)
        if opts.truncation_side == "left" and not chunked:
            n_query = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
            room = self.max_length - n_query - self.tokenizer.num_special_tokens_to_add(pair=True)
            docs = self._keep_last(docs, room)
        enc = self.tokenizer(
            [query] * len(docs),
            docs,
            truncation="only_second",
            max_length=self.max_length,
            return_overflowing_tokens=chunked,
            stride=self.max_length // 8 if chunked else 0,
        )
        return _limit_chunks(enc, len(docs), opts.max_chunks, chunked)


class BiEncoderFormat(ModelFormat):
    """Embedding models: score = (cosine(query, document) + 1) / 2, the query embedded once."""

    kind = "bi-encoder"

    def _query_specials(self) -> int:
        return self._specials

    @functools.cached_property
    def _specials(self) -> int:
        return int(self.tokenizer.num_special_tokens_to_add(pair=False))

    def _query_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def _query_room(self, opts: EncodeOptions) -> int:
        return self.max_length

    def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        docs = self._cap_texts(documents, opts.max_tokens_per_doc)
        chunked = opts.max_chunks > 1
        if opts.truncation_side == "left" and not chunked:
            docs = self._keep_last(
                docs, self.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
            )
        enc = self.tokenizer(
            docs,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=chunked,
            stride=self.max_length // 8 if chunked else 0,
        )
        out = _limit_chunks(enc, len(docs), opts.max_chunks, chunked)
        q = self.encode_query(query)
        out.ids.insert(0, q.ids[0])
        out.owner.insert(0, -1)
        if out.type_ids is not None:
            out.type_ids.insert(0, q.type_ids[0] if q.type_ids else [0] * len(q.ids[0]))
        out.n_tokens += q.n_tokens
        return out

    def encode_query(self, query: str) -> Encoded:
        """The query's row alone (owner -1): what a request costs when every document's
        embedding is cached."""
        q = self.tokenizer(query, truncation=True, max_length=self.max_length)
        ids = list(q["input_ids"])
        types = q.get("token_type_ids")
        return Encoded(ids=[ids], owner=[-1], n_documents=0, type_ids=[list(types)] if types else None)

    def combine(self, encoded: Encoded, outputs: Sequence[Any], *, raw: bool = False) -> list[float]:
        # Outputs are L2-normalised embedding rows; the query's is the one owned by -1.
        query = outputs[encoded.owner.index(-1)]
        cosines = [float((query * out).sum()) for out in outputs]
        return super().combine(encoded, cosines, raw=raw)

    def activate(self, raw: float) -> float:
        return (raw + 1.0) / 2.0


class PairPromptFormat(ModelFormat):
    """LLM rerankers whose reference tokenizes the query and the document apart and cuts each to
    its own budget (mxbai-rerank-v2, bge-reranker-v2-gemma): ``prompt`` gives the strings, the
    subclass how ``max_length`` (rerankd's: the whole sequence) splits into budgets.

    Both references cut the query part to 3/4 of their ``max_length`` (``budget`` here), the
    document to ``budget``, then the pair ``(query, sep + document)`` to a joint length by
    trimming the document's end; the task prompt is appended after that cut, so it always survives.
    """

    def __init__(self, tokenizer: Any, max_length: int, prompt: PairPrompt) -> None:
        super().__init__(tokenizer, max_length)
        self.prompt = prompt
        self.prefix_ids = self._ids(prompt.prefix) if prompt.prefix else []
        self.sep_ids = self._ids(prompt.sep)
        self.suffix_ids = self._ids(prompt.suffix) if prompt.suffix else []
        self.bos_ids: list[int] = []
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        if prompt.bos and bos is not None and bos != pad:
            self.bos_ids = [bos]
        # The reference takes the first token of each answer word.
        self.yes_id = self._ids(prompt.yes_token)[0]
        self.no_id: int | None = self._ids(prompt.no_token)[0] if prompt.no_token else None
        self._task_ids: dict[str | None, list[int]] = {None: self._ids(prompt.task)}
        if self.budget(None) < 8:
            raise ValueError(f"max_length {max_length} leaves no room for the query and the document")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def task_ids(self, instruction: str | None) -> list[int]:
        key = instruction if self.prompt.render_task(instruction) != self.prompt.task else None
        if key not in self._task_ids:
            self._task_ids[key] = self._ids(self.prompt.render_task(instruction))
        return self._task_ids[key]

    @abstractmethod
    def budget(self, instruction: str | None) -> int:
        """The reference's ``max_length`` that makes its longest sequence ``self.max_length``."""

    @abstractmethod
    def joint_length(self, instruction: str | None) -> int:
        """The most tokens of ``bos + query + sep + document``, before the task prompt is added."""

    def _query_text(self, query: str, opts: EncodeOptions) -> str:
        return str(self.prompt.render_query(query, opts.instruction))

    def _query_tokens(self, text: str) -> int:
        return len(self._ids(text))

    def _query_room(self, opts: EncodeOptions) -> int:
        return self.budget(opts.instruction) * 3 // 4

    def encode(self, query: str, documents: Sequence[str], opts: EncodeOptions) -> Encoded:
        budget = self.budget(opts.instruction)
        first = self.bos_ids + self._ids(self.prompt.render_query(query, opts.instruction))[: budget * 3 // 4]
        tail = self.sep_ids + self.task_ids(opts.instruction) + self.suffix_ids
        room = self.joint_length(opts.instruction) - len(first) - len(self.sep_ids)
        texts = [
            self.prompt.document.format(document=d)
            for d in self._cap_texts(documents, opts.max_tokens_per_doc)
        ]
        left = opts.truncation_side == "left" and opts.max_chunks <= 1
        ids: list[list[int]] = []
        owner: list[int] = []
        for i, doc in enumerate(self.tokenizer(texts, add_special_tokens=False)["input_ids"]):
            if left:
                parts = [doc[-min(budget, room) :]]  # the document's last tokens
            else:
                parts = windows(doc[:budget] if opts.max_chunks <= 1 else doc, room, opts.max_chunks)
            for part in parts:
                ids.append(self.prefix_ids + first + self.sep_ids + part + tail)
                owner.append(i)
        return Encoded(ids=ids, owner=owner, n_documents=len(documents))


class MxbaiV2Format(PairPromptFormat):
    """mxbai-rerank-v2 (Qwen2): P("1") over {"0", "1"}; the raw score is logit("1") - logit("0"),
    which is what ``MxbaiRerankV2.predict`` returns.

    The package's ``max_length`` counts the query and document part only: here it is
    ``max_length`` less the prompt's fixed tokens (chat prefix, separators, task, suffix)."""

    kind = "mxbai-rerank-v2"

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        super().__init__(tokenizer, max_length, MXBAI_V2)

    def budget(self, instruction: str | None) -> int:
        # The package's "predefined length": everything but the query, the first separator and
        # the document. The instruction joins the query, so the budget does not depend on it.
        fixed = len(self.prefix_ids) + len(self.sep_ids) + len(self.task_ids(None)) + len(self.suffix_ids)
        return self.max_length - fixed

    def joint_length(self, instruction: str | None) -> int:
        return self.budget(instruction)


class BgeGemmaFormat(PairPromptFormat):
    """bge-reranker-v2-gemma: sigmoid(logit("Yes")); the raw score is the logit itself, which is
    what ``FlagLLMReranker.compute_score`` returns (``normalize=True``: the sigmoid).

    FlagEmbedding cuts ``bos + query + sep + passage`` to ``max_length + len(sep) + len(prompt)``
    tokens and then appends ``sep + prompt``: its longest sequence is ``max_length + 2 * (len(sep)
    + len(prompt))``, so its ``max_length`` is rerankd's less twice the separator and task prompt.
    A request's instruction replaces the task prompt, as FlagEmbedding's ``prompt`` argument."""

    kind = "bge-reranker-v2-gemma"

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        super().__init__(tokenizer, max_length, BGE_GEMMA)

    def budget(self, instruction: str | None) -> int:
        return self.max_length - 2 * (len(self.sep_ids) + len(self.task_ids(instruction)))

    def joint_length(self, instruction: str | None) -> int:
        return self.budget(instruction) + len(self.sep_ids) + len(self.task_ids(instruction))


def sigmoid(x: float) -> float:
    """Without overflow for large logits of either sign."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _limit_chunks(enc: Any, n_docs: int, max_chunks: int, chunked: bool) -> Encoded:
    mapping = enc["overflow_to_sample_mapping"] if chunked else range(n_docs)
    type_ids = enc.get("token_type_ids")
    ids: list[list[int]] = []
    types: list[list[int]] | None = [] if type_ids is not None else None
    owner: list[int] = []
    per_doc = [0] * n_docs
    for row, doc in enumerate(mapping):
        if per_doc[doc] >= max_chunks:
            continue
        per_doc[doc] += 1
        ids.append(list(enc["input_ids"][row]))
        owner.append(int(doc))
        if types is not None:
            types.append(list(type_ids[row]))
    return Encoded(ids=ids, owner=owner, n_documents=n_docs, type_ids=types)


def make_format(kind: str, tokenizer: Any, max_length: int) -> ModelFormat:
    """The format of a model kind; LLM rerankers use the Qwen3 model card's prompt."""
    if kind == LLMYesNoFormat.kind:
        return LLMYesNoFormat(tokenizer, max_length, QWEN3)
    for fmt in (CrossEncoderFormat, BiEncoderFormat, MxbaiV2Format, BgeGemmaFormat):
        if kind == fmt.kind:
            return fmt(tokenizer, max_length)
    raise ValueError(f"no local model format {kind!r}")
