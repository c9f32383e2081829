"""What the autoscaling policy sees of one deployment: plain numbers, no Ray types.

`LoadSignals` is the one seam from an LLMServer replica to both the autoscaler and the request
router: the replica builds it from its engine, Serve carries it as the `dict[str, float]` its
metric hooks must return (`to_metrics`), and the readers rebuild it (`from_metrics`). The metric
names are the field names, written nowhere else. Figures the autoscaler reads have been reduced
by Serve over its look-back window (a mean by default), so counts arrive as floats.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["METRIC_NAMES", "LoadSignals", "ScalingSignals"]


@dataclass(frozen=True)
class LoadSignals:
    """One replica's engine load, as it reports it."""

    # Engine requests waiting to be scheduled.
    num_waiting: float
    # Engine requests running (in the batch).
    num_running: float
    # KV blocks used / total, 0..1.
    kv_usage: float
    # Seconds since the replica last had any request in flight; 0.0 while one runs or waits.
    idle_s: float
    # Requests in the replica (each is `n` engine sequences, one per choice).
    num_requests: float = 0.0

    @property
    def num_sequences(self) -> float:
        """Engine sequences waiting or running: a request with n choices counts n times."""
        return self.num_waiting + self.num_running

    @property
    def sequences_per_request(self) -> float:
        """Engine sequences per request in the replica, at least 1 (1 when it has no request)."""
        if self.num_requests < 1:
            return 1.0
        return max(1.0, self.num_sequences / self.num_requests)

    def to_metrics(self) -> dict[str, float]:
        """The form Serve's `record_autoscaling_stats` / `record_routing_stats` hooks return."""
        return {name: float(getattr(self, name)) for name in METRIC_NAMES}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object]) -> LoadSignals | None:
        """The signals in a replica's reported metrics; None unless every one is a finite number
        (a replica that has not reported yet)."""
        values = [metrics.get(name) for name in METRIC_NAMES]
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in values):
            return None
        return cls(*(float(value) for value in values))  # type: ignore[arg-type]


# The metric names a replica reports, in field order.
METRIC_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(LoadSignals))


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
    replicas: tuple[LoadSignals, ...]
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
