"""Every ``rerankd_*`` metric that the docs or the Helm chart name is one a running server serves.

A dashboard, alert or autoscaler built on a misspelt name sees nothing and says nothing, so the
names are checked against a real scrape, not against a list kept by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import RerankdServer

ROOT = Path(__file__).resolve().parents[1]
#: A metric name in prose, a PromQL query or a values file; ``rerankd:auth:keys`` (Redis) has colons.
NAME = re.compile(r"\brerankd_[a-z0-9_]*[a-z0-9]\b")


def documents() -> Iterator[Path]:
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").rglob("*.md"))
    yield from sorted(p for p in (ROOT / "helm" / "rerankd").rglob("*") if p.is_file())


def named_in(path: Path) -> set[str]:
    return set(NAME.findall(path.read_text(errors="replace")))


def served(server: RerankdServer) -> set[str]:
    """Family and sample names of one scrape (samples carry _total, _bucket, _sum, _count)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_the_docs_and_chart_name_is_served(minilm_server: RerankdServer) -> None:
    # One scored request first, so families that appear with their first sample are there too.
    body = {"model": "all-MiniLM-L6-v2", "query": "capital of France?", "documents": ["Paris", "Berlin"]}
    assert httpx.post(minilm_server.url + "/v2/rerank", json=body, timeout=60).status_code == 200
    names = served(minilm_server)
    assert "rerankd_queue_depth" in names  # the scrape parsed: the autoscaling metric is there

    unknown = {
        str(path.relative_to(ROOT)): sorted(found - names)
        for path in documents()
        if (found := named_in(path)) - names
    }
    assert unknown == {}, f"metrics named but not served: {unknown}"


def test_the_scan_finds_the_names_in_the_chart_and_docs() -> None:
    """Guards the test above against a scan that finds nothing."""
    assert "rerankd_queue_depth" in named_in(ROOT / "docs" / "observability.md")
    chart = set().union(*(named_in(p) for p in documents() if "helm" in p.parts))
    assert "rerankd_queue_depth" in chart
