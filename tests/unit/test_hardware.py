"""What dtype "auto" means on a CPU, from its feature flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import EngineConfig
from engine.hardware import auto_dtype, cpu_flags, resolve_dtype


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bfloat16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx2", "avx512f"}, "float32"),
        (set(), "float32"),
    ],
)
def test_auto_takes_bfloat16_only_on_cpus_with_a_bf16_matmul(flags: set[str], expected: str) -> None:
    assert auto_dtype("cpu", frozenset(flags)) == expected


def test_cpu_flags_are_read_from_the_first_processor(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_resolve_keeps_an_explicit_dtype_and_replaces_auto() -> None:
    assert resolve_dtype(EngineConfig(model="m", dtype="float16")).dtype == "float16"
    assert resolve_dtype(EngineConfig(model="m")).dtype == auto_dtype("cpu")
    assert EngineConfig(model="m").dtype == "auto"
