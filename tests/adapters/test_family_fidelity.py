"""Every common reranker family scored by rerankd as its own reference implementation scores it.

Tiny random-weight models of each architecture (``tests/fixtures/tiny_families.py``), the format
detected from their ``config.json``, the torch engine in float32, against sentence-transformers'
``CrossEncoder`` (BERT, XLM-RoBERTa, ModernBERT), the ``mxbai-rerank`` package (mxbai-rerank-v2) and
FlagEmbedding's ``FlagLLMReranker`` (bge-reranker-v2-gemma): scores within 1e-4 and the same
ranking, with long queries and documents truncated.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from rerankd.adapters.formats import Encoded, EncodeOptions, ModelFormat, sigmoid
from rerankd.adapters.loader import resolve_model
from rerankd.adapters.torch_engine import TorchEngine
from rerankd.config import ModelConfig
from rerankd.errors import ConfigError
from tests.fixtures import family_references as ref
from tests.fixtures.tiny_families import BUILDERS
from tests.ranking import assert_same_ranking
from tests.servers import rerankd_server

CROSS_LENGTH = 64  # small, so that long documents and the long query are cut
LLM_LENGTH = 140
#: Raw logits of the random models reach a few units; float32 noise stays below 1e-4 there.
TOL = 1e-4
QUERIES = ["What is the capital of France?", "bananas " * 60]
DOCS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Bananas are yellow fruit.",
    "The quick brown fox jumps over the lazy dog.",
    "0123456789 numbers (brackets) [more]",
    "Yes",
    "",
    "Le renard brun rapide. 快速的棕色狐狸。",
    "Photosynthesis makes sugar from light. " * 30,  # cut
    "no no no " * 50,  # cut
]
DETECTED = {
    "bert": "cross-encoder",
    "bert-2": "cross-encoder",
    "xlm-roberta": "cross-encoder",
    "modernbert": "cross-encoder",
    "mxbai-v2": "mxbai-rerank-v2",
    "bge-gemma": "bge-reranker-v2-gemma",
}


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Builds each family's tiny model once for the module."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = BUILDERS[family](tmp_path_factory.mktemp("families") / family)
        return built[family]

    return get


async def _score(
    path: Path, max_length: int, query: str, docs: list[str], opts: EncodeOptions
) -> tuple[str, list[float], Encoded, ModelFormat]:
    source = resolve_model(ModelConfig(name="tiny", path=str(path), max_length=max_length))
    # A small batch budget forces several batches that mix lengths: padding must not leak into scores.
    engine = TorchEngine(source, device="cpu", dtype="float32", max_batch_tokens=500)
    await engine.start()
    try:
        result = await engine.score(query, docs, opts)
        encoded = await engine.encode(query, docs, opts)
        return source.format, result.scores, encoded, engine.format
    finally:
        await engine.close()


def score(
    path: Path, max_length: int, query: str, opts: EncodeOptions | None = None
) -> tuple[str, list[float], Encoded, ModelFormat]:
    return asyncio.run(_score(path, max_length, query, DOCS, opts or EncodeOptions()))


def assert_close(ours: list[float], theirs: list[float], tol: float = TOL) -> None:
    assert len(ours) == len(theirs)
    worst = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    assert worst < tol, f"scores differ by {worst}:\nours   {ours}\ntheirs {theirs}"
    assert_same_ranking(ours, theirs, tie=tol)


def assert_spread(scores: list[float]) -> None:
    """The comparison means something only if the model tells documents apart."""
    assert max(scores) - min(scores) > 0.05


@pytest.mark.parametrize("family", ["bert", "bert-2", "xlm-roberta", "modernbert"])
@pytest.mark.parametrize("query", QUERIES, ids=["short-query", "long-query"])
def test_cross_encoders_match_sentence_transformers(
    family_dir: Callable[[str], Path], family: str, query: str
) -> None:
    path = family_dir(family)
    kind, ours, encoded, _ = score(path, CROSS_LENGTH, query)
    theirs = ref.cross_encoder_scores(str(path), query, DOCS, max_length=CROSS_LENGTH)
    assert kind == "cross-encoder"
    assert_close(ours, theirs)
    assert_spread(theirs)
    assert max(map(len, encoded.ids)) == CROSS_LENGTH  # truncation happened


@pytest.mark.parametrize("family", ["xlm-roberta", "modernbert"])
def test_encoders_without_segment_ids_get_none(family_dir: Callable[[str], Path], family: str) -> None:
    _, _, encoded, _ = score(family_dir(family), CROSS_LENGTH, QUERIES[0])
    assert encoded.type_ids is None
    _, _, bert, _ = score(family_dir("bert"), CROSS_LENGTH, QUERIES[0])
    assert bert.type_ids is not None
    assert any(1 in row for row in bert.type_ids)


def mxbai_budget(path: Path) -> int:
    """The package's ``max_length`` whose longest sequence is ``LLM_LENGTH`` tokens."""
    return LLM_LENGTH - ref.mxbai_predefined_length(str(path), 512)


