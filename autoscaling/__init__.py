"""LLM-aware autoscaling: pure policies over engine signals, plus the Serve adapter.

The Serve adapter, `autoscaling.serve_policy:LLMAutoscalingPolicy`, is what a deployment's
`autoscaling_config.policy.policy_function` names; it is not imported here, so the pure policy
stays importable (and testable) without Ray.
"""

from autoscaling.policy import (
    CAUSES,
    Cause,
    Direction,
    PendingScale,
    ScalingDecision,
    ScalingSettings,
    decide,
    desired_cause,
    desired_num_replicas,
    is_idle_past_timeout,
    is_starved,
)
from autoscaling.signals import METRIC_NAMES, LoadSignals, ScalingSignals

__all__ = [
    "CAUSES",
    "METRIC_NAMES",
    "Cause",
    "Direction",
    "LoadSignals",
    "PendingScale",
    "ScalingDecision",
    "ScalingSettings",
    "ScalingSignals",
    "decide",
    "desired_cause",
    "desired_num_replicas",
    "is_idle_past_timeout",
    "is_starved",
]
