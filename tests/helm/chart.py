"""Run the real ``helm`` binary on the chart and hand back the rendered objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CHART",
    "CI_VALUES",
    "ROOT",
    "Rendered",
    "container",
    "find_helm",
    "helm",
    "lint",
    "pod_specs",
    "render",
    "render_error",
]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "rerankd"
#: The chart-testing value sets; each must lint and render to valid objects.
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

Obj = dict[str, Any]


def find_helm() -> str:
    """``$HELM``, then ``.tools/helm`` (scripts/get-helm), then ``helm`` on PATH."""
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no helm binary: run scripts/get-helm (it puts one in .tools/) or set HELM")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([find_helm(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def _value_args(values: Sequence[Path], sets: Mapping[str, str]) -> list[str]:
    args: list[str] = []
    for path in values:
        args += ["-f", str(path)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


@dataclass
class Rendered:
    """The output of ``helm template``, as text and as objects."""

    text: str
    objects: list[Obj]

    def all(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str | None = None) -> Obj:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def has(self, kind: str) -> bool:
        return bool(self.all(kind))


def render(
    values: Sequence[Path] = (),
    sets: Mapping[str, str] | None = None,
    *,
    release: str = "r",
    namespace: str = "rr",
) -> Rendered:
    """``helm template`` with the value files and ``--set`` pairs given; raises on failure."""
    args = ["template", release, str(CHART), "--namespace", namespace, *_value_args(values, sets or {})]
    text = helm(*args).stdout
    objects = [o for o in yaml.safe_load_all(text) if o]
    return Rendered(text, objects)


def render_error(values: Sequence[Path] = (), sets: Mapping[str, str] | None = None) -> str:
    """``helm template`` that must fail; returns its error output."""
    proc = helm("template", "r", str(CHART), *_value_args(values, sets or {}), check=False)
    assert proc.returncode != 0, f"helm template accepted the values: {sets}"
    return proc.stderr


def lint(
    values: Sequence[Path] = (), sets: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return helm("lint", "--strict", str(CHART), *_value_args(values, sets or {}), check=False)


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, Obj]]:
    """(object name, pod spec) of every Deployment and bare Pod."""
    for obj in rendered.objects:
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj["spec"]


def container(rendered: Rendered, deployment: str = "r-rerankd", name: str = "rerankd") -> Obj:
    spec = rendered.get("Deployment", deployment)["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return dict(found)