@pytest.mark.parametrize("query", QUERIES, ids=["short-query", "long-query"])
def test_mxbai_v2_matches_the_package(family_dir: Callable[[str], Path], query: str) -> None:
    path = family_dir("mxbai-v2")
    kind, raw, encoded, _ = score(path, LLM_LENGTH, query, EncodeOptions(raw=True))
    _, scores, _, _ = score(path, LLM_LENGTH, query)
    theirs = ref.mxbai_scores(str(path), query, DOCS, max_length=mxbai_budget(path))
    assert kind == "mxbai-rerank-v2"
    assert_close(raw, theirs)  # the package's own score: logit("1") - logit("0")
    assert_close(scores, [sigmoid(s) for s in theirs])  # rerankd's 0..1: P("1") over {"0", "1"}
    assert_spread(scores)
    assert max(map(len, encoded.ids)) == LLM_LENGTH


def test_mxbai_v2_instruction_is_the_packages(family_dir: Callable[[str], Path]) -> None:
    path = family_dir("mxbai-v2")
    instruction = "Find documents about fruit"
    _, raw, _, _ = score(path, LLM_LENGTH, QUERIES[0], EncodeOptions(raw=True, instruction=instruction))
    theirs = ref.mxbai_scores(
        str(path), QUERIES[0], DOCS, max_length=mxbai_budget(path), instruction=instruction
    )
    plain = ref.mxbai_scores(str(path), QUERIES[0], DOCS, max_length=mxbai_budget(path))
    assert_close(raw, theirs)
    assert max(abs(a - b) for a, b in zip(theirs, plain, strict=True)) > 1e-3


def flag_budget(path: Path, prompt: str) -> int:
    """FlagEmbedding's ``max_length`` whose longest sequence is ``LLM_LENGTH`` tokens: it appends
    ``sep + prompt`` after cutting the pair to ``max_length + len(sep) + len(prompt)``."""
    tok = AutoTokenizer.from_pretrained(path)
    fixed = len(tok("\n", add_special_tokens=False)["input_ids"]) + len(
        tok(prompt, add_special_tokens=False)["input_ids"]
    )
    return LLM_LENGTH - 2 * fixed


FLAG_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)


@pytest.mark.parametrize("query", QUERIES, ids=["short-query", "long-query"])
def test_bge_gemma_matches_flagembedding(family_dir: Callable[[str], Path], query: str) -> None:
    path = family_dir("bge-gemma")
    kind, raw, encoded, _ = score(path, LLM_LENGTH, query, EncodeOptions(raw=True))
    _, scores, _, _ = score(path, LLM_LENGTH, query)
    theirs = ref.flag_scores(str(path), query, DOCS, max_length=flag_budget(path, FLAG_PROMPT))
    assert kind == "bge-reranker-v2-gemma"
    assert_close(raw, theirs)  # FlagEmbedding's score: the "Yes" logit
    assert_close(scores, [sigmoid(s) for s in theirs])  # its normalize=True
    assert_spread(scores)
    tok = AutoTokenizer.from_pretrained(path)
    assert all(row[0] == tok.bos_token_id for row in encoded.ids)
    if query == QUERIES[1]:
        assert max(map(len, encoded.ids)) == LLM_LENGTH


def test_bge_gemma_instruction_is_flagembeddings_prompt(family_dir: Callable[[str], Path]) -> None:
    path = family_dir("bge-gemma")
    prompt = "Does passage B answer query A? Yes or No."
    _, raw, encoded, _ = score(path, LLM_LENGTH, QUERIES[1], EncodeOptions(raw=True, instruction=prompt))
    theirs = ref.flag_scores(str(path), QUERIES[1], DOCS, max_length=flag_budget(path, prompt), prompt=prompt)
    assert_close(raw, theirs)
    assert max(map(len, encoded.ids)) <= LLM_LENGTH


def test_left_truncation_keeps_the_end_and_the_prompt(family_dir: Callable[[str], Path]) -> None:
    """rerankd's own option (no reference has it): the document's last tokens, the task prompt kept."""
    path = family_dir("mxbai-v2")
    long_doc = ("Paris is the capital of France. " * 40).strip()
    opts = EncodeOptions(truncation_side="left")
    _, _, enc, _ = asyncio.run(_score(path, LLM_LENGTH, QUERIES[0], [long_doc, "Berlin."], opts))
    tok = AutoTokenizer.from_pretrained(path)
    text = str(tok.decode(enc.ids[0]))
    assert len(enc.ids[0]) == LLM_LENGTH
    assert text.endswith("Relevance:<|im_end|>\n<|im_start|>assistant\n")
    assert "capital of France.\nYou are a search relevance expert" in text


def test_mxbai_prompt_is_the_packages() -> None:
    from mxbai_rerank import MxbaiRerankV2

    from rerankd.adapters.prompts import MXBAI_V2

    pkg = MxbaiRerankV2
    want = (
        pkg.chat_template["prefix"]
        + pkg.instruction_prompt.format(instruction="Find code")
        + pkg.sep
        + pkg.query_prompt.format(query="q")
        + pkg.sep
        + pkg.doc_prompt.format(document="d")
        + pkg.sep
        + pkg.task_prompt
        + pkg.chat_template["suffix"]
    )
    assert MXBAI_V2.render("q", "d", "Find code") == want
    assert MXBAI_V2.render("q", "d").count("instruction:") == 0


