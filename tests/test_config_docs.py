"""The settings are the one source of ``rerankd serve``'s flags, their env names, defaults and help,
and of what the docs may name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rerankd import cli
from rerankd.adapters.vllm_engine import VLLMOptions as ReExported
from rerankd.config import (
    ENV_PREFIX,
    GROUPS,
    Flag,
    NoFlag,
    Option,
    Settings,
    VLLMOptions,
    flag_spec,
    load_settings,
    options,
)

ROOT = Path(__file__).parents[1]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", ROOT / "helm" / "rerankd" / "README.md"]
OPTIONS = {opt.field: opt for opt in options()}


def test_every_setting_has_a_flag_or_says_why_not() -> None:
    missing = [f for f in Settings.__struct_fields__ if flag_spec(f) is None]
    assert not missing, f"give these settings a Flag(...) or a NoFlag(why) in their annotation: {missing}"
    flagged = [f for f in Settings.__struct_fields__ if isinstance(flag_spec(f), Flag)]
    assert sorted(OPTIONS) == sorted(flagged)
    unflagged = {f for f in Settings.__struct_fields__ if isinstance(flag_spec(f), NoFlag)}
    assert unflagged == {"fault_devices", "fault_after_batches"}


def test_options_are_consistent() -> None:
    flags = [opt.flag for opt in options()]
    assert len(flags) == len(set(flags))
    assert all(opt.group in GROUPS for opt in options())
    assert [GROUPS[o.group] for o in options()] == sorted(
        (GROUPS[o.group] for o in options()), key=list(GROUPS.values()).index
    )
    defaults = Settings()
    for opt in options():
        assert opt.env == ENV_PREFIX + opt.field.upper()
        assert opt.default == getattr(defaults, opt.field)
        # "unset" explains a missing value; a real default speaks for itself.
        if opt.spec.unset is not None:
            assert opt.default in (None, (), {}), opt.field


def test_vllm_options_are_declared_once() -> None:
    assert ReExported is VLLMOptions
    assert issubclass(Settings, VLLMOptions)
    s = load_settings({"dtype": "float16", "max_num_seqs": 7, "enforce_eager": True}, env={})
    opts = VLLMOptions.from_settings(s)
    assert type(opts) is VLLMOptions
    assert (opts.dtype, opts.max_num_seqs, opts.enforce_eager) == ("float16", 7, True)
    assert {f: getattr(opts, f) for f in VLLMOptions.__struct_fields__} == {
        f: getattr(s, f) for f in VLLMOptions.__struct_fields__
    }


def test_env_names_are_the_ones_load_settings_reads() -> None:
    from rerankd.config import _env_field

    for opt in options():
        for name in (opt.env, *opt.env_aliases):
            assert _env_field(name) == opt.field, name


def _sample(opt: Option) -> list[str]:
    """Arguments that give the flag a value."""
    if opt.item is bool:
        return [opt.flag]
    if opt.shape == "map":
        return [opt.flag, "a=b", opt.flag, "c = d"]
    if opt.shape == "list":
        return [opt.flag, "x,y", opt.flag, "z"] if opt.spec.repeat else [opt.flag, "x,y"]
    if opt.choices:
        return [opt.flag, opt.choices[-1]]
    return [opt.flag, {int: "3", float: "0.5", str: "s"}[opt.item]]


def _parse(*argv: str) -> dict[str, Any]:
    return cli._flags(cli._parser().parse_args(["serve", *argv]))


def test_no_flag_given_overrides_nothing() -> None:
    ns = cli._parser().parse_args(["serve"])
    assert {k: v for k, v in vars(ns).items() if v is not None} == {"command": "serve"}


@pytest.mark.parametrize("opt", options(), ids=lambda o: o.flag)
def test_each_flag_reaches_its_setting(opt: Option) -> None:
    value = _parse(*_sample(opt))[opt.field]
    if opt.item is bool:
        assert value is True
        if opt.spec.negatable:
            assert _parse("--no-" + opt.flag.removeprefix("--"))[opt.field] is False
    elif opt.shape == "map":
        assert value == {"a": "b", "c": "d"}
    elif opt.spec.parse:
        assert value == [opt.spec.parse("x,y"), opt.spec.parse("z")]
    elif opt.shape == "list":
        assert value == (["x", "y", "z"] if opt.spec.repeat else ["x", "y"])
    else:
        assert value == (opt.choices[-1] if opt.choices else opt.item(_sample(opt)[1]))


def test_the_special_flags() -> None:
    assert _parse("--no-auth")["auth"] == "off"
    assert _parse("--model", "m=/p", "--model", "Qwen/Q")["models"] == [
        {"name": "m", "path": "/p"},
        {"name": "Q", "path": "Qwen/Q"},
    ]
    assert _parse("--config", "f.toml")["config"] == "f.toml"
    with pytest.raises(SystemExit):
        _parse("--engine", "magic")
    with pytest.raises(SystemExit):
        _parse("--no-compile")  # a switch, not a toggle
    from rerankd.errors import ConfigError

    with pytest.raises(ConfigError, match="--model-format takes NAME=FORMAT"):
        _parse("--model-format", "qwen")


def _shown(value: Any, unset: str | None) -> str:
    """A default as the help should write it, from a Settings() value."""
    if value in (None, (), {}):
        return unset or "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


@pytest.fixture(scope="module")
def serve_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "rerankd", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "COLUMNS": "300"},  # one line per help part
    )
    return out.stdout


def _blocks(text: str) -> dict[str, str]:
    """Each option's help text, by flag."""
    blocks: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if m := re.match(r"^  (--[\w-]+)", line):
            flag = m.group(1)
            blocks[flag] = line
        elif flag and line.startswith("    "):
            blocks[flag] += "\n" + line
        else:
            flag = None
    return blocks


