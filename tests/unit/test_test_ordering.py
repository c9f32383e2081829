"""The suite's test order: tests/cluster (which needs a process without Ray) runs before the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.conftest as root_conftest
from tests.conftest import CLUSTER_TESTS_DIR, cluster_tests_first

TESTS_DIR = Path(root_conftest.__file__).parent


@dataclass(frozen=True)
class FakeItem:
    name: str
    path: Path


def fake_items() -> list[FakeItem]:
    return [
        FakeItem("serve_a", TESTS_DIR / "serve" / "test_openai_api.py"),
        FakeItem("cluster_a", TESTS_DIR / "cluster" / "test_tensor_parallel.py"),
        FakeItem("unit_a", TESTS_DIR / "unit" / "test_sampler.py"),
        FakeItem("serve_b", TESTS_DIR / "serve" / "test_openai_api.py"),
        FakeItem("cluster_b", TESTS_DIR / "cluster" / "test_tensor_parallel.py"),
        FakeItem("look_alike", TESTS_DIR / "clusters" / "test_x.py"),  # not under tests/cluster
        FakeItem("cluster_c", TESTS_DIR / "cluster" / "nested" / "test_y.py"),
    ]


EXPECTED = ["cluster_a", "cluster_b", "cluster_c", "serve_a", "unit_a", "serve_b", "look_alike"]


def test_cluster_tests_move_first_and_each_part_keeps_its_order() -> None:
    assert [item.name for item in cluster_tests_first(fake_items())] == EXPECTED


def test_ordering_leaves_an_already_ordered_list_and_its_input_alone() -> None:
    items = fake_items()
    ordered = cluster_tests_first(items)
    assert [item.name for item in items][:2] == ["serve_a", "cluster_a"]  # input not modified
    assert cluster_tests_first(ordered) == ordered
    assert cluster_tests_first([]) == []


def test_the_cluster_directory_is_this_suites_tests_cluster() -> None:
    assert CLUSTER_TESTS_DIR == TESTS_DIR / "cluster"
    assert (CLUSTER_TESTS_DIR / "conftest.py").is_file()


def test_the_collection_hook_reorders_the_session_items_in_place() -> None:
    hook = getattr(root_conftest, "pytest_collection_modifyitems", None)
    assert hook is not None, "tests/conftest.py must order the cluster tests first"
    items = fake_items()
    hook(items=items)
    assert [item.name for item in items] == EXPECTED


def test_the_hook_is_registered_to_run_after_pytests_fixture_grouping(request: pytest.FixtureRequest) -> None:
    # pytest groups items by fixture scope in its own modifyitems hook; a stable partition after it
    # keeps those groups whole, where one before it could be undone by the grouping.
    impls = request.config.pluginmanager.hook.pytest_collection_modifyitems.get_hookimpls()
    ours = [impl for impl in impls if impl.function is root_conftest.pytest_collection_modifyitems]
    assert len(ours) == 1 and ours[0].trylast


def test_this_sessions_cluster_tests_come_first(request: pytest.FixtureRequest) -> None:
    in_cluster = [item.path.is_relative_to(CLUSTER_TESTS_DIR) for item in request.session.items]
    assert in_cluster == sorted(in_cluster, reverse=True)
