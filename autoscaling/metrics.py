"""The autoscaling policy's metrics, recorded in the Serve controller through Ray's metrics (scraped
as `ray_switchyard_autoscaling_*`): per model, the replicas running, the target the policy set,
the replicas the load calls for, the most it may run, and the cause of the last decision.

Defined here rather than with the engine's and the Router's metric specs: this package imports
nothing of ours. Ray is imported only when the first recorder is built (in the controller).
"""

from __future__ import annotations

from typing import Any

from autoscaling.policy import CAUSES, ScalingDecision

__all__ = ["AUTOSCALING_METRIC_NAMES", "AutoscalingMetrics"]

_LABELS = ("model",)
# name -> help; all gauges.
_GAUGES = {
    "switchyard_autoscaling_running_replicas": "Replicas of the model running, as the autoscaler sees them.",
    "switchyard_autoscaling_target_replicas": "Replicas the autoscaling policy set as Serve's target.",
    "switchyard_autoscaling_desired_replicas": "Replicas the model's load calls for now, before scaling delays.",
    "switchyard_autoscaling_max_replicas": "The most replicas the model's autoscaling may run (max_replicas).",
}
_CAUSE = "switchyard_autoscaling_cause"
_CAUSE_HELP = "1 for the cause the last autoscaling decision rests on (" + ", ".join(CAUSES) + "), 0 for the others."
AUTOSCALING_METRIC_NAMES = (*_GAUGES, _CAUSE)

# One set of Ray gauges per controller process, shared by every deployment's policy.
_gauges: dict[str, Any] = {}


def _gauge(name: str, help_text: str, labels: tuple[str, ...]) -> Any:
    if name not in _gauges:
        from ray.util.metrics import Gauge

        _gauges[name] = Gauge(name, description=help_text, tag_keys=labels)
    return _gauges[name]


class AutoscalingMetrics:
    """Records one model's decisions."""

    def __init__(self, model: str) -> None:
        self.model = model

    def record(self, decision: ScalingDecision, num_running_replicas: int, max_replicas: int) -> None:
        tags = {"model": self.model}
        values = {
            "switchyard_autoscaling_running_replicas": num_running_replicas,
            "switchyard_autoscaling_target_replicas": decision.num_replicas,
            "switchyard_autoscaling_max_replicas": max_replicas,
        }
        if decision.desired is not None:
            values["switchyard_autoscaling_desired_replicas"] = decision.desired
        for name, value in values.items():
            _gauge(name, _GAUGES[name], _LABELS).set(value, tags=tags)
        cause_gauge = _gauge(_CAUSE, _CAUSE_HELP, (*_LABELS, "cause"))
        for cause in CAUSES:
            cause_gauge.set(1.0 if cause == decision.cause else 0.0, tags={**tags, "cause": cause})
