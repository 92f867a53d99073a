"""Scaling on the queue depth: the chart's HPA with an External metric, or a KEDA ScaledObject
with a Prometheus trigger; off by default, and never both."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest

from tests.helm.chart import CI_VALUES, render
from tests.helm.keda import SCALED_OBJECT

CI = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}


def test_no_autoscaler_by_default() -> None:
    rendered = render()
    assert not rendered.has("HorizontalPodAutoscaler")
    assert not rendered.has("ScaledObject")
    assert rendered.get("Deployment")["spec"]["replicas"] == 1


def test_the_hpa_scales_on_queue_depth_not_cpu_by_default() -> None:
    rendered = render(sets={"autoscaling.enabled": "true"})
    (metric,) = rendered.get("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "rerankd_queue_depth",
        "selector": {"matchLabels": {"service": "r-rerankd"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "512"}
    assert "replicas" not in rendered.get("Deployment")["spec"]


def test_cpu_and_further_metrics_are_added_when_asked() -> None:
    sets = {
        "autoscaling.enabled": "true",
        "autoscaling.targetCPUUtilizationPercentage": "70",
        "autoscaling.queueDepthPerPod": "100",
        "autoscaling.external.matchLabels.job": "rerank",
    }
    metrics = render(sets=sets).get("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["External", "Resource"]
    assert metrics[0]["external"]["metric"]["selector"] == {"matchLabels": {"job": "rerank"}}
    assert metrics[0]["external"]["target"]["averageValue"] == "100"
    assert metrics[1]["resource"]["target"]["averageUtilization"] == 70


def test_keda_scaled_object_queries_this_release_queue_depth() -> None:
    rendered = render([CI["keda"]])
    assert not rendered.has("HorizontalPodAutoscaler")  # KEDA makes its own; two would fight
    so = rendered.get("ScaledObject", "r-rerankd")
    jsonschema.validate(so, SCALED_OBJECT)
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "r-rerankd"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 600}
    }
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert meta["query"] == 'sum(rerankd_queue_depth{namespace="rr", service="r-rerankd"})'
    assert meta["threshold"] == "512"
    # The labels the query selects are the ones the ServiceMonitor's scrape gives the series:
    # Prometheus sets `service` to the name of the Service the ServiceMonitor selects.
    monitor = rendered.get("ServiceMonitor")
    service = rendered.get("Service", "r-rerankd")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["rr"]}
    assert re.search(rf'service="{service["metadata"]["name"]}"', meta["query"])
    assert "replicas" not in rendered.get("Deployment")["spec"]


def test_keda_takes_a_query_and_an_authentication() -> None:
    sets = {
        "autoscaling.keda.query": "sum(rerankd_queue_depth)",
        "autoscaling.keda.authenticationRef": "prom",
    }
    so = render([CI["keda"]], sets).get("ScaledObject")
    jsonschema.validate(so, SCALED_OBJECT)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["metadata"]["query"] == "sum(rerankd_queue_depth)"
    assert trigger["authenticationRef"] == {"name": "prom"}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "triggers", 0, "metadata", "threshold"), 512),  # KEDA wants strings here
        (("spec", "scaleTargetRef", "nmae"), "r-rerankd"),
        (("spec", "minReplicas"), 1),  # the HPA's field name, not KEDA's
        (("spec", "triggers", 0, "metricType"), "Average"),
    ],
)
def test_the_keda_schema_rejects_broken_objects(path: tuple[str | int, ...], value: object) -> None:
    """Guards the checks above against a schema that passes everything."""
    so = copy.deepcopy(render([CI["keda"]]).get("ScaledObject"))
    node: Any = so
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCALED_OBJECT)
