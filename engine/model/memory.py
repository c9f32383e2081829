"""How much memory a device has free, for sizing the KV cache."""

from __future__ import annotations

import os

import torch

__all__ = ["available_memory_bytes"]


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on a CUDA device, or the system's available memory for the CPU."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(free_bytes)
    return _system_available_bytes()


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
