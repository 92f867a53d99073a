"""``rerankd keys`` against a keys file, as an operator runs it (no server needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rerankd.auth.keys import digest_of
from tests.proxy.auth_helpers import keys_cli


def test_create_prints_the_key_once_and_stores_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    done = keys_cli(
        "create",
        "--name",
        "app",
        "--rpm",
        "60",
        "--tpm",
        "5000",
        "--expires",
        "2099-01-31",
        "--keys-file",
        str(path),
    )
    key = done.stdout.strip()
    assert done.stdout == key + "\n"
    assert key.startswith("rk-")
    assert len(key) == 46
    assert "created key 'app'" in done.stderr
    assert "shown only now" in done.stderr
    assert "expires 2099-01-31T00:00:00Z" in done.stderr
    (record,) = json.loads(path.read_text())["keys"]
    assert record["digest"] == digest_of(key)
    assert (record["rpm"], record["tpm"], record["expires"]) == (60, 5000, "2099-01-31T00:00:00Z")
    assert key not in path.read_text()


def test_list_revoke_and_json(tmp_path: Path) -> None:
    store = ("--keys-file", str(tmp_path / "keys.json"))
    keys_cli("create", "--name", "b", *store)
    keys_cli("create", "--name", "a", "--rpm", "5", *store)
    assert "revoked key 'b'" in keys_cli("revoke", "b", *store).stderr
    table = keys_cli("list", *store).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "CREATED", "EXPIRES", "RPM", "TPM"]
    assert [row.split()[:2] for row in table[1:]] == [["a", "active"], ["b", "revoked"]]
    assert table[1].split()[3:] == ["-", "5", "-"]
    listed = json.loads(keys_cli("list", "--json", *store).stdout)
    assert [(k["name"], k["status"], k["rpm"]) for k in listed] == [
        ("a", "active", 5),
        ("b", "revoked", None),
    ]
    assert all("digest" not in k for k in listed)


def test_mistakes_get_one_line_and_a_nonzero_status(tmp_path: Path) -> None:
    store = ("--keys-file", str(tmp_path / "keys.json"))
    keys_cli("create", "--name", "app", *store)
    cases = [
        (("create", "--name", "app", *store), 1, "rerankd: a key named 'app' already exists"),
        (("revoke", "ghost", *store), 1, "rerankd: no key named 'ghost'"),
        (("create", "--name", "x", "--expires", "2001-01-01", *store), 2, "is in the past"),
        (("create", "--name", "x", "--expires", "soon", *store), 2, "duration like 30d"),
        (("usage", "app", *store), 2, "usage is counted in Redis: give --redis-url"),
        (("list",), 2, "rerankd: no key store: give --keys-file or --redis-url"),
        (("create", "--name", "white space", *store), 2, "argument --name"),
        (("create", "--name", "x", "--rpm", "0", *store), 2, "must be at least 1"),
    ]
    for args, status, message in cases:
        done = keys_cli(*args, check=False)
        assert (done.returncode, done.stdout) == (status, ""), (args, done)
        assert message in done.stderr, (args, done.stderr)


def test_the_store_can_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    env = {**os.environ, "RERANKD_KEYS_FILE": str(path)}
    cmd = [sys.executable, "-m", "rerankd", "keys", "create", "--name", "env"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert done.stdout.startswith("rk-")
    assert json.loads(path.read_text())["keys"][0]["name"] == "env"


def test_update_changes_and_clears_limits_in_the_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = ("--keys-file", str(path))
    key = keys_cli("create", "--name", "app", "--rpm", "60", *store).stdout.strip()
    done = keys_cli("update", "app", "--tpm", "9000", *store)
    assert "updated key 'app'" in done.stderr
    assert "rpm 60, tpm 9000" in done.stderr
    keys_cli("update", "app", "--no-rpm", *store)
    (record,) = json.loads(path.read_text())["keys"]
    assert (record.get("rpm"), record["tpm"], record["digest"]) == (None, 9000, digest_of(key))
    for args, message in [
        (("update", "app", *store), "give --rpm, --tpm, --no-rpm or --no-tpm"),
        (("update", "ghost", "--rpm", "1", *store), "no key named 'ghost'"),
        (("update", "app", "--rpm", "1", "--no-rpm", *store), "not allowed with argument"),
    ]:
        failed = keys_cli(*args, check=False)
        assert failed.returncode != 0
        assert message in failed.stderr, failed.stderr
