"""``helm lint --strict`` and Kubernetes 1.35 schema validation of every value set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm.chart import CI_VALUES, lint, render

K8S_VERSION = "1.35.0"
#: Kinds from CRDs, which kubernetes-validate has no schema for; test_objects checks their shape.
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}

VALUE_SETS: list[Path | None] = [None, *CI_VALUES]
IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def _files(values: Path | None) -> list[Path]:
    return [values] if values else []


def kubernetes_validate(manifest: str) -> subprocess.CompletedProcess[str]:
    """``kubernetes-validate --strict -k 1.35.0 -`` with the manifest on stdin."""
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, "-"]
    return subprocess.run(cmd, input=manifest, capture_output=True, text=True, timeout=120)


def test_the_ci_value_sets_cover_the_required_cases() -> None:
    names = {p.name for p in CI_VALUES}
    required = ("external-redis", "cpu", "scaling", "keda")
    assert {f"{name}-values.yaml" for name in required} <= names


@pytest.mark.parametrize("values", VALUE_SETS, ids=IDS)
def test_helm_lint_strict(values: Path | None) -> None:
    proc = lint(_files(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS, ids=IDS)
def test_every_rendered_object_validates(values: Path | None) -> None:
    rendered = render(_files(values))
    proc = kubernetes_validate(rendered.text)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for obj in rendered.objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind in CRD_KINDS:
            assert f"Couldn't find schema for kind {kind}" in out
        else:
            assert f"passed for resource {kind.lower()}/{name} against version 1.35" in out, out
    unexplained = [
        line for line in out.splitlines() if "WARN" in line and not any(k in line for k in CRD_KINDS)
    ]
    assert not unexplained, out


def test_the_validator_rejects_a_broken_object() -> None:
    """Guards the test above against a validator that passes everything."""
    rendered = render()
    service = rendered.get("Service", "r-rerankd")
    service["spec"]["unknownField"] = 1  # --strict rejects fields the API does not know
    proc = kubernetes_validate(yaml.safe_dump(service))
    assert proc.returncode != 0
    assert "unknownField" in proc.stdout + proc.stderr
