"""External Redis as Sentinel or Cluster: the chart accepts their URLs and puts the password in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helm.chart import container, render


@pytest.mark.parametrize(
    ("url", "expanded"),
    [
        (
            "redis+sentinel://s1:26379,s2:26379/mymaster/0",
            "redis+sentinel://:$(REDIS_PASSWORD)@s1:26379,s2:26379/mymaster/0",
        ),
        ("redis+cluster://n1:6379,n2:6379", "redis+cluster://:$(REDIS_PASSWORD)@n1:6379,n2:6379"),
        ("rediss+cluster://default@n1:6379", "rediss+cluster://default:$(REDIS_PASSWORD)@n1:6379"),
    ],
)
def test_external_sentinel_and_cluster_urls_take_the_password(
    url: str, expanded: str, tmp_path: Path
) -> None:
    values = tmp_path / "values.yaml"  # a file: --set would split the URL at its commas
    external = {"url": url, "existingSecret": "redis-auth", "existingSecretKey": "pw"}
    values.write_text(json.dumps({"redis": {"external": external}}))
    env = {e["name"]: e for e in container(render([values]))["env"]}
    assert env["RERANKD_REDIS_URL"]["value"] == expanded
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "pw"}
