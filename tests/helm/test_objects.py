"""Assertions on the objects the chart renders: GPUs, secrets, probes, security, scaling, Redis."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART, CI_VALUES, Rendered, container, helm, pod_specs, render, render_error

Obj = dict[str, Any]

CI = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}
ALL_SETS = {"default": [], **{name: [path] for name, path in CI.items()}}


@pytest.fixture(scope="module", params=sorted(ALL_SETS))
def any_render(request: pytest.FixtureRequest) -> Rendered:
    return render(ALL_SETS[request.param])


def config_file(rendered: Rendered) -> Obj:
    data = yaml.safe_load(rendered.get("ConfigMap", "r-rerankd")["data"]["rerankd.yaml"])
    assert isinstance(data, dict)
    return data


def env_of(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- GPUs ------------------------------------------------------------------------------------


def test_gpu_is_requested_and_limited_by_default() -> None:
    c = container(render())
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["image"].endswith(":0.1.0-gpu")


def test_multi_gpu_pod_gets_as_many_gpus_as_tensor_parallel_ranks() -> None:
    rendered = render([CI["multi-gpu"]])
    c = container(rendered)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    cfg = config_file(rendered)
    assert cfg["engine"] == "vllm"
    assert cfg["tensor_parallel_size"] == 2
    spec = rendered.get("Deployment", "r-rerankd")["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_gpu_resource_name_is_configurable() -> None:
    c = container(render(sets={"gpu.resourceName": "amd.com/gpu", "gpu.count": "4"}))
    assert c["resources"]["limits"]["amd.com/gpu"] == 4
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_cpu_only_requests_no_gpu_and_uses_the_cpu_image() -> None:
    rendered = render([CI["cpu"]])
    c = container(rendered)
    for part in ("limits", "requests"):
        assert not any("gpu" in k for k in c["resources"][part]), c["resources"]
    assert c["resources"]["limits"]["cpu"] == "4"
    assert c["image"] == "rerankd:0.1.0-cpu"
    assert "/dev/shm" not in [m["mountPath"] for m in c["volumeMounts"]]
    assert config_file(rendered)["device"] == "cpu"


def test_an_image_digest_pins_the_image() -> None:
    digest = "sha256:" + "ab" * 32
    c = container(render(sets={"image.repository": "registry.example/rerankd", "image.digest": digest}))
    assert c["image"] == f"registry.example/rerankd@{digest}"


# -- secrets: API keys, hub token, Redis password ----------------------------------------------


def _keys_volume(rendered: Rendered) -> tuple[Obj, Obj]:
    spec = rendered.get("Deployment", "r-rerankd")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "keys"]
    (mount,) = [m for m in container(rendered)["volumeMounts"] if m["name"] == "keys"]
    return volume, mount


def _assert_not_in_env_or_args(c: Obj, secret_name: str, text: str | None = None) -> None:
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef", {})
        assert ref.get("name") != secret_name, e
        if text:
            assert text not in str(e.get("value", "")), e
    for source in c.get("envFrom", []):
        assert source.get("secretRef", {}).get("name") != secret_name
    if text:
        assert all(text not in str(a) for a in [*c.get("args", []), *c.get("command", [])])


def test_keys_from_an_existing_secret_are_mounted_as_a_file() -> None:
    rendered = render([CI["external-redis"]])
    volume, mount = _keys_volume(rendered)
    assert volume["secret"]["secretName"] == "rerankd-api-keys"
    assert volume["secret"]["items"] == [{"key": "keys.yaml", "path": "keys.yaml"}]
    assert mount == {"name": "keys", "mountPath": "/etc/rerankd/keys", "readOnly": True}
    assert "subPath" not in mount  # a subPath mount would never see a rotated key
    assert config_file(rendered)["keys_file"] == "/etc/rerankd/keys/keys.yaml"
    assert config_file(rendered)["auth"] == "on"
    _assert_not_in_env_or_args(container(rendered), "rerankd-api-keys")
    assert not [s for s in rendered.all("Secret") if s["metadata"]["name"].endswith("-keys")]


def test_keys_from_values_live_only_in_the_secret() -> None:
    values = CI["scaling"]
    keys_text = yaml.safe_load(values.read_text())["auth"]["keysFile"]
    rendered = render([values])
    secret = rendered.get("Secret", "r-rerankd-keys")
    assert base64.b64decode(secret["data"]["keys"]).decode() == keys_text
    volume, mount = _keys_volume(rendered)
    assert volume["secret"]["secretName"] == "r-rerankd-keys"
    assert config_file(rendered)["keys_file"] == f"{mount['mountPath']}/keys"
    _assert_not_in_env_or_args(container(rendered), "r-rerankd-keys", "sha256:0f1e2d3c")
    # Nowhere else in the manifest: not in the ConfigMap, not in annotations.
    others = [o for o in rendered.objects if o is not secret]
    assert "0f1e2d3c" not in yaml.safe_dump_all(others)


def test_without_auth_rerankd_runs_with_auth_off_and_mounts_no_keys() -> None:
    rendered = render()
    assert config_file(rendered) == {"auth": "off"}
    assert "keys" not in [
        v["name"] for v in rendered.get("Deployment")["spec"]["template"]["spec"]["volumes"]
    ]


def test_hub_token_comes_from_a_secret() -> None:
    c = container(render([CI["external-redis"]]))
    token = env_of(c)["HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    rendered = render(sets={"hub.token": "hf_secret_value"})
    assert "hf_secret_value" not in yaml.safe_dump(rendered.get("Deployment"))
    secret = rendered.get("Secret", "r-rerankd-hub")
    assert base64.b64decode(secret["data"]["token"]) == b"hf_secret_value"
    assert env_of(container(rendered))["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "r-rerankd-hub"


def test_external_redis_password_is_expanded_from_a_secret() -> None:
    rendered = render([CI["external-redis"]])
    env = container(rendered)["env"]
    names = [e["name"] for e in env]
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("RERANKD_REDIS_URL")
    password = env[names.index("REDIS_PASSWORD")]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "password"}
    url = env[names.index("RERANKD_REDIS_URL")]["value"]
    assert url == "rediss://default:$(REDIS_PASSWORD)@redis.data.svc.cluster.local:6380/2"
    assert not rendered.has("Secret")
    assert not [d for d in rendered.all("Deployment") if d["metadata"]["name"].endswith("-redis")]


def test_external_redis_password_from_values_goes_into_a_chart_secret() -> None:
    rendered = render(sets={"redis.external.url": "redis://cache:6379/0", "redis.external.password": "pw1"})
    secret = rendered.get("Secret", "r-rerankd-redis")
    assert base64.b64decode(secret["data"]["redis-password"]) == b"pw1"
    env = env_of(container(rendered))
    assert env["RERANKD_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@cache:6379/0"
    assert "pw1" not in yaml.safe_dump(rendered.get("Deployment"))


def test_external_redis_without_password_is_passed_as_is() -> None:
    env = env_of(container(render(sets={"redis.external.url": "redis://cache:6379/1"})))
    assert env["RERANKD_REDIS_URL"]["value"] == "redis://cache:6379/1"
    assert "REDIS_PASSWORD" not in env


def test_bundled_redis_is_shared_by_the_replicas() -> None:
    rendered = render([CI["scaling"]])
    redis = rendered.get("Deployment", "r-rerankd-redis")
    service = rendered.get("Service", "r-rerankd-redis")
    pod_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert matches(service["spec"]["selector"], pod_labels)
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"]["type"] == "Recreate"
    url = env_of(container(rendered))["RERANKD_REDIS_URL"]["value"]
    assert (
        url
        == f"redis://:$(REDIS_PASSWORD)@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    )
    (rc,) = redis["spec"]["template"]["spec"]["containers"]
    args = rc["args"]
    assert args[args.index("--maxmemory") + 1] == "2gb"
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert rc["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "r-rerankd-redis", "key": "redis-password"}
    password = base64.b64decode(rendered.get("Secret", "r-rerankd-redis")["data"]["redis-password"])
    assert len(password) == 32
    # rerankd's Service never selects the Redis pod, and the reverse.
    rerankd_service = rendered.get("Service", "r-rerankd")
    assert not matches(rerankd_service["spec"]["selector"], pod_labels)


def test_bundled_and_external_redis_exclude_each_other() -> None:
    err = render_error(sets={"redis.bundled.enabled": "true", "redis.external.url": "redis://x:6379"})
    assert "either redis.bundled.enabled or redis.external.url" in err


# -- probes and lifecycle ----------------------------------------------------------------------


def test_probe_paths_and_a_startup_budget_for_model_loading(any_render: Rendered) -> None:
    c = container(any_render)
    assert c["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["command"] == ["rerankd"]
    assert c["args"] == [
        "serve",
        "--config",
        "/etc/rerankd/config/rerankd.yaml",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
    ]


def test_upgrades_keep_capacity_and_drain_requests(any_render: Rendered) -> None:
    deployment = any_render.get("Deployment", "r-rerankd")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container(any_render)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # rerankd drains in-flight requests for 30 s after SIGTERM (uvicorn graceful shutdown).
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 30


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(sets: dict[str, str]) -> str:
        annotations = render(sets=sets).get("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config.max_batch_tokens": "8192"})


# -- security ------------------------------------------------------------------------------------


def test_every_pod_runs_non_root_read_only_without_capabilities(any_render: Rendered) -> None:
    specs = list(pod_specs(any_render))
    assert specs
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "add" not in sc["capabilities"], (name, c["name"])
            assert not sc.get("privileged", False)


def test_the_service_account_mounts_no_token(any_render: Rendered) -> None:
    account = any_render.get("ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = any_render.get("Deployment", "r-rerankd")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_writable_volumes_only_where_rerankd_writes(any_render: Rendered) -> None:
    writable = {m["mountPath"] for m in container(any_render)["volumeMounts"] if not m.get("readOnly")}
    assert writable <= {"/models", "/tmp", "/dev/shm"}, writable
    assert "/tmp" in writable


def test_a_pre_populated_volume_is_mounted_read_only_and_offline() -> None:
    rendered = render([CI["multi-gpu"]])
    c = container(rendered)
    (models,) = [m for m in c["volumeMounts"] if m["name"] == "models"]
    assert models["readOnly"] is True
    assert models["mountPath"] == "/models"
    env = env_of(c)
    assert env["HF_HOME"]["value"] == "/models"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    pod = rendered.get("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"] == {"claimName": "reranker-weights", "readOnly": True}
    assert config_file(rendered)["models"][0]["path"].startswith("/models/")


def test_a_chart_made_model_cache_claim_is_used_and_kept() -> None:
    rendered = render([CI["external-redis"]])
    pvc = rendered.get("PersistentVolumeClaim", "r-rerankd-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = rendered.get("Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    assert volume["persistentVolumeClaim"]["claimName"] == "r-rerankd-models"


# -- scaling and monitoring -----------------------------------------------------------------------


def test_selectors_match_the_rerankd_pods(any_render: Rendered) -> None:
    deployment = any_render.get("Deployment", "r-rerankd")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert matches(any_render.get("Service", "r-rerankd")["spec"]["selector"], labels)
    if any_render.has("PodDisruptionBudget"):
        assert matches(any_render.get("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)


def test_hpa_service_monitor_and_network_policy() -> None:
    rendered = render([CI["scaling"]])
    deployment = rendered.get("Deployment", "r-rerankd")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count

    hpa = rendered.get("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "r-rerankd",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]

    # kubernetes-validate has no schema for this CRD, so its shape is checked here.
    monitor = rendered.get("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = rendered.get("Service", "r-rerankd")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert not set(monitor["spec"]) - {"selector", "namespaceSelector", "endpoints"}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["rr"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]

    policy = rendered.get("NetworkPolicy", "r-rerankd")
    assert matches(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in ingress["from"] if "namespaceSelector" in p]
    assert {"kubernetes.io/metadata.name": "monitoring"} in namespaces
    test_pod = rendered.get("Pod")
    assert any(
        matches(p.get("podSelector", {}).get("matchLabels", {"-": "-"}), test_pod["metadata"]["labels"])
        for p in ingress["from"]
    )
    redis_labels = rendered.get("Deployment", "r-rerankd-redis")["spec"]["template"]["metadata"]["labels"]
    egress_peers = [p for rule in policy["spec"]["egress"] for p in rule.get("to", [])]
    assert any(
        matches(p["podSelector"]["matchLabels"], redis_labels) for p in egress_peers if "podSelector" in p
    )
    assert {"port": 443, "protocol": "TCP"} in [p for rule in policy["spec"]["egress"] for p in rule["ports"]]

    redis_policy = rendered.get("NetworkPolicy", "r-rerankd-redis")
    assert matches(redis_policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    (peer,) = redis_policy["spec"]["ingress"][0]["from"]
    assert matches(peer["podSelector"]["matchLabels"], labels)


def test_optional_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in render().objects}
    assert kinds == {"ConfigMap", "Deployment", "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"}


def test_notes_show_how_to_call_the_service() -> None:
    out = helm("install", "r", str(CHART), "--dry-run=client", "--namespace", "rr").stdout
    notes = out[out.index("NOTES:") :]
    assert "http://r-rerankd.rr.svc:8080" in notes
    assert "/v2/rerank" in notes
    assert '"model": "all-MiniLM-L6-v2"' in notes
    assert "WARNING: auth.enabled is false" in notes
    out = helm("install", "r", str(CHART), "--dry-run=client", "-n", "rr", "-f", str(CI["scaling"])).stdout
    notes = out[out.index("NOTES:") :]
    assert "authorization: Bearer" in notes
    assert '"model": "qwen3-reranker"' in notes
    assert "WARNING" not in notes
