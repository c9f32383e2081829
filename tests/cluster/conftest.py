"""A two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), for tensor-parallel shards.

It runs before the Serve tests' single-node session cluster, and is shut down when this
directory's tests end, so the two never overlap: tests/conftest.py's `pytest_collection_modifyitems`
moves every test under tests/cluster before all others, in whatever order the paths are given
(`pytest tests/serve tests/cluster` included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CPUS_PER_NODE = 2


@pytest.fixture(scope="package")
def two_node_cluster() -> Iterator[Cluster]:
    if ray.is_initialized():
        raise RuntimeError(
            "the two-node cluster tests need a process without Ray; tests/conftest.py runs them first, "
            "so something initialized Ray during collection or in an earlier test"
        )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE})
    cluster.add_node(num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}},
    )
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
