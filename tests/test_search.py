"""End to end on a real local Ray: Tune + Optuna (SQLite) + ASHA over trials fed by Ray Data,
a 2-worker DDP trial under Ray Train, and resuming a killed search."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from networks import method_and_network

from mmray.errors import UserError
from mmray.train.checkpoint import BEST_JSON
from mmray.train.config import TrainConfig
from mmray.tune.results import SUMMARY_CSV, SUMMARY_JSON
from mmray.tune.search import STUDY_FILE, run_search
from mmray.tune.space import load_space
from mmray.tune.storage import RunOptions

SPACE = {
    "method": "joint", "dataset": "synthetic-av", "metric": "val/fused_acc", "mode": "max",
    "num_samples": 2, "max_concurrent": 1, "seed": 0,
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "fixed": {"epochs": 2, "batch_size": 32, "width": 8},
    "params": {"lr": {"type": "log-float", "low": 1e-3, "high": 1e-2},
               "fusion": {"type": "categorical", "choices": ["concat", "sum"]}},
}


def _space_file(tmp_path: Path, name: str, **changes) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


def test_search_writes_summary_study_and_test_metrics(ray_local, tiny_synthetic, tmp_path):
    space = load_space(str(_space_file(tmp_path, "small"))).with_overrides(data_dir=str(tiny_synthetic))
    options = RunOptions(storage=tmp_path / "results", name="small")
    best = run_search(space, options)

    exp = tmp_path / "results" / "small"
    table = pd.read_csv(exp / SUMMARY_CSV)
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}
    assert len(json.loads((exp / SUMMARY_JSON).read_text())) == 2
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{exp / STUDY_FILE}")
    assert len(study.trials) == 2
    assert {t.params["fusion"] for t in study.trials} <= {"concat", "sum"}
    assert best["validation"]["val/fused_acc"] == table["val/fused_acc"].max()
    assert set(best["test"]) >= {"test/fused_acc", "test/audio_acc", "test/visual_acc"}
    assert Path(best["checkpoint"]).is_dir()
    assert json.loads((exp / BEST_JSON).read_text())["trial_id"] == best["trial_id"]
    # The selected checkpoint's decision-layer diagnostics lie beside it, computed on the same model.
    diagnostics = json.loads(Path(best["diagnostics"]).read_text())
    assert diagnostics["test"]["accuracy"]["fused"] == pytest.approx(best["test"]["test/fused_acc"])

    # The experiment folder is never overwritten by a new run of the same name.
    before = (exp / SUMMARY_CSV).read_bytes()
    with pytest.raises(UserError, match="already exists"):
        run_search(space, options)
    assert (exp / SUMMARY_CSV).read_bytes() == before


def test_two_worker_ddp_trial_of_gmm_fits_as_one_worker(ray_local, tiny_synthetic, tmp_path):
    # warmup_epochs 0: the first refit sees the initial (seeded) model, so one worker can redo it exactly.
    path = _space_file(tmp_path, "ddp", method="gmm", num_samples=1, params={}, scheduler={"type": "fifo"},
                       resources={"workers": 2, "cpus_per_worker": 0.5},
                       fixed={**SPACE["fixed"], "warmup_epochs": 0})
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    best = run_search(space, RunOptions(storage=tmp_path / "results", name="ddp"))

    exp = tmp_path / "results" / "ddp"
    train_runs = list((exp / "train").glob("train-*"))
    assert len(train_runs) == 1, "the trial ran a Ray Train run"
    assert "checkpoint_" in best["checkpoint"] and str(exp / "train") in best["checkpoint"]
    assert (Path(best["checkpoint"]) / "gmm_gaps.png").is_file()
    assert pd.read_csv(exp / SUMMARY_CSV)["epochs_run"].item() == 2
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0

    # The same refit in one process, on the same initial model state.
    method, network = method_and_network(TrainConfig.from_flat(best["config"]))
    single = method.refit(network)
    first_epoch = [json.loads(line) for line in next(exp.glob("trial_*/result.json")).read_text().splitlines()][0]
    for key, value in single.items():
        assert first_epoch[key] == pytest.approx(value, abs=1e-5), key


def test_two_worker_ddp_trial_of_aug_adds_a_head(ray_local, tiny_synthetic, tmp_path):
    # tau 0: the modality behind after epoch 1 gets a second head, switched on for epoch 2.
    path = _space_file(tmp_path, "aug", method="aug", num_samples=1, params={}, scheduler={"type": "fifo"},
                       resources={"workers": 2, "cpus_per_worker": 0.5},
                       fixed={**SPACE["fixed"], "tau": 0.0, "hidden": 16})
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    best = run_search(space, RunOptions(storage=tmp_path / "results", name="aug"))

    exp = tmp_path / "results" / "aug"
    assert len(list((exp / "train").glob("train-*"))) == 1, "the trial ran a Ray Train run"
    epochs = [json.loads(line) for line in next(exp.glob("trial_*/result.json")).read_text().splitlines()]
    heads = [e["aug/heads_audio"] + e["aug/heads_visual"] for e in epochs]
    assert heads == [2, 3]
    assert (Path(best["checkpoint"]) / "aug_heads.png").is_file()
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0


def test_two_worker_ddp_trial_of_mmpareto(ray_local, tiny_synthetic, tmp_path):
    """MMPareto's own step (three backward passes, gradients averaged by it, not by DDP) under Ray Train."""
    path = _space_file(tmp_path, "mmpareto", method="mmpareto", num_samples=1, params={}, scheduler={"type": "fifo"},
                       resources={"workers": 2, "cpus_per_worker": 0.5})
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    best = run_search(space, RunOptions(storage=tmp_path / "results", name="mmpareto"))

    exp = tmp_path / "results" / "mmpareto"
    assert len(list((exp / "train").glob("train-*"))) == 1, "the trial ran a Ray Train run"
    epochs = [json.loads(line) for line in next(exp.glob("trial_*/result.json")).read_text().splitlines()]
    assert len(epochs) == 2
    for e in epochs:
        for m in ("audio", "visual"):
            assert 0.0 <= e[f"mmpareto/conflict_frac_{m}"] <= 1.0
            assert 0.001 <= e[f"mmpareto/a1_{m}"] <= 0.999
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0


