"""What the device computes fast: the dtype that `dtype: "auto"` stands for.

On a CPU the answer is in its feature flags: with AMX tiles or AVX-512-BF16, a bfloat16 matmul
runs several times faster than a float32 one (and moves half the bytes); without them bfloat16 is
emulated and slower, so float32 stays. A GPU takes bfloat16 where it computes it natively
(Ampere and later), else float16.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config import DType, EngineConfig

__all__ = ["BF16_CPU_FLAGS", "auto_dtype", "cpu_flags", "resolve_dtype"]

# CPU feature flags (as /proc/cpuinfo names them) of a fast bfloat16 matmul.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags; empty where the kernel does not list them (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def auto_dtype(device: str, flags: frozenset[str] | None = None) -> DType:
    """The dtype "auto" means on `device` ("cpu", "cuda", "cuda:N"); `flags`: the CPU's, read
    from /proc/cpuinfo when None."""
    if device.startswith("cuda"):
        import torch  # a GPU engine loads it anyway

        if not torch.cuda.is_available():
            # A process that sees no GPU (a tensor-parallel replica, whose shards hold the GPUs):
            # every GPU a current model is served on computes bfloat16 natively.
            return "bfloat16"
        index = torch.device(device).index
        with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
            return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    return "bfloat16" if BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags) else "float32"


def resolve_dtype(config: EngineConfig) -> EngineConfig:
    """`config` with "auto" replaced by the dtype it means on the config's device."""
    if config.dtype != "auto":
        return config
    return dataclasses.replace(config, dtype=auto_dtype(config.device))
