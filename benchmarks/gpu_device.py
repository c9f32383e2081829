"""The device the GPU check runs on: what it is, how fast its memory copies, and waiting for it."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from dataclasses import dataclass

import torch
import transformers

from benchmarks.gpu_roofline import copy_bandwidth, datasheet_bandwidth

__all__ = ["Bandwidth", "describe_device", "device_name", "measure_bandwidth", "package_version", "synchronize"]


@dataclass(frozen=True)
class Bandwidth:
    # Bytes/s of a device-to-device copy, counting bytes read and written.
    measured: float
    # Bytes/s by the vendor's datasheet; None for a device without a known figure (a CPU).
    datasheet: float | None
    # How `measured` was taken, for the report.
    method: str


def synchronize(device: str) -> None:
    """Waits for the device's queued work, so a clock read after it times that work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def measure_bandwidth(device: str, num_bytes: int, num_copies: int) -> Bandwidth:
    """Times `num_copies` copies of a `num_bytes` buffer into another, after one untimed copy."""
    source = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(num_copies):
        target.copy_(source)
    synchronize(device)
    seconds = time.perf_counter() - start
    method = f"copy of {num_bytes / 2**30:.2f} GiB x {num_copies}, bytes read + written"
    return Bandwidth(copy_bandwidth(num_bytes, num_copies, seconds), datasheet_bandwidth(device_name(device)), method)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_device(device: str) -> dict[str, str]:
    """What the report's header says about the machine and the libraries."""
    description = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
        "bitsandbytes": package_version("bitsandbytes"),
    }
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        description["memory"] = f"{properties.total_memory / 2**30:.0f} GiB"
        description["multiprocessors"] = str(properties.multi_processor_count)
    else:
        description["threads"] = str(torch.get_num_threads())
    return description
