"""Values that break values.schema.json, or combine badly, are rejected by lint and template."""

from __future__ import annotations

import json

import pytest

from tests.helm.chart import CHART, lint, render_error

# (--set pairs, a fragment the error must contain)
SCHEMA_VIOLATIONS: list[tuple[dict[str, str], str]] = [
    ({"gpu.count": "0"}, "/gpu/count"),
    ({"gpu.enabled": "yes"}, "/gpu/enabled"),
    ({"image.tag": "latest"}, "/image/tag"),
    ({"image.digest": "sha256:abc"}, "/image/digest"),
    ({"unknownTopLevel": "1"}, "unknownTopLevel"),
    ({"gpu.typo": "1"}, "typo"),
    ({"modelCache.type": "hostPath"}, "/modelCache/type"),
    ({"redis.external.url": "http://cache:6379"}, "/redis/external/url"),
    ({"service.port": "70000"}, "/service/port"),
    ({"service.type": "Ingress"}, "/service/type"),
    ({"models[0].name": "has space", "models[0].path": "x"}, "/models/0/name"),
    ({"models[0].path": "Qwen/Qwen3-Reranker-0.6B"}, "/models/0"),
    ({"models[0].name": "a", "models[0].path": "b", "models[0].format": "gguf"}, "/models/0/format"),
    ({"terminationGracePeriodSeconds": "10"}, "/terminationGracePeriodSeconds"),
    ({"probes.liveness.path": "health"}, "/probes/liveness/path"),
    ({"probes.startup.failureThreshold": "0"}, "/probes/startup/failureThreshold"),
    ({"resources.limits.memory": "lots"}, "/resources/limits/memory"),
    ({"auth.secretKey": "no/slash"}, "/auth/secretKey"),
    ({"autoscaling.minReplicas": "0"}, "/autoscaling/minReplicas"),
    ({"redis.bundled.maxmemory": "1 GB"}, "/redis/bundled/maxmemory"),
    ({"serviceMonitor.interval": "often"}, "/serviceMonitor/interval"),
    ({"config.Bad-Key": "1"}, "Bad-Key"),
    ({"autoscaling.keda.serverAddress": "prometheus:9090"}, "/autoscaling/keda/serverAddress"),
    ({"autoscaling.queueDepthPerPod": "0"}, "/autoscaling/queueDepthPerPod"),
    ({"auth.apiKey": "has space"}, "/auth/apiKey"),
]

# Combinations the chart's own checks refuse, with the message that says what to change.
RENDER_FAILURES: list[tuple[dict[str, str], str]] = [
    ({"config.tensor_parallel_size": "4", "gpu.count": "2"}, "raise gpu.count"),
    ({"preStopSleepSeconds": "20", "terminationGracePeriodSeconds": "45"}, "must exceed preStopSleepSeconds"),
    ({"config.shutdown_grace_s": "60"}, "config.shutdown_grace_s"),
    ({"redis.external.url": "redis://:pw@cache:6379"}, "holds a password"),
    ({"redis.external.existingSecret": "s"}, "needs redis.external.url"),
    ({"modelCache.type": "existingClaim"}, "needs modelCache.existingClaim"),
    ({"config.port": "9000"}, "config.port is set by the chart"),
    ({"auth.enabled": "true", "auth.keysFile": "k", "auth.existingSecret": "s"}, "not both"),
    ({"autoscaling.enabled": "true", "autoscaling.keda.enabled": "true"}, "autoscaling.keda.serverAddress"),
    (
        {"autoscaling.enabled": "true", "autoscaling.queueDepthPerPod": "null"},
        "the HPA needs a metric",
    ),
    ({"autoscaling.enabled": "true", "autoscaling.minReplicas": "5"}, "must not exceed"),
]


def _ids(cases: list[tuple[dict[str, str], str]]) -> list[str]:
    return [",".join(sets) for sets, _ in cases]


@pytest.mark.parametrize(("sets", "fragment"), SCHEMA_VIOLATIONS, ids=_ids(SCHEMA_VIOLATIONS))
def test_schema_rejects(sets: dict[str, str], fragment: str) -> None:
    err = render_error(sets=sets)
    assert "don't meet the specifications of the schema" in err, err
    assert fragment in err, err


@pytest.mark.parametrize(("sets", "fragment"), RENDER_FAILURES, ids=_ids(RENDER_FAILURES))
def test_render_checks_reject(sets: dict[str, str], fragment: str) -> None:
    assert fragment in render_error(sets=sets)


@pytest.mark.parametrize(("sets", "fragment"), SCHEMA_VIOLATIONS[:6], ids=_ids(SCHEMA_VIOLATIONS[:6]))
def test_lint_strict_fails_on_schema_violations(sets: dict[str, str], fragment: str) -> None:
    # helm 4's lint only logs a template's `fail`, so the render checks above are tested by
    # `helm template` (what install and upgrade run); schema violations fail lint too.
    proc = lint(sets=sets)
    assert proc.returncode != 0
    assert "1 chart(s) failed" in proc.stdout + proc.stderr
    assert fragment in proc.stdout + proc.stderr


OPEN_OBJECTS = {f"/properties/{k}/items" for k in ("models", "extraEnv", "extraVolumes", "extraVolumeMounts")}


def test_schema_is_valid_json_and_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def closed(node: object, path: str) -> None:
        """Every object with declared properties rejects unknown ones, except pass-through lists
        (models that rerankd may extend, Kubernetes EnvVars, Volumes, VolumeMounts)."""
        if isinstance(node, dict):
            if "properties" in node and path not in OPEN_OBJECTS:
                assert node.get("additionalProperties") is False, path
            for key, child in node.items():
                closed(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                closed(child, f"{path}/{i}")

    closed(schema, "")
