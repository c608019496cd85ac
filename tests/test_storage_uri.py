"""`--storage` as a URI (s3://, gs://; file:// here): Tune's trials and Train's checkpoints in the
"bucket", the driver's own files (Optuna's SQLite study, summaries, the selected checkpoint) in a
local workdir, copied to the bucket at the end; --resume from the bucket plus the workdir's study.
Real Ray, real pyarrow filesystems."""

from __future__ import annotations

import json
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
from mmray.tune.storage import SELECTED_CHECKPOINT, RunOptions, parse_storage

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


def test_uri_storage_refuses_before_writing_anything(small_space, tmp_path):
    bucket, work = tmp_path / "bucket", tmp_path / "work"
    options = RunOptions(storage=f"file://{bucket}", name="small", workdir=work)
    with pytest.raises(UserError, match=f"file://{bucket}/small: nothing to resume"):
        prepare_run(small_space, replace(options, resume=True))
    # The study is the driver's, in its workdir: without it there is nothing to resume from.
    (bucket / "small").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{work / 'small' / STUDY_FILE}: nothing to resume"):
        prepare_run(small_space, replace(options, resume=True))
    with pytest.raises(UserError, match=f"file://{bucket}/small: experiment already exists"):
        prepare_run(small_space, options)
    (bucket / "small").rmdir()
    (work / "small").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{work / 'small'}: experiment already exists"):
        prepare_run(small_space, options)
    with pytest.raises(UserError, match="nosuch://x/small: Unrecognized filesystem"):
        prepare_run(small_space, replace(options, storage="nosuch://x"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bucket", "small", "small.yaml", "work"]


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
    assert checkpoint == local / SELECTED_CHECKPOINT
    assert _same_file_in(stored / f"trial_{best['trial_id']}", f"checkpoint_*/{STATE_FILE}",
                         (checkpoint / STATE_FILE).read_bytes())
    assert best["validation"]["val/fused_acc"] == table["val/fused_acc"].max()
    diagnostics = json.loads((checkpoint / DIAGNOSTICS_JSON).read_text())
    assert diagnostics["test"]["accuracy"]["fused"] == pytest.approx(best["test"]["test/fused_acc"])
    uploaded = stored / SELECTED_CHECKPOINT / DIAGNOSTICS_JSON
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
    assert checkpoint == work / "ddp" / SELECTED_CHECKPOINT
    assert _same_file_in(train_run, f"checkpoint_*/{STATE_FILE}", (checkpoint / STATE_FILE).read_bytes())
    assert not (work / "ddp" / "train").exists()
    assert 0.0 <= best["test"]["test/fused_acc"] <= 1.0
    assert (bucket / "ddp" / BEST_JSON).read_bytes() == (work / "ddp" / BEST_JSON).read_bytes()
