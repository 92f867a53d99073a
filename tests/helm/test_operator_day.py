"""docs/deploy.md's "An operator's day", run: its values files written out, every `helm install`
and `helm upgrade` rendered with `helm template` (there is no cluster here), every `rerankd keys`
command run, the names `kubectl` uses checked against the rendered objects, and the keys file
served by rerankd as the pod serves its mounted Secret: keys that work, rotate and get revoked
over HTTP.

Lines that need a cluster (`kubectl`, `helm test`, `helm history`, curl through a port-forward)
are not run; the test says which kinds it saw, so a new kind of command cannot slip by unchecked."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helm.chart import CHART, ROOT, Rendered, container, helm
from tests.helm.test_runtime import loadable_part
from tests.servers import RerankdServer, rerankd_server

DOC = ROOT / "docs" / "deploy.md"
#: helm flags that only matter against a cluster; `helm template` takes the rest as they are.
CLUSTER_FLAGS = {"--wait": 0, "--timeout": 1, "--create-namespace": 0, "--atomic": 0}
#: Commands of the section that need a cluster, by their first two words.
NOT_RUN = {("helm", "test"), ("helm", "history"), ("curl", "-s")}


def section() -> str:
    text = DOC.read_text()
    start = text.index("## An operator's day")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def commands(text: str) -> list[str]:
    """The bash lines of the section, continuations joined, comments dropped."""
    out: list[str] = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def values_files(text: str, folder: Path) -> dict[str, Path]:
    """The yaml blocks whose first line names them (`# day-values.yaml`), written to folder."""
    files: dict[str, Path] = {}
    for block in blocks(text, "yaml"):
        first = block.splitlines()[0]
        if m := re.fullmatch(r"# ([\w.-]+\.yaml)", first):
            path = folder / m.group(1)
            path.write_text(block)
            files[m.group(1)] = path
    return files


def helm_template_args(words: list[str], files: dict[str, Path]) -> list[str]:
    """`helm install|upgrade REL helm/rerankd ...` as `helm template REL CHART ...`."""
    assert words[1] in {"install", "upgrade"}, words
    release, chart, rest = words[2], words[3], words[4:]
    assert chart == "helm/rerankd", chart
    args = ["template", release, str(CHART)]
    i = 0
    while i < len(rest):
        word = rest[i]
        if word in CLUSTER_FLAGS:
            i += 1 + CLUSTER_FLAGS[word]
            continue
        if word == "-f":
            args += ["-f", str(files[rest[i + 1]])]
            i += 2
            continue
        args.append(word)
        i += 1
    return args


@dataclass
class Day:
    """What the walk through the section has seen and made."""

    work: Path
    files: dict[str, Path]
    rendered: Rendered | None = None
    #: Secrets made by `kubectl create secret generic NAME --from-file=F`: name -> file name.
    secrets: dict[str, str] = field(default_factory=dict)
    mounted: Path | None = None  # the keys Secret's folder, as the kubelet keeps it
    server: RerankdServer | None = None
    kinds: set[str] = field(default_factory=set)
    checks: list[str] = field(default_factory=list)

    def names(self, kind: str) -> set[str]:
        assert self.rendered is not None, f"{kind} named before any helm install"
        return {o["metadata"]["name"] for o in self.rendered.all(kind)}


def run_keys_command(day: Day, line: str) -> None:
    """A `rerankd keys ...` line, in bash, with `rerankd` the rerankd under test."""
    shim = day.work / "bin" / "rerankd"
    if not shim.exists():
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rerankd "$@"\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line], cwd=day.work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"


def kubectl(day: Day, words: list[str]) -> None:
    """Check the names a kubectl line uses; apply a keys Secret to the mounted folder."""
    text = " ".join(words)
    if m := re.search(r"create secret generic (\S+) --from-file=(\S+)", text):
        name, source = m.groups()
        day.secrets[name] = source
        if day.mounted is not None:  # the kubelet swaps the mounted files
            shutil.copy(day.work / source, day.mounted / source)
        day.kinds.add("kubectl create secret")
        return
    if m := re.search(r"get secret (\S+) -o jsonpath='?\{\.data\.([\w-]+)\}'?", text):
        name, key = m.groups()
        assert day.rendered is not None
        assert key in day.rendered.get("Secret", name)["data"], text
        day.kinds.add("kubectl get secret")
        return
    for kind, pattern in (
        ("Deployment", r"deployment/(\S+)"),
        ("Service", r"service/(\S+)"),
        ("ScaledObject", r"get scaledobject (\S+)"),
    ):
        if m := re.search(pattern, text):
            assert m.group(1) in day.names(kind), text
            day.kinds.add(f"kubectl {kind}")
            return
    if re.search(r"get hpa\b", text):
        day.kinds.add("kubectl get hpa")
        return
    raise AssertionError(f"a kubectl line the test does not know: {text}")


def rendered_release(day: Day, words: list[str]) -> None:
    rendered_text = helm(*helm_template_args(words, day.files)).stdout
    day.rendered = Rendered(rendered_text, [o for o in yaml.safe_load_all(rendered_text) if o])
    day.kinds.add(f"helm {words[1]}")


def walk(day: Day) -> Iterator[str]:
    """Run the section line by line; yields after each line, for the caller's checks."""
    for line in commands(section()):
        words = shlex.split(line.split("|")[0]) if "|" in line else shlex.split(line)
        if words[:2] in (["helm", "install"], ["helm", "upgrade"]):
            rendered_release(day, words)
        elif words[0] == "rerankd":
            run_keys_command(day, line)
            day.kinds.add(f"rerankd keys {words[2]}")
        elif words[0] == "kubectl":
            kubectl(day, words)
        elif words[0] == "export" and "$(kubectl" in line:
            # `export VAR=$(kubectl ... | base64 -d)`: the kubectl part names a Secret and its key.
            kubectl(day, shlex.split(line[line.index("$(") + 2 :].split("|")[0]))
        else:
            assert tuple(words[:2]) in NOT_RUN, line
            day.kinds.add(" ".join(words[:2]))
        yield line