def test_help_shows_each_options_env_and_true_default(serve_help: str) -> None:
    blocks = _blocks(serve_help)
    defaults = Settings()
    for opt in options():
        block = blocks[opt.flag]
        shown = _shown(getattr(defaults, opt.field), opt.spec.unset)
        assert re.search(rf"\(env [^;]*\b{opt.env}\b[^;]*; default: {re.escape(shown)}\)$", block), block
        assert opt.help.split(";")[0] in " ".join(block.split())
    assert "(env RERANKD_PORT; default: 8080)" in blocks["--port"]
    assert "default: 604800)" in blocks["--cache-ttl-s"]
    assert "default: true)" in blocks["--cache"]
    assert "(env RERANKD_MODEL, RERANKD_MODELS;" in blocks["--model"]
    assert "(env RERANKD_CONFIG;" in blocks["--config"]
    assert "same as --auth off" in blocks["--no-auth"]


def test_help_groups_options_by_concern(serve_help: str) -> None:
    titles = [title for title, _ in GROUPS.values()]
    headings = [line[:-1] for line in serve_help.splitlines() if line.endswith(":") and line[:1] != " "]
    assert [h for h in headings if h in titles] == titles
    # Each option under its group's heading.
    heading = None
    for line in serve_help.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            heading = line[:-1]
        elif (m := re.match(r"^  (--[\w-]+)", line)) and m.group(1) in {o.flag for o in options()}:
            opt = next(o for o in options() if o.flag == m.group(1))
            assert heading == GROUPS[opt.group][0], opt.flag


def test_a_flag_beats_the_env_which_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "rerankd.toml"
    file.write_text(
        'port = 9000\nhost = "0.0.0.0"\ncache = false\nmax_documents = 7\ndevice = "cpu"\n'
        '[[models]]\nname = "f"\npath = "/file"\n'
    )
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RERANKD_CONFIG", str(file))
    monkeypatch.setenv("RERANKD_PORT", "9100")
    monkeypatch.setenv("RERANKD_MAX_DOCUMENTS", "8")
    monkeypatch.setenv("RERANKD_CACHE", "true")
    monkeypatch.setenv("RERANKD_MODEL", "e=/env")
    s = cli.serve_settings(["--port", "9200", "--no-cache", "--model", "c=/flag"])
    assert (s.port, s.cache, [m.name for m in s.models]) == (9200, False, ["c"])  # flags
    assert s.max_documents == 8  # env over file
    assert (s.host, s.device) == ("0.0.0.0", "cpu")  # file only
    s = cli.serve_settings([])
    assert (s.port, s.cache, [m.name for m in s.models]) == (9100, True, ["e"])
    other = tmp_path / "other.toml"
    other.write_text('host = "10.0.0.1"\n')
    assert cli.serve_settings(["--config", str(other)]).host == "10.0.0.1"  # --config over RERANKD_CONFIG


def _env_names() -> set[str]:
    """Every variable load_settings reads."""
    from rerankd.config import _env_field

    names = {ENV_PREFIX + "CONFIG"}
    names |= {ENV_PREFIX + f.upper() for f in Settings.__struct_fields__}
    names |= {n for o in options() for n in o.env_aliases}
    assert all(_env_field(n) for n in names - {ENV_PREFIX + "CONFIG"})
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_only_real_env_variables(doc: Path) -> None:
    named = set(re.findall(r"\bRERANKD_[A-Z0-9_]*[A-Z0-9]", doc.read_text()))
    unknown = sorted(named - _env_names())
    assert not unknown, f"{doc.name} names variables rerankd does not read: {unknown}"


def _tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables of a page whose header has an env column, as rows of column -> cell."""
    tables: list[list[dict[str, str]]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
            tables.append([])
        elif not set("".join(cells)) <= set("-: "):
            tables[-1].append(dict(zip(header, cells, strict=False)))
    return [t for t in tables if t and "env" in t[0]]


def _settings_rows() -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for doc in DOCS[:-2]:  # docs/*.md
        for table in _tables(doc.read_text()):
            for row in table:
                cell = row.get("key") or row.get("file key") or ""
                if not (m := re.fullmatch(r"`(\w+)`", cell)):
                    continue  # a row about a flag alone (--no-auth)
                assert m.group(1) in Settings.__struct_fields__, f"{doc.name}: {cell} is not a setting"
                rows.setdefault(m.group(1), []).append(row)
    return rows


def test_configuration_md_lists_every_option_with_its_flag_env_and_default() -> None:
    rows = _settings_rows()
    config_md = (ROOT / "docs" / "configuration.md").read_text()
    for opt in options():
        assert opt.field in rows, f"{opt.field} is in no settings table of docs/"
        assert opt.flag in config_md
        for row in rows[opt.field]:
            assert f"`{opt.flag}" in row.get("flag", f"`{opt.flag}"), (opt.field, row)
            assert any(n in row["env"] for n in (opt.env, *opt.env_aliases)), (opt.field, row)
            if m := re.fullmatch(r"`([^`]*)`", row["default"]):
                assert m.group(1) == opt.shown_default, (opt.field, row["default"])