def _completed_trials(exp: Path, epochs: int) -> list[Path]:
    done = []
    for result in exp.glob("trial_*/result.json"):
        if len(result.read_text().splitlines()) >= epochs:
            done.append(result)
    return done


@pytest.fixture
def short_tmp():
    """Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep for RAY_TMPDIR."""
    folder = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("bucket", [False, True], ids=["folder", "file-uri"])
def test_resume_after_kill_finishes_without_rerunning(no_ray, short_tmp, tiny_synthetic, tmp_path, bucket):
    """Killed after one finished trial, `--resume` finishes the rest. With a URI as storage, Tune's trials
    live in the bucket and the driver's files (study, summaries) in the workdir."""
    epochs = 4
    space = _space_file(tmp_path, "resumable", num_samples=3, scheduler={"type": "fifo"},
                        fixed={**SPACE["fixed"], "epochs": epochs})
    if bucket:
        storage = ["--storage", f"file://{tmp_path / 'bucket'}", "--workdir", str(tmp_path / "work")]
        trials_root, driver_root = tmp_path / "bucket", tmp_path / "work"
    else:
        storage = ["--storage", str(tmp_path / "res")]
        trials_root = driver_root = tmp_path / "res"
    # No --name: the run gets a fresh one (resumable-<date>-<time>), and --resume finds it again.
    command = [sys.executable, "-m", "mmray.tune", "--space", str(space), "--data-dir", str(tiny_synthetic), *storage]
    env = {**os.environ, "RAY_TMPDIR": str(short_tmp)}
    with open(tmp_path / "first-run.log", "w") as log:
        run = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    trials = None
    while time.time() < deadline and run.poll() is None:
        trials = next(trials_root.glob("resumable-*"), None)
        if trials is not None and _completed_trials(trials, epochs):
            break
        time.sleep(0.2)
    assert trials is not None and re.fullmatch(r"resumable-\d{8}-\d{6}", trials.name), trials
    driver = driver_root / trials.name
    assert run.poll() is None, "the search ended before it could be killed: " + (tmp_path / "first-run.log").read_text()[-3000:]
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished_before = {p: p.read_bytes() for p in _completed_trials(trials, epochs)}
    assert 1 <= len(finished_before) < 3 and not (driver / SUMMARY_CSV).exists()

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    table = pd.read_csv(driver / SUMMARY_CSV)
    assert len(table) == 3 and set(table["status"]) == {"TERMINATED"}
    for path, content in finished_before.items():
        assert path.read_bytes() == content, "the finished trial was not run again"
    assert "best trial" in resumed.stdout
    # The study goes on: 3 complete trials, plus possibly the killed run's last proposal left running.
    states = [t.state for t in optuna.load_study(study_name="resumable",
                                                 storage=f"sqlite:///{driver / STUDY_FILE}").trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert states.count(optuna.trial.TrialState.RUNNING) == len(states) - 3 <= 1
    if bucket:
        assert (trials / SUMMARY_CSV).read_bytes() == (driver / SUMMARY_CSV).read_bytes()


def test_study_stores_the_selected_value_failed_and_pruned_trials_and_seeds_confirm(ray_local, tiny_synthetic,
                                                                                     tmp_path):
    """One search: a weight decay of 1e12 makes AdamW's weights overflow, so the loss turns NaN (FAIL);
    ASHA stops weak trials (PRUNED); the study's values are the selected epochs' values; then the top 2
    configurations are retrained with 2 further seeds and the best mean is chosen."""
    path = _space_file(tmp_path, "trust", num_samples=8, confirm={"top_k": 2, "seeds": 2},
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
                       fixed={**SPACE["fixed"], "epochs": 3},
                       params={"lr": {"type": "categorical", "choices": [3e-3, 1e-3, 1e-6]},
                               "weight_decay": {"type": "categorical", "choices": [1e-4, 1e12]}})
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    best = run_search(space, RunOptions(storage=tmp_path / "results", name="trust"))

    exp = tmp_path / "results" / "trust"
    table = pd.read_csv(exp / SUMMARY_CSV)
    study = optuna.load_study(study_name="trust", storage=f"sqlite:///{exp / STUDY_FILE}")
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    states = {t.state for t in study.trials}
    assert {optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL} <= states, states
    for _, row in table.iterrows():
        trial = by_tune_id[row["trial_id"]] if isinstance(row["trial_id"], str) else None
        if row["status"] == "ERROR":
            assert "NonFiniteLoss" in row["error"] and "weight_decay" not in row["error"]
            continue
        stored = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else trial.user_attrs["best_value"]
        assert stored == pytest.approx(row["val/fused_acc"]), row["trial_id"]  # the selected epoch's value
        assert max(trial.intermediate_values.values()) == pytest.approx(row["val/fused_acc"])
        assert (trial.state == optuna.trial.TrialState.PRUNED) == (row["epochs_run"] < 3)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all(t.params["weight_decay"] == 1e12 for t in failed)
    assert best["config"]["weight_decay"] == 1e-4, "a broken trial never wins"

    # Confirmation: seeds 1 and 2 of each of the top 2 configurations, every epoch; the best mean wins.
    assert [s["seed"] for s in best["seeds"]] == [1, 2]
    candidates = best["confirmation"]
    assert len(candidates) == 2 and candidates[0]["mean"] >= candidates[1]["mean"]
    per_seed = [s["validation"]["val/fused_acc"] for s in best["seeds"]]
    assert best["validation"]["val/fused_acc"] == pytest.approx(sum(per_seed) / 2)
    assert best["validation_std"]["val/fused_acc"] == pytest.approx(pd.Series(per_seed).std())
    assert candidates[0]["mean"] == pytest.approx(best["validation"]["val/fused_acc"])
    tests = [s["test"]["test/fused_acc"] for s in best["seeds"]]
    assert best["test"]["test/fused_acc"] == pytest.approx(sum(tests) / 2)
    assert json.loads((exp / BEST_JSON).read_text())["seeds"] == json.loads(json.dumps(best["seeds"]))
    assert len(list((exp / "confirm").glob("confirm_*"))) == 4


def test_non_finite_values_never_rank_best():
    from mmray.tune.results import best_index

    nan, inf = float("nan"), float("inf")
    values, epochs = pd.Series([0.5, 0.8, nan]), pd.Series([1, 2, 3])
    assert best_index(values, epochs, "max") == 1
    assert best_index(values, epochs, "min") == 0
    assert best_index(pd.Series([0.5, inf]), pd.Series([1, 2]), "max") == 0
    assert best_index(pd.Series([nan, nan]), pd.Series([1, 2]), "max") is None
