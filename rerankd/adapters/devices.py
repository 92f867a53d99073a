"""Which devices ``--devices`` names: one engine replica each."""

from __future__ import annotations

from collections.abc import Sequence

from rerankd.errors import ConfigError

__all__ = ["check_device", "check_devices", "expand_devices"]


def expand_devices(spec: Sequence[str], cuda_count: int) -> list[str]:
    """Device labels, one per replica: ``all`` is every CUDA device; a bare ``cuda`` is
    ``cuda:0``; bare ``cpu`` entries are numbered (``cpu,cpu`` -> ``cpu:0``, ``cpu:1``), since
    CPU replicas are threads on the same processor and only their labels differ."""
    if list(spec) == ["all"]:
        if cuda_count == 0:
            raise ConfigError("devices 'all' asked for, but torch sees no CUDA device")
        return [f"cuda:{i}" for i in range(cuda_count)]
    labels: list[str] = []
    cpus = 0
    for name in spec:
        if name == "cpu":
            name = f"cpu:{cpus}"
        elif name == "cuda":
            name = "cuda:0"
        if name.startswith("cpu"):
            cpus += 1
        labels.append(name)
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    if dupes:
        raise ConfigError(f"devices: each device once, repeated: {', '.join(dupes)}")
    if len({label.partition(":")[0] for label in labels}) > 1:
        raise ConfigError("devices: replicas of one model are all CUDA or all CPU, not a mix")
    for label in labels:
        kind, _, index = label.partition(":")
        if kind == "cuda" and int(index) >= cuda_count:
            raise ConfigError(f"device {label!r} asked for, but torch sees {cuda_count} CUDA device(s)")
    return labels


def check_devices(devices: Sequence[str]) -> None:
    """``devices`` must name devices this host has: ``cuda:5`` on a 2-GPU node fails before binding."""
    cuda = any(d == "all" or d.startswith("cuda") for d in devices)
    count = 0
    if cuda:
        import torch  # only for accelerators: the check costs torch's import (seconds)

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    expand_devices(devices, count)


def check_device(device: str) -> None:
    """A device named outright (not ``auto`` or ``cpu``) must be there."""
    if device in ("auto", "cpu"):
        return
    import torch  # only for an explicit accelerator: the check costs torch's import (seconds)

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("device mps asked for, but torch sees no Apple GPU (MPS); use --device cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(
            f"device {device} asked for, but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(
            f"device {device} asked for, but torch sees {count} CUDA device(s): cuda:0..{count - 1}"
        )
