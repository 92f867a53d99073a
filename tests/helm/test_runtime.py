"""What the chart hands rerankd works in rerankd: the config file loads, the container's command
line serves, and the `helm test` script passes against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerankd.adapters.registry import engine_names
from rerankd.config import Settings, load_settings
from tests.helm.chart import CI_VALUES, Rendered, container, render
from tests.servers import rerankd_server

CI = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}
ALL_SETS = {"default": [], **{name: [path] for name, path in CI.items()}}

#: Settings the chart writes that this rerankd version may not define yet: none today. Keys rerankd
#: defines are always validated; a key added here is validated only once rerankd defines it.
PENDING_KEYS: set[str] = set()
PENDING_ENGINES: set[str] = set()


def _engines() -> tuple[Any, ...]:
    """The engine names this rerankd knows: its engine table, and ``auto``."""
    return tuple(engine_names())


def rendered_config(rendered: Rendered) -> dict[str, Any]:
    data = yaml.safe_load(rendered.get("ConfigMap", "r-rerankd")["data"]["rerankd.yaml"])
    assert isinstance(data, dict)
    return data


def loadable_part(config: dict[str, Any]) -> dict[str, Any]:
    """The config less keys and engine values this rerankd does not know, which must be pending."""
    known = set(Settings.__struct_fields__)
    unknown = set(config) - known
    assert unknown <= PENDING_KEYS, (
        f"the chart writes settings rerankd does not have: {unknown - PENDING_KEYS}"
    )
    part = {k: v for k, v in config.items() if k in known}
    if part.get("engine") not in (None, *_engines()):
        assert part["engine"] in PENDING_ENGINES
        del part["engine"]
    return part


@pytest.mark.parametrize("name", sorted(ALL_SETS))
def test_rendered_config_file_loads_in_rerankd(name: str, tmp_path: Path) -> None:
    config = rendered_config(render(ALL_SETS[name]))
    path = tmp_path / "rerankd.yaml"
    path.write_text(yaml.safe_dump(loadable_part(config)))
    settings = load_settings(env={}, config_file=path)
    assert [m.name for m in settings.models] == [m["name"] for m in config.get("models", [])]


def test_container_command_serves_and_helm_test_passes(tmp_path: Path) -> None:
    """The CPU value set with auth off: the pod's args and env, run here, then the `helm test`
    pod's script (test_api_key runs it with auth on and the generated key)."""
    rendered = render([CI["cpu"]], {"auth.enabled": "false"})
    c = container(rendered)
    config = tmp_path / "rerankd.yaml"
    config.write_text(yaml.safe_dump(loadable_part(rendered_config(rendered))))

    args: list[str] = list(c["args"])
    assert args[0] == "serve"
    args[args.index("--config") + 1] = str(config)
    # The test harness binds loopback on a free port in place of the pod's 0.0.0.0:8080.
    for flag in ("--host", "--port"):
        i = args.index(flag)
        del args[i : i + 2]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert set(env) == {
        "HF_HOME",
        "HOME",
        "XDG_CACHE_HOME",
        "RERANKD_COMPILE_CACHE_DIR",
        "RERANKD_ONNX_CACHE_DIR",
    }
    env |= {
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "models"),
        "XDG_CACHE_HOME": str(tmp_path / "c"),
        "RERANKD_COMPILE_CACHE_DIR": str(tmp_path / "compile-cache"),
        "RERANKD_ONNX_CACHE_DIR": str(tmp_path / "onnx-cache"),
    }

    with rerankd_server(args[1:], env=env) as server:
        script = rendered.get("Pod", "r-rerankd-test")["spec"]["containers"][0]["args"][0]
        assert '"http://r-rerankd:8080"' in script
        script = script.replace("http://r-rerankd:8080", server.url)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr + server.log()
        assert "ranked:" in proc.stdout
        assert "'relevance_score'" in proc.stdout
