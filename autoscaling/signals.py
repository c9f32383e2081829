"""What the autoscaling policy sees of one deployment: plain numbers, no Ray types.

Replica figures come from `LLMServer.record_autoscaling_stats()` after Serve has reduced each over
its look-back window (a mean by default), so counts arrive as floats.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReplicaLoad", "ScalingSignals"]


@dataclass(frozen=True)
class ReplicaLoad:
    """One running replica's engine load, as it reported it."""

    # Engine requests waiting to be scheduled.
    num_waiting: float
    # Engine requests running (in the batch).
    num_running: float
    # KV blocks used / total, 0..1.
    kv_usage: float
    # Seconds since the replica last had any request in flight; 0.0 while one runs or waits.
    idle_s: float


@dataclass(frozen=True)
class ScalingSignals:
    """Everything one policy decision reads about a deployment."""

    # Replicas Serve counts as running. Fewer than `target_num_replicas` while new ones start.
    num_running_replicas: int
    # Serve's current target; a policy that holds returns this.
    target_num_replicas: int
    # Requests queued at handles, waiting for a replica: the only load a model at zero replicas shows.
    num_queued_requests: float
    # One entry per running replica that reported every metric.
    replicas: tuple[ReplicaLoad, ...]
    # Running replicas with at least one metric not yet reported (a replica that just started).
    num_replicas_missing_metrics: int
    # Seconds since the deployment last had a request on any replica, remembered across decisions
    # (a replica stopped by a scale-down takes its recent requests out of `replicas`); None when
    # not known.
    since_last_request_s: float | None = None

    @property
    def num_waiting_requests(self) -> float:
        """Requests not yet running anywhere: queued at handles or waiting in an engine."""
        return self.num_queued_requests + sum(replica.num_waiting for replica in self.replicas)

    @property
    def num_running_requests(self) -> float:
        return sum(replica.num_running for replica in self.replicas)

    @property
    def num_requests(self) -> float:
        """The load to spread over replicas: every request waiting or running."""
        return self.num_waiting_requests + self.num_running_requests

    @property
    def mean_kv_usage(self) -> float:
        """Mean KV usage over reporting replicas; 0.0 when none reports."""
        if not self.replicas:
            return 0.0
        return sum(replica.kv_usage for replica in self.replicas) / len(self.replicas)

    @property
    def min_idle_s(self) -> float:
        """How long the whole deployment has been idle: its most recently busy replica's idle time.
        0.0 when no replica reports, since idleness that nobody measured is not idleness."""
        if not self.replicas:
            return 0.0
        replica_idle_s = min(replica.idle_s for replica in self.replicas)
        if self.since_last_request_s is None:
            return replica_idle_s
        return min(replica_idle_s, self.since_last_request_s)
