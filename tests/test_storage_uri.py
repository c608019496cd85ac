"""`--storage` as a URI (s3://, gs://; file:// here): Tune's trials and Train's checkpoints in the
"bucket", the driver's own files (Optuna's SQLite study, summaries, the selected checkpoint) in a
local workdir, copied to the bucket at the end; --resume from the bucket plus the workdir's study.
Real Ray, real pyarrow filesystems."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
from test_search import SPACE, _space_file

from mmray.cli import build_parser
from mmray.errors import UserError
from mmray.train.checkpoint import STATE_FILE
from mmray.train.diagnose import DIAGNOSTICS_JSON
from mmray.train.checkpoint import BEST_JSON
from mmray.tune.results import SUMMARY_CSV, SUMMARY_JSON
from mmray.tune.search import STUDY_FILE, prepare_run, run_search
from mmray.tune.space import load_space
from mmray.tune.storage import SELECTED_CHECKPOINT, RunOptions, fresh_name, latest_name, parse_storage

DRIVER_FILES = (STUDY_FILE, SUMMARY_CSV, SUMMARY_JSON, BEST_JSON)


def test_storage_is_a_uri_or_a_local_folder(tmp_path):
    assert parse_storage("s3://bucket/results/") == "s3://bucket/results"
    assert parse_storage(str(tmp_path / "a" / ".." / "b")) == tmp_path / "b"
    remote = RunOptions(storage="s3://bucket/results", name="gmm", workdir=tmp_path / "work")
    assert remote.remote and remote.experiment_uri == "s3://bucket/results/gmm"
    assert remote.experiment_dir == tmp_path / "work" / "gmm"
    local = RunOptions(storage=tmp_path / "res", name="gmm", workdir=tmp_path / "work")
    assert not local.remote and local.experiment_dir == tmp_path / "res" / "gmm"
    assert local.experiment_uri == str(tmp_path / "res" / "gmm")
    args = build_parser().parse_args(["tune", "--space", "gmm", "--storage", "gs://b/x", "--workdir", str(tmp_path)])
    assert (args.storage, args.workdir) == ("gs://b/x", str(tmp_path))


@pytest.fixture
def small_space(tmp_path):
    return load_space(str(_space_file(tmp_path, "small")))


def _saved_by_tune(folder: Path) -> Path:
    """What Tune writes into an experiment folder at its start and first save (all prepare_run looks at)."""
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"")
    (folder / "experiment_state-2026-12-03_10-45-12.json").write_text("{}")
    return folder


def _study_with_a_finished_trial(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="small", storage=f"sqlite:///{path}")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    return path.read_bytes()


def test_uri_storage_refuses_before_writing_anything(small_space, tmp_path):
    bucket, work = tmp_path / "bucket", tmp_path / "work"
    options = RunOptions(storage=f"file://{bucket}", name="small", workdir=work)
    with pytest.raises(UserError, match=f"file://{bucket}/small: nothing to resume"):
        prepare_run(small_space, replace(options, resume=True))
    # The study is the driver's, in its workdir, synced to the bucket after every trial: with neither,
    # there is nothing to resume from.
    _saved_by_tune(bucket / "small")
    with pytest.raises(UserError, match=f"file://{bucket}/small/{STUDY_FILE}: nothing to resume"):
        prepare_run(small_space, replace(options, resume=True))
    with pytest.raises(UserError, match=f"file://{bucket}/small: experiment already exists"):
        prepare_run(small_space, options)
    with pytest.raises(UserError, match="nosuch://x/small: Unrecognized filesystem"):
        prepare_run(small_space, replace(options, storage="nosuch://x"))
    assert sorted(p.name for p in tmp_path.rglob("*") if "experiment_state" not in p.name) == [
        "bucket", "small", "small.yaml", "tuner.pkl"]


def test_a_new_head_resumes_with_the_study_from_the_bucket(small_space, tiny_synthetic, tmp_path):
    bucket, work = tmp_path / "bucket", tmp_path / "new-head"
    content = _study_with_a_finished_trial(_saved_by_tune(bucket / "small") / STUDY_FILE)
    options = RunOptions(storage=f"file://{bucket}", name="small", workdir=work, resume=True)
    _, resumed = prepare_run(small_space.with_overrides(data_dir=str(tiny_synthetic)), options)
    assert resumed.resume and (work / "small" / STUDY_FILE).read_bytes() == content


def test_a_folder_tune_never_saved_is_started_afresh_unless_it_holds_results(small_space, tiny_synthetic,
                                                                              tmp_path):
    """A crash between creating the experiment folder and Tune's first save leaves the folder and an empty
    study: a rerun and --resume both start it afresh. A folder with results is never touched."""
    space = small_space.with_overrides(data_dir=str(tiny_synthetic))
    options = RunOptions(storage=tmp_path / "res", name="small")
    exp = options.experiment_dir
    exp.mkdir(parents=True)
    optuna.create_study(study_name="small", storage=f"sqlite:///{exp / STUDY_FILE}")
    for resume in (False, True):
        _, fresh = prepare_run(space, replace(options, resume=resume))
        assert not fresh.resume and not (exp / STUDY_FILE).exists()
    content = _study_with_a_finished_trial(exp / STUDY_FILE)
    with pytest.raises(UserError, match=f"{exp}: experiment already exists but Tune never saved it"):
        prepare_run(space, replace(options, resume=True))
    assert (exp / STUDY_FILE).read_bytes() == content
    (exp / STUDY_FILE).unlink()
    (exp / "trial_abc").mkdir()
    with pytest.raises(UserError, match="Tune never saved it"):
        prepare_run(space, options)
    assert (exp / "trial_abc").is_dir()


def test_runs_without_a_name_get_fresh_names_and_resume_finds_the_latest(tmp_path):
    assert fresh_name("gmm", now=0) != fresh_name("gmm", now=1)
    assert re.fullmatch(r"gmm-\d{8}-\d{6}", fresh_name("gmm"))
    for storage in (tmp_path / "res", f"file://{tmp_path / 'res'}"):
        with pytest.raises(UserError, match="nothing to resume: no experiment of space 'gmm'"):
            latest_name(storage, "gmm")
    for name in ("gmm-20261203-104512", "gmm-20261203-114500", "gmm-other", "gmm2-20261204-000000",
                 "ogm-20261205-000000"):
        (tmp_path / "res" / name).mkdir(parents=True)
    for storage in (tmp_path / "res", f"file://{tmp_path / 'res'}"):
        assert latest_name(storage, "gmm") == "gmm-20261203-114500"


def _same_file_in(tree: Path, pattern: str, content: bytes) -> bool:
    return any(p.read_bytes() == content for p in tree.glob(pattern))


def test_search_on_uri_storage_keeps_trials_in_the_bucket_and_resumes(ray_local, tiny_synthetic, small_space,
                                                                      tmp_path):
    space = small_space.with_overrides(data_dir=str(tiny_synthetic))
    bucket, work = tmp_path / "bucket", tmp_path / "work"
    options = RunOptions(storage=f"file://{bucket}", name="small", workdir=work)
    best = run_search(space, options)

    stored, local = bucket / "small", work / "small"
    trials = sorted(stored.glob("trial_*"))
    assert len(trials) == 2 and all(list(t.glob("checkpoint_*/" + STATE_FILE)) for t in trials)
    assert not list(local.glob("trial_*")), "Tune wrote nothing into the workdir"
    for name in DRIVER_FILES:  # written here, copied to the bucket
        assert (local / name).read_bytes() == (stored / name).read_bytes(), name
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{local / STUDY_FILE}")
    assert len(study.trials) == 2
    table = pd.read_csv(local / SUMMARY_CSV)
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}
    assert best["experiment"] == f"file://{bucket}/small"

    # The selected checkpoint: the best trial's, downloaded into the workdir, diagnosed and tested there.
    checkpoint = Path(best["checkpoint"])
    assert checkpoint == local / SELECTED_CHECKPOINT / "seed0"
    assert _same_file_in(stored / f"trial_{best['trial_id']}", f"checkpoint_*/{STATE_FILE}",
                         (checkpoint / STATE_FILE).read_bytes())
    assert best["validation"]["val/fused_acc"] == table["val/fused_acc"].max()
    diagnostics = json.loads((checkpoint / DIAGNOSTICS_JSON).read_text())
    assert diagnostics["test"]["accuracy"]["fused"] == pytest.approx(best["test"]["test/fused_acc"])
    uploaded = stored / SELECTED_CHECKPOINT / "seed0" / DIAGNOSTICS_JSON
    assert uploaded.read_bytes() == (checkpoint / DIAGNOSTICS_JSON).read_bytes()

    with pytest.raises(UserError, match="already exists"):
        run_search(space, options)
    with pytest.raises(UserError, match=f"file://{bucket}/small: experiment already exists"):
        run_search(space, replace(options, workdir=tmp_path / "elsewhere"))

    # --resume restores Tune's experiment from the bucket and the study from the workdir: nothing reruns.
    results = {p: p.read_bytes() for p in stored.glob("trial_*/result.json")}
    assert len(results) == 2
    resumed = run_search(space, replace(options, resume=True))
    assert resumed["trial_id"] == best["trial_id"] and resumed["test"] == best["test"]
    assert {p: p.read_bytes() for p in stored.glob("trial_*/result.json")} == results
    assert len(optuna.load_study(study_name="small", storage=f"sqlite:///{local / STUDY_FILE}").trials) == 2


def test_two_worker_trial_on_uri_storage_selects_a_train_checkpoint(ray_local, tiny_synthetic, tmp_path):
    path = _space_file(tmp_path, "ddp", num_samples=1, params={}, scheduler={"type": "fifo"},
                       resources={"workers": 2, "cpus_per_worker": 0.5}, fixed=SPACE["fixed"])
    space = load_space(str(path)).with_overrides(data_dir=str(tiny_synthetic))
    bucket, work = tmp_path / "bucket", tmp_path / "work"
    best = run_search(space, RunOptions(storage=f"file://{bucket}", name="ddp", workdir=work))

    (train_run,) = (bucket / "ddp" / "train").glob("train-*")  # Ray Train's run, in the bucket
    checkpoint = Path(best["checkpoint"])
    assert checkpoint == work / "ddp" / SELECTED_CHECKPOINT / "seed0"
    assert _same_file_in(train_run, f"checkpoint_*/{STATE_FILE}", (checkpoint / STATE_FILE).read_bytes())
    assert not (work / "ddp" / "train").exists()
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0
    assert (bucket / "ddp" / BEST_JSON).read_bytes() == (work / "ddp" / BEST_JSON).read_bytes()
