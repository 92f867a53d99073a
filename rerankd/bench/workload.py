"""Deterministic rerank requests: the same seed always yields the same queries and documents.

Lengths are counted in words of a small list of common English words; each is one token for
WordPiece (MiniLM) and for the tokenizer ``bench.make_qwen3_shaped`` trains, so words ≈ tokens.
The exact token counts come back in the servers' responses.
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["WORDS", "Workload", "parse_range"]

_WORD_TEXT = """
    the of and to in is was for on are with as his they be at one have this from or had by
    word but what some we can out other were all there when up use your how said an each she
    which do their time if will way about many then them write would like so these her long
    make thing see him two has look more day could go come did number sound no most people my
    over know water than call first who may down side been now find any new work part take get
    place made live where after back little only round man year came show every good me give
    our under name very through just form sentence great think say help low line differ turn
    cause much mean before move right boy old too same tell does set three want air well also
    play small end put home read hand port large spell add even land here must big high such
    follow act why ask men change went light kind off need house picture try us again animal
    point mother world near build self earth father head stand own page should country found
    answer school grow study still learn plant cover food sun four between state keep eye never
    last let thought city tree cross farm hard start might story saw far sea draw left late run
    while press close night real life few north open seem together next white children begin got
    walk example ease paper group always music those both mark often letter until mile river car
    feet care second book carry took science eat room friend began idea fish mountain stop once
    base hear horse cut sure watch color face wood main enough plain girl usual young ready above
    ever red list though feel talk bird soon body dog family direct pose leave song measure door
    product black short class wind question happen complete ship area half rock order fire south
    problem piece told knew pass since top whole king space heard best hour better true during
    hundred five remember step early hold west ground interest reach fast five sing listen six
    table travel less morning ten simple several toward war lay against pattern slow center love
    person money serve appear road map rain rule govern pull cold notice voice unit power town
    fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
    correct able pound done beauty drive stood contain front teach week final gave green quick
    develop ocean warm free minute strong special mind behind clear tail produce fact street inch
    market nothing course stay wheel full force blue object decide surface deep moon island foot
    system busy test record boat common gold possible plane dry wonder laugh thousand ago ran check
    game shape yes hot miss brought heat snow tire bring distant fill east paint language among
    """
WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))


def parse_range(text: str) -> tuple[int, int]:
    """``"200"`` → (200, 200); ``"150-250"`` → (150, 250)."""
    lo, sep, hi = text.partition("-")
    low, high = int(lo), int(hi) if sep else int(lo)
    if low < 1 or high < low:
        raise ValueError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return low, high


@dataclass(frozen=True, slots=True)
class Workload:
    """What each request carries. Request ``k`` is a pure function of ``(seed, k)``."""

    documents: int = 20
    #: Words per document, drawn uniformly from this inclusive range.
    doc_words: tuple[int, int] = (200, 200)
    query_words: int = 12
    #: Share of documents drawn from a fixed pool, so a pair cache can hit on them.
    repeat: float = 0.0
    #: Distinct queries; repeated documents are pooled per query, so (query, document) pairs recur.
    query_pool: int = 16
    #: Pooled documents per query.
    doc_pool: int = 64
    seed: int = 0
    model: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.repeat <= 1.0:
            raise ValueError(f"repeat must be within 0..1, got {self.repeat}")
        if self.documents < 1 or self.query_words < 1 or self.query_pool < 1 or self.doc_pool < 1:
            raise ValueError("documents, query words and pool sizes must be at least 1")

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def _text(self, rng: random.Random, n_words: int) -> str:
        return " ".join(rng.choices(WORDS, k=n_words))

    def _length(self, rng: random.Random) -> int:
        return rng.randint(*self.doc_words)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - pooled texts are few and the workload is frozen
    def _query(self, q: int) -> str:
        return self._text(random.Random(f"{self.seed}:query:{q}"), self.query_words)

    @functools.lru_cache(maxsize=16384)  # noqa: B019
    def _pooled(self, q: int, j: int) -> str:
        rng = random.Random(f"{self.seed}:pool:{q}:{j}")
        return self._text(rng, self._length(rng))

    def request(self, k: int) -> tuple[str, list[str]]:
        """The query and documents of request number ``k``."""
        rng = random.Random(f"{self.seed}:request:{k}")
        q = rng.randrange(self.query_pool)
        docs = [
            self._pooled(q, rng.randrange(self.doc_pool))
            if self.repeat and rng.random() < self.repeat
            else self._text(rng, self._length(rng))
            for _ in range(self.documents)
        ]
        return self._query(q), docs

    def body(self, k: int) -> dict[str, Any]:
        """Request ``k`` as a Cohere/Jina rerank body."""
        query, docs = self.request(k)
        body: dict[str, Any] = {"query": query, "documents": docs, "return_documents": False}
        if self.model:
            body["model"] = self.model
        return body
