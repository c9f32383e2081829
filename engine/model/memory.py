"""How much memory a device has free, for sizing the KV cache."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["available_memory_bytes", "cgroup_room_bytes"]

# cgroup v1 writes "no limit" as the largest page-aligned 63-bit value.
_V1_UNLIMITED = 2**62


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device; for the CPU, the system's available memory or, in a container
    with a memory limit (a Kubernetes pod), the room left under that limit if smaller: /proc/meminfo
    speaks of the whole host there, and a KV pool sized from it gets the container OOM-killed."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(free_bytes)
    system = _system_available_bytes()
    room = cgroup_room_bytes(Path("/sys/fs/cgroup"), Path("/proc/self/cgroup"))
    return system if room is None else min(system, room)


def _system_available_bytes() -> int:
    # MemAvailable counts reclaimable page cache, unlike the free-pages figure from sysconf.
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_room_bytes(cgroup_root: Path, self_cgroup: Path) -> int | None:
    """Bytes this process's memory cgroups may still take: the least, over its cgroup and every
    ancestor with a limit, of limit less usage, the inactive page cache counted as free (the kernel
    reclaims it before the OOM killer acts, and kubelet's working set leaves it out too). None
    without a limit, or where the files cannot be read or parsed: the caller then goes by the
    system's figure.

    `self_cgroup` is /proc/self/cgroup, whose paths are relative to the mounted hierarchy; inside a
    cgroup namespace (a container) the hierarchy's root is the process's own cgroup, and the path
    it names is not there."""
    try:
        lines = self_cgroup.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    rooms: list[int] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            files, hierarchy = ("memory.max", "memory.current", "inactive_file"), cgroup_root
        elif "memory" in controllers.split(","):
            files, hierarchy = (
                ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
                cgroup_root / "memory",
            )
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for depth in range(len(parts), -1, -1):
            room = _room_in(hierarchy.joinpath(*parts[:depth]), *files)
            if room is not None:
                rooms.append(room)
    return min(rooms) if rooms else None


def _room_in(directory: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """Room under the limit in one cgroup folder; None without a limit or readable figures."""
    try:
        limit_text = (directory / limit_file).read_text(encoding="ascii").strip()
        if limit_text == "max" or int(limit_text) >= _V1_UNLIMITED:
            return None
        usage = int((directory / usage_file).read_text(encoding="ascii"))
        inactive = 0
        for line in (directory / "memory.stat").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return max(int(limit_text) - usage + inactive, 0)