def keys_of(work: Path) -> dict[str, str]:
    """name -> key of the `NAME.key` files the section's `rerankd keys create` lines wrote."""
    return {p.stem: p.read_text().strip() for p in sorted(work.glob("*.key"))}


def status_of(server: RerankdServer, key: str) -> int:
    body: dict[str, Any] = {"query": "capital of France?", "documents": ["Paris", "Berlin"]}
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(server.url + "/v2/rerank", json=body, headers=headers, timeout=60).status_code


def expect(server: RerankdServer, keys: dict[str, str], wanted: dict[str, int], timeout: float = 10) -> None:
    """Wait until every key gets its status: the server reloads a changed keys file within ~2 s."""
    deadline = time.monotonic() + timeout
    while True:
        got = {name: status_of(server, keys[name]) for name in wanted}
        if got == wanted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == wanted, server.log()


def active_keys(work: Path) -> set[str]:
    """Names `rerankd keys list --json` reports active in the section's keys file."""
    listed = subprocess.run(
        [sys.executable, "-m", "rerankd", "keys", "list", "--keys-file", "keys.json", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {k["name"] for k in yaml.safe_load(listed) if k["status"] == "active"}


def start_server(day: Day, stack: ExitStack) -> RerankdServer:
    """rerankd as the pod runs it after the upgrade that mounts the keys Secret."""
    assert day.rendered is not None
    config = yaml.safe_load(day.rendered.get("ConfigMap", "rerank-rerankd")["data"]["rerankd.yaml"])
    mount_file = Path(config["keys_file"])
    day.mounted = day.work / "mounted"
    day.mounted.mkdir()
    shutil.copy(day.work / day.secrets[config_secret(day)], day.mounted / mount_file.name)
    config["keys_file"] = str(day.mounted / mount_file.name)
    # The packaged MiniLM instead of the hub model of the values file (no hub here).
    config.pop("models")
    path = day.work / "rerankd.yaml"
    path.write_text(yaml.safe_dump(loadable_part(config)))
    args = list(container(day.rendered, "rerank-rerankd")["args"])
    args[args.index("--config") + 1] = str(path)
    for flag in ("--host", "--port"):
        i = args.index(flag)
        del args[i : i + 2]
    env = {"HOME": str(day.work), "HF_HOME": str(day.work / "models"), "XDG_CACHE_HOME": str(day.work / "c")}
    server: RerankdServer = stack.enter_context(rerankd_server(args[1:], env=env))
    return server


def config_secret(day: Day) -> str:
    assert day.rendered is not None
    spec = day.rendered.get("Deployment", "rerank-rerankd")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "keys"]
    name: str = volume["secret"]["secretName"]
    assert name in day.secrets, f"the keys Secret {name} is mounted before it is created"
    return name


def test_the_operator_day_runs(tmp_path: Path) -> None:
    text = section()
    files = values_files(text, tmp_path)
    assert set(files) == {"day-values.yaml", "day-keda-values.yaml"}
    day = Day(tmp_path, files)
    with ExitStack() as stack:
        for line in walk(day):
            check(day, line, stack)
    assert day.checks == [
        "install: generated key",
        "scale: KEDA on queue depth",
        "keys file served",
        "rotation: active ['search-app', 'search-app-2']",
        "rotation: active ['search-app-2']",
        "upgrade: keys file kept",
    ], day.checks
    ran = {"rerankd keys create", "rerankd keys revoke", "rerankd keys list", "helm install", "helm upgrade"}
    ran |= {"kubectl get secret", "kubectl create secret", "kubectl ScaledObject", "kubectl Deployment"}
    assert ran <= day.kinds


def check(day: Day, line: str, stack: ExitStack) -> None:
    """What must hold after each step of the section."""
    rendered = day.rendered
    if line.startswith("helm install"):
        assert rendered is not None
        # A generated key, in the Secret the NOTES and the docs read.
        assert "rerank-rerankd-api-key" in day.names("Secret")
        assert not rendered.has("ScaledObject")
        day.checks.append("install: generated key")
    elif line.startswith("helm upgrade") and "auth.existingSecret" not in line:
        assert rendered is not None
        so = rendered.get("ScaledObject", "rerank-rerankd")
        assert "rerankd_queue_depth" in so["spec"]["triggers"][0]["metadata"]["query"]
        assert not rendered.has("HorizontalPodAutoscaler")
        day.checks.append("scale: KEDA on queue depth")
    elif line.startswith("helm upgrade") and day.server is None:
        assert "rerank-rerankd-api-key" not in day.names("Secret")  # the keys file replaces it
        day.server = start_server(day, stack)
        expect(day.server, keys_of(day.work), {"search-app": 200})
        day.checks.append("keys file served")
    elif line.startswith("helm upgrade"):
        assert config_secret(day) == "rerankd-keys"
        assert day.names("ScaledObject") == {"rerank-rerankd"}
        day.checks.append("upgrade: keys file kept")
    elif day.server is not None and "create secret generic" in line:
        keys, active = keys_of(day.work), active_keys(day.work)
        expect(day.server, keys, {name: 200 if name in active else 401 for name in keys})
        day.checks.append(f"rotation: active {sorted(active)}")


def test_the_walk_fails_on_a_name_the_chart_does_not_make(tmp_path: Path) -> None:
    """Guards the test above: a Secret name the chart does not render is caught."""
    day = Day(tmp_path, values_files(section(), tmp_path))
    rendered_release(day, shlex.split("helm install rerank helm/rerankd -n search -f day-values.yaml"))
    good = "kubectl -n search get secret rerank-rerankd-api-key -o jsonpath='{.data.api-key}'"
    kubectl(day, shlex.split(good))
    with pytest.raises(AssertionError, match="expected one Secret"):
        kubectl(day, shlex.split(good.replace("rerank-rerankd-api-key", "rerank-api-key")))
    with pytest.raises(AssertionError, match="api-key"):
        kubectl(day, shlex.split(good.replace(".data.api-key", ".data.key")))
    with pytest.raises(AssertionError):
        kubectl(day, shlex.split("kubectl -n search rollout status deployment/rerank"))
