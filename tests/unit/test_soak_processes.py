"""The soak suite finds the platform's processes by their Ray titles among this process's
descendants only: another cluster's processes of the same title are never killed or sampled."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from benchmarks.soak.processes import pids_titled, serving_processes

TITLE = "ServeReplica:soak-probe:Router"


@pytest.fixture
def titled_child() -> Iterator[int]:
    # `exec -a` sets the process's argv[0], as Ray's setproctitle does for a worker.
    child = subprocess.Popen(["bash", "-c", f"exec -a 'ray::{TITLE}.handle_request' sleep 60"])
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def titled_orphan() -> Iterator[int]:
    # Started through a shell that exits at once: reparented away from this process's tree, like a
    # worker of a cluster another driver started.
    out = subprocess.run(
        ["bash", "-c", f"(exec -a 'ray::{TITLE}' sleep 60) > /dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(out.stdout)
    yield pid
    psutil.Process(pid).kill()


def wait_for_title(pid: int) -> None:
    # A process in the middle of its exec has an empty command line for a moment.
    deadline = time.monotonic() + 5
    while not "".join(psutil.Process(pid).cmdline()[:1]).startswith("ray::"):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_only_this_process_descendants_are_found(titled_child: int, titled_orphan: int) -> None:
    wait_for_title(titled_child)
    wait_for_title(titled_orphan)
    assert pids_titled(TITLE) == [titled_child]
    assert [name for name in serving_processes() if "soak-probe" in name] == [f"soak-probe:Router (pid {titled_child})"]
