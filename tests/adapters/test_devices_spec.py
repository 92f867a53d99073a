"""``devices``: what each spelling means, and what is refused before anything loads."""

from __future__ import annotations

import pytest

from rerankd.adapters.devices import expand_devices
from rerankd.config import load_settings
from rerankd.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "cuda", "labels"),
    [
        (["all"], 2, ["cuda:0", "cuda:1"]),
        (["cuda:1", "cuda:0"], 2, ["cuda:1", "cuda:0"]),
        (["cuda"], 1, ["cuda:0"]),
        (["cpu", "cpu", "cpu"], 0, ["cpu:0", "cpu:1", "cpu:2"]),
        (["cpu:0", "cpu:1"], 0, ["cpu:0", "cpu:1"]),
    ],
)
def test_device_labels(spec: list[str], cuda: int, labels: list[str]) -> None:
    assert expand_devices(spec, cuda) == labels


@pytest.mark.parametrize(
    ("spec", "cuda", "fragment"),
    [
        (["all"], 0, "no CUDA device"),
        (["cuda:2"], 2, "sees 2 CUDA device"),
        (["cuda:0", "cuda"], 1, "repeated: cuda:0"),
        (["cpu", "cuda:0"], 1, "not a mix"),
    ],
)
def test_bad_devices_are_refused(spec: list[str], cuda: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        expand_devices(spec, cuda)


def test_devices_from_env_and_flags() -> None:
    assert load_settings(env={"RERANKD_DEVICES": "cuda:0, cuda:1"}).devices == ("cuda:0", "cuda:1")
    assert load_settings({"devices": ["all"]}, env={}).devices == ("all",)
    faults = load_settings(env={"RERANKD_DEVICES": "cpu,cpu", "RERANKD_FAULT_DEVICES": "1"})
    assert faults.fault_devices == (1,)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"devices": ["all", "cuda:0"]}, "'all' stands alone"),
        ({"devices": ["cuda:0"], "device": "cuda:1"}, "not both"),
        ({"devices": ["tpu:0"]}, "devices"),
        ({"devices": ["cpu", "cpu"], "fault_devices": [2]}, "indexes into devices"),
    ],
)
def test_bad_device_settings(settings: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(settings, env={})
