"""A trial's per-epoch metrics as Ray metrics, so the Ray dashboard and Prometheus show a search live.

Every numeric metric the loop reports (validation accuracies per modality, the modality gap, the
method's own state such as `gmm/imbalanced_frac` or `aug/heads_audio`) becomes a gauge named
`mmray_<key>` with `/` and other characters Prometheus refuses turned into `_`; Ray's exporter
adds its `ray_` prefix, so `val/fused_acc` is scraped as `ray_mmray_val_fused_acc`. Each value
is tagged with the experiment, the trial and the method.
"""

from __future__ import annotations

import math
import re

PREFIX = "mmray_"
TAG_KEYS = ("experiment", "trial", "method")

# One gauge per name in a process: Tune reuses a trial's process for the next trial.
_gauges: dict = {}


def metric_name(key: str) -> str:
    """`val/fused_acc` -> `mmray_val_fused_acc` (a name Prometheus accepts)."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key)


def exported(metrics: dict) -> dict[str, float]:
    """The metrics that become gauges, by gauge name: finite numbers only (no flags, no paths)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[metric_name(key)] = float(value)
    return out


class TrialGauges:
    """Sets one trial's gauges each epoch; pass it every metrics dict the loop reports."""

    def __init__(self, experiment: str, trial: str, method: str):
        self.tags = {"experiment": experiment, "trial": trial, "method": method}

    @classmethod
    def for_tune_trial(cls, method: str) -> "TrialGauges":
        import ray.tune

        context = ray.tune.get_context()
        return cls(context.get_experiment_name() or "", context.get_trial_id() or "", method)

    def set(self, metrics: dict) -> None:
        from ray.util.metrics import Gauge

        for name, value in exported(metrics).items():
            if name not in _gauges:
                _gauges[name] = Gauge(name, description="mmray per-epoch metric", tag_keys=TAG_KEYS)
            _gauges[name].set(value, tags=self.tags)
