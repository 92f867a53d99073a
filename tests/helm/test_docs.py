"""The chart README lists exactly the values in values.yaml, with the same defaults, and its value
tables are the ones scripts/chart_readme.py makes from the comments in values.yaml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.helm.chart import CHART, ROOT

#: Maps documented as one value (their defaults are described in words).
FREE_FORM = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "redis.bundled.resources",
    "autoscaling.behavior",
}


def leaves(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and path not in FREE_FORM:
            yield from leaves(value, path)
        else:
            yield path, value


def readme_rows() -> dict[str, str]:
    """key -> default cell of the README's value tables."""
    rows: dict[str, str] = {}
    for line in (CHART / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([A-Za-z][\w.]*)` \| (.*?) \| .* \|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = m.group(2)
    return rows


def default_cell(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return f"`[{', '.join(value)}]`"
    return f"`{json.dumps(value)}`"


def test_every_value_is_documented_and_nothing_else() -> None:
    values = dict(leaves(yaml.safe_load((CHART / "values.yaml").read_text())))
    rows = readme_rows()
    assert sorted(set(values) - set(rows)) == [], "values missing from helm/rerankd/README.md"
    assert sorted(set(rows) - set(values)) == [], "README lists values that values.yaml lacks"


def test_documented_defaults_match_values_yaml() -> None:
    rows = readme_rows()
    for path, value in leaves(yaml.safe_load((CHART / "values.yaml").read_text())):
        if path not in FREE_FORM:
            assert rows[path] == default_cell(value), path


def test_deploy_guide_covers_the_operations() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    headings = ("Install on a GPU cluster", "Scale out", "Multi-GPU", "Upgrade", "Roll back", "Images")
    day = ("An operator.s day", "Install", "Watch", "Scale", "Rotate a key")
    for heading in (*headings, *day):
        assert re.search(rf"^#+ .*{heading}", text, re.M | re.I), heading
    assert "cannot be built" in text  # no Docker engine here: the guide must say so


def _readme_script(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "chart_readme.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_the_values_tables_are_generated_from_values_yaml() -> None:
    proc = _readme_script("--check")
    assert proc.returncode == 0, proc.stderr  # run scripts/chart_readme.py after editing values.yaml


def test_the_check_sees_a_changed_comment_and_a_missing_one(tmp_path: Path) -> None:
    """Guards the test above against a check that passes everything."""
    chart = tmp_path / "rerankd"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    text = values.read_text()
    values.write_text(text.replace("# -- Service type.", "# -- The Service's type."))
    proc = _readme_script("--check", "--chart", str(chart))
    assert proc.returncode == 1
    assert "not current" in proc.stderr
    assert _readme_script("--chart", str(chart)).returncode == 0  # regenerate
    assert "| `service.type` | `ClusterIP` | The Service's type. |" in (chart / "README.md").read_text()

    values.write_text(text.replace("  # -- Service type.\n", ""))
    proc = _readme_script("--check", "--chart", str(chart))
    assert proc.returncode != 0
    assert "no `# --` description for: service.type" in proc.stderr
