"""The Dockerfiles, parsed with BuildKit's own parser (no Docker engine runs here to build them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from tests.helm.chart import CHART, ROOT

DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))


def instructions(path: Path) -> list[Any]:
    return list(dockerfile.parse_file(str(path)))


def base_images(path: Path) -> list[str]:
    """FROM images with ARG defaults substituted; stage names are skipped."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    for ins in instructions(path):
        if ins.cmd == "ARG" and "=" in ins.value[0]:
            key, _, default = ins.value[0].partition("=")
            args[key] = default
        elif ins.cmd == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], ins.value[0])
            if len(ins.value) == 3 and ins.value[1].upper() == "AS":
                stages.add(ins.value[2])
            if image not in stages:
                images.append(image)
    return images


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    images = base_images(path)
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{image} has no tag"
        assert "/" not in tag, f"{image} has no tag"
        assert tag != "latest", image
        assert re.search(r"\d+\.\d+", tag), f"{image} is not pinned to a version"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_rerankd_as_the_chart_user_without_healthcheck(path: Path) -> None:
    steps = instructions(path)
    final = steps[max(i for i, s in enumerate(steps) if s.cmd == "FROM") :]
    users = [s.value[0] for s in final if s.cmd == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    pod_security = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]
    assert int(uid) == pod_security["runAsUser"]
    assert not [s for s in steps if s.cmd == "HEALTHCHECK"]
    (entrypoint,) = [s.value for s in final if s.cmd == "ENTRYPOINT"]
    assert entrypoint == ("rerankd",)
    assert [s.value for s in final if s.cmd == "EXPOSE"] == [("8080",)]


def test_gpu_image_builds_on_vllm_with_the_vllm_extra() -> None:
    path = ROOT / "docker" / "Dockerfile.gpu"
    assert base_images(path)[0].startswith("vllm/vllm-openai:v")
    runs = " ".join(s.value[0] for s in instructions(path) if s.cmd == "RUN")
    assert "[vllm]" in runs


def test_cpu_image_installs_the_cpu_torch() -> None:
    path = ROOT / "docker" / "Dockerfile.cpu"
    assert all(image.startswith("python:") and "slim" in image for image in base_images(path))
    runs = " ".join(s.value[0] for s in instructions(path) if s.cmd == "RUN")
    assert "whl/cpu" in " ".join(s.value[0] for s in instructions(path) if s.cmd == "ARG")
    assert "torch==" in runs


def test_dockerignore_lets_in_exactly_what_the_images_copy() -> None:
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    for path in DOCKERFILES:
        for step in instructions(path):
            if step.cmd == "COPY" and not any(f.startswith("--from") for f in step.flags):
                sources = step.value[:-1]
                assert set(sources) <= allowed, (path.name, sources)
                assert all((ROOT / s).exists() for s in sources)
