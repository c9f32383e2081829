"""KV pool planning: a runner's share of memory decides its blocks, up to what its sequences use."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import EngineConfig
from engine.model.memory import cgroup_room_bytes
from engine.model.model_runner import plan_num_kv_blocks

BLOCK_BYTES = 1024


def test_a_half_share_of_memory_plans_half_the_blocks() -> None:
    config = EngineConfig(model="m", kv_cache_memory_fraction=0.5, max_num_seqs=4096)
    whole = plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=2048, free_bytes=1000 * BLOCK_BYTES)
    half = plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=2048, free_bytes=500 * BLOCK_BYTES)
    assert (whole, half) == (500, 250)


def test_the_pool_is_capped_at_what_every_sequence_at_full_length_uses() -> None:
    config = EngineConfig(model="m", block_size=16, max_num_seqs=2)
    assert plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=10**12) == 2 * 7


def test_a_fixed_pool_size_wins_over_memory() -> None:
    config = EngineConfig(model="m", num_kv_blocks=3)
    assert plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=0) == 3


def test_memory_for_no_block_is_refused_naming_the_fraction() -> None:
    config = EngineConfig(model="m", kv_cache_memory_fraction=0.1)
    with pytest.raises(ValueError, match="kv_cache_memory_fraction=0.1"):
        plan_num_kv_blocks(config, BLOCK_BYTES, max_model_len=100, free_bytes=BLOCK_BYTES)


def _cgroup(root: Path, directory: str, files: dict[str, str]) -> None:
    (root / directory).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / directory / name).write_text(text)


def test_a_v2_container_limit_leaves_its_room_counting_inactive_page_cache_free(tmp_path: Path) -> None:
    # In a cgroup namespace /proc/self/cgroup says "/", the container's own cgroup at the root.
    _cgroup(tmp_path, "", {"memory.max": "8000\n", "memory.current": "3000\n", "memory.stat": "inactive_file 500\n"})
    (tmp_path / "self").write_text("0::/\n")
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") == 8000 - 3000 + 500


def test_a_v1_limit_is_found_under_the_memory_hierarchy_at_the_process_path(tmp_path: Path) -> None:
    stat = "inactive_file 7\ntotal_inactive_file 100\n"
    _cgroup(
        tmp_path,
        "memory/kubepods/pod1",
        {"memory.limit_in_bytes": "4096", "memory.usage_in_bytes": "1000", "memory.stat": stat},
    )
    (tmp_path / "self").write_text("5:cpu:/\n4:memory:/kubepods/pod1\n0::/\n")
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") == 4096 - 1000 + 100


@pytest.mark.parametrize(
    ("self_cgroup", "files"),
    [
        ("0::/\n", {"memory.max": "max\n", "memory.current": "1\n", "memory.stat": ""}),
        (
            "4:memory:/\n",
            {
                "memory/memory.limit_in_bytes": str(2**63 - 4096),
                "memory/memory.usage_in_bytes": "1",
                "memory/memory.stat": "",
            },
        ),
        ("0::/\n", {}),
    ],
    ids=["v2-max", "v1-unlimited", "no-files"],
)
def test_no_limit_or_no_files_gives_no_room_figure(tmp_path: Path, self_cgroup: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self").write_text(self_cgroup)
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") is None


def test_the_tightest_limit_among_the_cgroups_ancestors_counts(tmp_path: Path) -> None:
    _cgroup(tmp_path, "kubepods", {"memory.max": "5000", "memory.current": "4000", "memory.stat": ""})
    _cgroup(tmp_path, "kubepods/pod1", {"memory.max": "max", "memory.current": "3000", "memory.stat": ""})
    (tmp_path / "self").write_text("0::/kubepods/pod1\n")
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") == 1000


def test_a_v1_process_path_missing_in_its_namespace_falls_back_to_the_mount_root(tmp_path: Path) -> None:
    stat = "total_inactive_file 0\n"
    _cgroup(tmp_path, "memory", {"memory.limit_in_bytes": "4096", "memory.usage_in_bytes": "96", "memory.stat": stat})
    (tmp_path / "self").write_text("4:memory:/process_api/abc\n0::/\n")  # a hybrid host's lines
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") == 4000


def test_unparsable_cgroup_files_give_no_room_figure_rather_than_an_error(tmp_path: Path) -> None:
    _cgroup(tmp_path, "", {"memory.max": "lots", "memory.current": "1", "memory.stat": ""})
    (tmp_path / "self").write_text("garbage\n0::/\n")
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") is None
    (tmp_path / "self").write_bytes(b"0::/\xff\n")
    assert cgroup_room_bytes(tmp_path, tmp_path / "self") is None
