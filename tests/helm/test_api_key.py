"""The API key the chart keeps when no keys file is given: generated (or given) into a Secret,
passed to rerankd as RERANKD_API_KEY, and the one key a server started like the pod accepts."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helm.chart import CI_VALUES, Rendered, container, render
from tests.helm.test_runtime import loadable_part, rendered_config
from tests.servers import rerankd_server

CI = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}
SECRET = "r-rerankd-api-key"
#: What the chart generates: rerankd's key prefix and 43 characters, as `rerankd keys create` makes.
KEY_SHAPE = re.compile(r"^rk-[A-Za-z0-9]{43}$")


def secret_value(rendered: Rendered, name: str, key: str) -> str:
    return base64.b64decode(rendered.get("Secret", name)["data"][key]).decode()


def pod_env(rendered: Rendered) -> dict[str, str]:
    """The container's env as the kubelet would set it: plain values, and secretKeyRef values
    read from the Secrets of the same render."""
    env: dict[str, str] = {}
    for e in container(rendered).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_value(rendered, ref["name"], ref["key"])
    return env


def test_a_default_install_generates_a_key_of_the_right_shape() -> None:
    first, second = render(), render()
    key = secret_value(first, SECRET, "api-key")
    assert KEY_SHAPE.match(key), key
    assert secret_value(second, SECRET, "api-key") != key  # random per install, not a fixed default
    secret = first.get("Secret", SECRET)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    env = {e["name"]: e for e in container(first)["env"]}
    assert env["RERANKD_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "api-key"}
    assert rendered_config(first)["auth"] == "on"
    # The key is in the Secret only: not in the ConfigMap, the pod spec or the test pod.
    others = [o for o in first.objects if o is not secret]
    assert key not in yaml.safe_dump_all(others)


def test_a_given_key_is_used() -> None:
    rendered = render(sets={"auth.apiKey": "rk-given-key-1"})
    assert secret_value(rendered, SECRET, "api-key") == "rk-given-key-1"


def test_a_keys_file_replaces_the_static_key() -> None:
    """rerankd refuses static keys beside a keys file, so the chart never renders both."""
    for rendered in (render([CI["scaling"]]), render([CI["external-redis"]])):
        assert SECRET not in [s["metadata"]["name"] for s in rendered.all("Secret")]
        assert "RERANKD_API_KEY" not in {e["name"] for e in container(rendered)["env"]}
        assert "keys_file" in rendered_config(rendered)


def test_generate_key_false_leaves_keys_to_redis() -> None:
    rendered = render(sets={"auth.generateKey": "false"})
    assert not rendered.has("Secret")
    assert rendered_config(rendered)["auth"] == "on"


def test_the_key_in_the_secret_is_the_one_the_server_accepts(tmp_path: Path) -> None:
    """The CPU value set run as its pod would be: args, env with the Secret's key resolved; then
    the `helm test` pod's script with its own env."""
    rendered = render([CI["cpu"]])
    key = secret_value(rendered, SECRET, "api-key")
    config = tmp_path / "rerankd.yaml"
    config.write_text(yaml.safe_dump(loadable_part(rendered_config(rendered))))
    args: list[str] = list(container(rendered)["args"])
    args[args.index("--config") + 1] = str(config)
    for flag in ("--host", "--port"):  # loopback on a free port instead of 0.0.0.0:8080
        i = args.index(flag)
        del args[i : i + 2]
    env = pod_env(rendered)
    assert env["RERANKD_API_KEY"] == key
    env |= {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "models"), "XDG_CACHE_HOME": str(tmp_path / "c")}
    body: dict[str, Any] = {"query": "capital of France?", "documents": ["Paris", "bananas"]}

    with rerankd_server(args[1:], env=env) as server:
        url = server.url + "/v2/rerank"
        assert httpx.post(url, json=body, timeout=60).status_code == 401
        wrong = {"authorization": "Bearer rk-" + "x" * 43}
        assert httpx.post(url, json=body, headers=wrong, timeout=60).status_code == 401
        ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["results"]) == 2

        test_pod = rendered.get("Pod", "r-rerankd-test")["spec"]["containers"][0]
        script = test_pod["args"][0].replace("http://r-rerankd:8080", server.url)
        ref = test_pod["env"][0]["valueFrom"]["secretKeyRef"]
        pod_env_ = {"RERANKD_API_KEY": secret_value(rendered, ref["name"], ref["key"])}
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=pod_env_
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr + server.log()
        assert "ranked:" in proc.stdout
