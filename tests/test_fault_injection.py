"""Faults on a real Ray: a trial's process, or one worker of a 2-worker Train run, killed with SIGKILL
mid-search. The trial restarts from its last checkpoint (`retries` in the space) and the search finishes
with every trial TERMINATED. (The driver killed and resumed: tests/test_search.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
from test_search import SPACE, _space_file

from mmray.tune.results import SUMMARY_CSV
from mmray.tune.search import STUDY_FILE, run_search
from mmray.tune.space import load_space
from mmray.tune.storage import RunOptions

EPOCHS = 3


def _descendants() -> dict[int, str]:
    """This process's descendants (its Ray: raylet, workers) by pid, with their command lines (from /proc)."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (ValueError, OSError):
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    mine, found = {os.getpid()}, True
    while found:
        found = {pid for pid, parent in parents.items() if parent in mine and pid not in mine}
        mine |= found
    return {pid: titles[pid] for pid in mine - {os.getpid()}}


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_after_first_checkpoint(exp: Path, title: str, killed: list[int]) -> threading.Thread:
    """In the background: once a trial has saved its first checkpoint, SIGKILL one process whose title
    (set by Ray: `ray::ImplicitFunc...` for a trial, `ray::RayTrainWorker...` for a Train worker) starts so,
    among this test's own Ray processes."""
    def kill() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if any(exp.glob("trial_*/checkpoint_*")) or any(exp.glob("train/train-*/checkpoint_*")):
                for pid, command in _descendants().items():  # this test's Ray only
                    if command.startswith(title):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        return
            time.sleep(0.05)
    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _search_with_a_kill(tmp_path, tiny_synthetic, title: str, **changes):
    path = _space_file(tmp_path, "faulty", num_samples=1, params={}, scheduler={"type": "fifo"},
                       retries={"trials": 2, "workers": 2}, fixed={**SPACE["fixed"], "epochs": EPOCHS}, **changes)
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    options = RunOptions(storage=tmp_path / "res", name="faulty")
    killed: list[int] = []
    killer = _kill_after_first_checkpoint(options.experiment_dir, title, killed)
    run_search(space, options)
    killer.join(timeout=1)
    assert killed, f"no {title} process was found to kill"
    assert not _alive(killed[0])
    exp = options.experiment_dir
    table = pd.read_csv(exp / SUMMARY_CSV)
    assert len(table) == 1 and set(table["status"]) == {"TERMINATED"}
    # The retried trial kept its Optuna trial: one trial in the study, told once, COMPLETE.
    study = optuna.load_study(study_name="faulty", storage=f"sqlite:///{exp / STUDY_FILE}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    results = [json.loads(line) for line in next(exp.glob("trial_*/result.json")).read_text().splitlines()]
    epochs = [r["epoch"] for r in results]
    # Restarted from its checkpoint, not from the first epoch: epoch 1 ran once, and every epoch ran.
    assert epochs.count(1) == 1 and set(epochs) == set(range(1, EPOCHS + 1)), epochs
    return killed[0], results


def test_a_killed_trial_process_is_retried_from_its_checkpoint(ray_local, tiny_synthetic, tmp_path):
    killed, results = _search_with_a_kill(tmp_path, tiny_synthetic, "ray::ImplicitFunc")
    pids = [r["pid"] for r in results]
    assert pids[0] == killed and pids[-1] != killed, "the trial finished in a new process"


def test_a_killed_train_worker_is_restarted_from_the_last_checkpoint(ray_local, tiny_synthetic, tmp_path):
    killed, results = _search_with_a_kill(tmp_path, tiny_synthetic, "ray::RayTrainWorker",
                                          resources={"workers": 2, "cpus_per_worker": 0.5})
    # Train restarted its workers; the trial itself (the Train driver) kept running in one process.
    assert len({r["pid"] for r in results}) == 1 and killed not in {r["pid"] for r in results}
