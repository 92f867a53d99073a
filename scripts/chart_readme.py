#!/usr/bin/env python3
"""Write the values tables of helm/rerankd/README.md from helm/rerankd/values.yaml.

values.yaml documents each value in the comment above it: a block that starts with ``# --``
(continued by the ``#`` lines below it, up to the key). A map whose key has such a block is one
row (its whole default shown); a map without one is documented key by key. ``# @section Title``
starts a new table. Every value must be documented: a key without a description is an error.

    python scripts/chart_readme.py          # rewrite the README between its markers
    python scripts/chart_readme.py --check  # exit 1 when the README is not current
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "rerankd"
START = "<!-- values:start (made by scripts/chart_readme.py from values.yaml; edit the comments there) -->"
END = "<!-- values:end -->"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w-]*):(?: |$)")
_DESC = re.compile(r"^ *# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")
_SECTION = re.compile(r"^# @section (?P<title>.+)$")


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)


def default_cell(value: Any) -> str:
    """A default as the README shows it: strings bare, lists of strings in brackets, else JSON."""
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return f"`[{', '.join(value)}]`"
    return f"`{json.dumps(value)}`"


def _lookup(data: dict[str, Any], path: list[str]) -> Any:
    node: Any = data
    for part in path:
        node = node[part]
    return node


def _comment(line: str, desc: list[str] | None) -> tuple[bool, list[str] | None]:
    """(whether the line is a comment, the description so far): ``# --`` starts one, the ``#``
    lines after it continue it."""
    if m := _DESC.match(line):
        return True, [m["text"].strip()]
    if m := _MORE.match(line):
        if desc is not None and m["text"] and not m["text"].startswith("@"):
            desc.append(m["text"].strip())
        return True, desc
    return False, desc


def sections(text: str) -> list[Section]:
    data = yaml.safe_load(text)
    out: list[Section] = []
    missing: list[str] = []
    stack: list[tuple[int, str]] = []
    desc: list[str] | None = None
    whole: str | None = None  # path of a map documented as one row: its keys are skipped
    for line in text.splitlines():
        if m := _SECTION.match(line):
            out.append(Section(m["title"].strip()))
            desc = None
            continue
        comment, desc = _comment(line, desc)
        if comment:
            continue
        m = _KEY.match(line)
        if not m:
            desc = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        path = [k for _, k in stack]
        dotted = ".".join(path)
        if whole and dotted.startswith(whole + "."):
            desc = None
            continue
        value = _lookup(data, path)
        is_map = isinstance(value, dict) and bool(value)
        if is_map and desc is None:
            continue  # documented key by key
        if desc is None:
            missing.append(dotted)
            continue
        if not out:
            raise SystemExit("values.yaml: a value comes before the first `# @section`")
        cell = " ".join(desc).replace("|", "\\|")
        out[-1].rows.append((dotted, default_cell(value), cell))
        whole = dotted if is_map else None
        desc = None
    if missing:
        raise SystemExit("values.yaml: no `# --` description for: " + ", ".join(missing))
    return out


def tables(text: str) -> str:
    parts: list[str] = []
    for section in sections(text):
        parts += [f"### {section.title}", "", "| key | default | description |", "| --- | --- | --- |"]
        parts += [f"| `{key}` | {default} | {desc} |" for key, default, desc in section.rows]
        parts.append("")
    return "\n".join(parts).rstrip("\n")


def rendered_readme(readme: str, values: str) -> str:
    head, sep, rest = readme.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"README.md lacks the markers {START!r} ... {END!r}")
    return f"{head}{START}\n\n{tables(values)}\n\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is current")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart folder (default: helm/rerankd)")
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    new = rendered_readme(readme, (args.chart / "values.yaml").read_text())
    if args.check:
        if new != readme:
            print(f"{readme_path} is not current: run python scripts/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
