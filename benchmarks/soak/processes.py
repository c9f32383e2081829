"""The platform's processes, found by the titles Ray gives them: their pids (for SIGKILL) and
samples of their memory and open files.

Only this process's descendants are looked at: the driver that started the local Ray cluster is
the ancestor of its raylet and so of every worker, and another cluster on the same machine (with
an app of the same name) is never touched."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

__all__ = ["ProcessSample", "pids_titled", "serving_processes", "serving_rss_bytes"]

# The processes a request passes through or an engine runs in: Serve's proxy, every replica
# (Routers and models), the tensor-parallel shards (children of the raylet, not of their replica).
_SERVING_TITLES = ("ServeReplica:", "ProxyActor", "_ShardActor")


@dataclass(frozen=True)
class ProcessSample:
    """A serving process with its child processes (engines): resident memory and open files."""

    rss_bytes: int
    open_files: int


def pids_titled(title: str) -> list[int]:
    """Pids of the actor processes whose title is `title` (e.g. `ServeReplica:app:Router`)."""
    return [process.pid for process in _cluster_processes() if _actor_title(process) == title]


def serving_processes() -> dict[str, ProcessSample]:
    """Each serving process, by title and pid."""
    samples: dict[str, ProcessSample] = {}
    for process in _cluster_processes():
        title = _actor_title(process)
        if title is None or not title.startswith(_SERVING_TITLES):
            continue
        try:
            family = [process, *process.children()]
            sample = ProcessSample(sum(p.memory_info().rss for p in family), sum(p.num_fds() for p in family))
        except psutil.Error:
            continue
        samples[f"{title.removeprefix('ServeReplica:')} (pid {process.pid})"] = sample
    return samples


def serving_rss_bytes() -> dict[str, int]:
    return {name: sample.rss_bytes for name, sample in serving_processes().items()}


def _cluster_processes() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _actor_title(process: psutil.Process) -> str | None:
    # Ray titles an actor's process `ray::<class>`, `ray::<class>.<method>` while it runs one.
    try:
        words = process.cmdline()
    except psutil.Error:
        return None
    for word in words:
        if word.startswith("ray::"):
            return word.removeprefix("ray::").split(".")[0]
    return None
