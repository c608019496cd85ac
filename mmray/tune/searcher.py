"""The Optuna searcher, taught the number mmray selects by.

Ray's `OptunaSearch` tells the study each trial's *last* reported value and marks trials that ASHA
stopped as COMPLETE. mmray selects a trial's *best* validation epoch, so this searcher tells the
study exactly that: a trial that ran every epoch is COMPLETE with its best value over the epochs;
one that the scheduler stopped early is PRUNED (its intermediate values are in the study, as
Optuna's own pruning leaves them); one that errored, or never reported a finite value, is FAIL.
TPE then learns from the numbers selection uses, and treats stopped trials as Optuna does.
"""

from __future__ import annotations

import math

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from mmray.tune.storage import copy_file

State = optuna.trial.TrialState


def better(a: float, b: float | None, mode: str) -> bool:
    """Whether `a` beats `b` (None: nothing yet)."""
    return b is None or (a > b if mode == "max" else a < b)


class SelectionSearch(OptunaSearch):
    def __init__(self, *args, epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._epochs = epochs
        self._best: dict[str, float] = {}  # trial id -> best finite value so far (saved with the searcher)
        self._epochs_run: dict[str, int] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)  # the intermediate value, at step = training_iteration
        self._track(trial_id, result)

    def _track(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and better(value, self._best.get(trial_id),
                                                                                 self.mode):
            self._best[trial_id] = float(value)
        self._epochs_run[trial_id] = int(result.get("epoch", 0))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        try:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told before the driver died, but Tune's snapshot did not record it: resumed, it is told again.
            self._completed_trials.add(trial_id)
            return
        if result and not error and int(result.get("epoch", 0)) > self._epochs_run.get(trial_id, 0):
            # Tune may hand the last result (the one on which the scheduler stopped the trial, or the
            # final epoch's) to on_trial_complete only: it is an intermediate value like the others.
            super().on_trial_result(trial_id, result)
            self._track(trial_id, result)
        best = self._best.pop(trial_id, None)
        epochs_run = self._epochs_run.pop(trial_id, 0)
        ot_trial.set_user_attr("epochs_run", epochs_run)
        if error or best is None:
            state, value = State.FAIL, None
        elif epochs_run < self._epochs:
            state, value = State.PRUNED, None
            ot_trial.set_user_attr("best_value", best)
        else:
            state, value = State.COMPLETE, best
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)


class StudySync(Callback):
    """With a bucket storage, copies the study (SQLite, in the driver's workdir) to the bucket after every
    trial, so that a search whose head is lost resumes from the bucket with the study as it was.
    Tune tells the searcher about a finished trial before it calls callbacks: the copy holds that trial."""

    def __init__(self, study_file: str, target: str):
        self.study_file = study_file
        self.target = target

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._sync()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._sync()

    def _sync(self) -> None:
        copy_file(self.study_file, self.target)