def test_bge_gemma_prompt_is_flagembeddings() -> None:
    from rerankd.adapters.prompts import BGE_GEMMA

    assert BGE_GEMMA.render("q", "d", bos="<bos>") == f"<bos>A: q\nB: d\n{FLAG_PROMPT}"
    assert BGE_GEMMA.render("q", "d", "Custom?") == "A: q\nB: d\nCustom?"


@pytest.mark.parametrize("family", sorted(DETECTED))
def test_format_is_detected_from_config_json(family_dir: Callable[[str], Path], family: str) -> None:
    assert resolve_model(ModelConfig(name="m", path=str(family_dir(family)))).format == DETECTED[family]


def test_format_set_explicitly_where_config_json_does_not_tell(
    family_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """A Gemma reranker whose config.json names another model type is served with --model-format;
    its scores over HTTP are FlagEmbedding's, squashed by the sigmoid."""
    import json
    import shutil

    path = shutil.copytree(family_dir("bge-gemma"), tmp_path / "renamed")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gemma", "architectures": []}))
    with pytest.raises(ConfigError, match="bge-reranker-v2-gemma"):
        resolve_model(ModelConfig(name="m", path=str(path)))
    args = ["--model", f"g={path}", "--model-format", "g=bge-reranker-v2-gemma", "--no-cache"]
    with rerankd_server([*args, "--engine", "torch", "--dtype", "float32"]) as server:
        body: dict[str, Any] = {"model": "g", "query": QUERIES[0], "documents": DOCS[:6]}
        results = httpx.post(server.url + "/v2/rerank", json=body, timeout=60).json()["results"]
        models = httpx.get(server.url + "/v1/models").json()["data"]
    assert models[0]["format"] == "bge-reranker-v2-gemma"
    # The server's default max_length (8192) cuts nothing here: FlagEmbedding's default 512 neither.
    theirs = [sigmoid(s) for s in ref.flag_scores(str(path), QUERIES[0], DOCS[:6], max_length=512)]
    got = {r["index"]: r["relevance_score"] for r in results}
    assert max(abs(got[i] - theirs[i]) for i in range(6)) < TOL
    assert all(math.isfinite(v) for v in got.values())


def test_model_format_setting_from_flags_env_and_validation() -> None:
    from rerankd.cli import serve_settings
    from rerankd.config import load_settings

    flags = ["--model", "a=/m/a", "--model", "b=/m/b", "--model-format", "a=mxbai-rerank-v2"]
    assert serve_settings(flags).model_formats == {"a": "mxbai-rerank-v2"}
    env = {"RERANKD_MODELS": "a=/m/a", "RERANKD_MODEL_FORMATS": "a=bge-reranker-v2-gemma"}
    assert load_settings(env=env).model_formats == {"a": "bge-reranker-v2-gemma"}
    with pytest.raises(ConfigError, match="model_formats"):
        serve_settings([*flags, "--model-format", "c=cross-encoder"])  # no model c
    with pytest.raises(ConfigError, match="invalid setting"):
        serve_settings(["--model", "a=/m/a", "--model-format", "a=no-such-format"])
    with pytest.raises(ConfigError, match="NAME=FORMAT"):
        serve_settings(["--model", "a=/m/a", "--model-format", "mxbai-rerank-v2"])


@pytest.mark.parametrize("kind", ["mxbai-rerank-v2", "bge-reranker-v2-gemma"])
def test_token_bound_covers_the_pair_prompts(kind: str) -> None:
    """Token limits reserve a request's tokens before scoring: the bound must hold for these
    prompts too, whose fixed text is longer than Qwen3's. A byte-level tokenizer without merges
    (one token per byte) is the worst case the bound is made for."""
    from rerankd.adapters.formats import make_format
    from rerankd.estimate import token_bound
    from tests.fixtures.tiny_qwen3 import train_tokenizer

    bytes_only = train_tokenizer(["yes", "no"], 262)  # the 256 bytes, 3 specials, "yes" and "no"
    fmt = make_format(kind, bytes_only, 8192)
    docs = ["", "Yes", "a"]
    for opts in (EncodeOptions(), EncodeOptions(instruction="Find fruit")):
        encoded = fmt.encode("q", docs, opts)
        if opts.instruction is None:  # (bge's instruction replaces its long task prompt)
            assert encoded.n_tokens > 3 * 140  # about one token per byte of each prompt
        assert token_bound(fmt.kind, 8192, "q", docs, opts) >= encoded.n_tokens


def test_vllm_engines_refuse_the_pair_prompt_formats(family_dir: Callable[[str], Path]) -> None:
    from rerankd.adapters.vllm_engine import VLLMOptions, prepare

    source = resolve_model(ModelConfig(name="m", path=str(family_dir("mxbai-v2"))))
    with pytest.raises(ConfigError, match="torch engine only"):
        prepare(source, VLLMOptions())
