"""What one trial reserves on the cluster: its workers' CPUs and GPUs, and the CPU kept for Ray Data.

The search space (`resources:`) and both Ray launchers read these; nothing here imports Ray, so
parsing a search space stays cheap. docs/resources.md explains how the pieces share a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# CPUs that no trial and no Train worker may reserve, so Ray Data can always run. Ray Data
# schedules its tasks outside the trials' placement groups, and its file-listing task needs a
# whole CPU: if trials and workers hold every CPU, the pipeline (and so the trial) waits forever.
DATA_RESERVED_CPUS = 1.0
# A trial that only drives a Ray Train run holds no CPU, only a little memory (a placement-group
# bundle cannot be empty): its CPUs are the Train workers'.
DRIVER_BUNDLE = {"memory": 256 * 1024**2}


@dataclass(frozen=True)
class WorkerResources:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda") if self.gpus_per_worker and torch.cuda.is_available() else torch.device("cpu")

    def worker_bundle(self) -> dict:
        """One worker's reservation: its CPUs, and its GPUs if any."""
        own = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            own["GPU"] = self.gpus_per_worker
        return own

    def trial_bundles(self) -> list[dict]:
        """The trial's own placement group. With N workers Ray Train reserves the workers separately."""
        return [dict(DRIVER_BUNDLE)] if self.workers > 1 else [self.worker_bundle()]

    def cpus_per_trial(self) -> float:
        if self.workers > 1:
            return self.workers * self.cpus_per_worker
        return self.cpus_per_worker
