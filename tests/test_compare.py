"""`mmray compare`: bad plans exit 2 before Ray starts; the paired statistics; and a small real comparison
on a real local Ray, run first with one method and then resumed with two (the finished one not rerun)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from mmray import cli
from mmray.compare import report
from mmray.compare.plan import load_plan
from mmray.compare.run import RUN_JSON
from mmray.methods import METHODS
from mmray.train.checkpoint import BEST_JSON
from mmray.tune.results import SUMMARY_CSV
from mmray.tune.space import SPACES_DIR

PLAN = {
    "dataset": "synthetic-av", "methods": ["joint", "ogm"], "metric": "val/fused_acc", "mode": "max", "seed": 0,
    "trials": 2, "max_concurrent": 1, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"workers": 1, "cpus_per_worker": 1}, "confirm": {"top_k": 1, "seeds": 2},
    "shared": {"epochs": 2, "batch_size": 64, "model": "small-cnn", "width": 8, "fusion": "concat",
               "weight_decay": 1.0e-4, "optimizer": "adamw", "lr_schedule": "constant"},
    "searched": {"lr": {"type": "log-float", "low": 1.0e-3, "high": 1.0e-2}},
}


def _plan(tmp_path: Path, name: str = "small", **changes) -> Path:
    """The plan, with ogm's space (a path relative to the plan) fitted to its 2 epochs."""
    ogm = yaml.safe_load((SPACES_DIR / "ogm.yaml").read_text())
    ogm["params"]["modulation_starts"]["high"] = 1
    (tmp_path / "ogm-2-epochs.yaml").write_text(yaml.safe_dump(ogm))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**PLAN, "spaces": {"ogm": "ogm-2-epochs.yaml"}, **changes}))
    return path


@pytest.fixture
def ray_never_starts(monkeypatch):
    def refuse(address):
        raise AssertionError("Ray was started for a bad plan")
    monkeypatch.setattr("mmray.tune.search.start_ray", refuse)


@pytest.mark.parametrize("changes, words", [
    ({"methods": ["joint", "no-such-method"], "spaces": {}}, "unknown method"),
    ({"dataset": "cremad", "methods": ["joint", "decision"], "spaces": {}}, "no search space for dataset 'cremad'"),
    ({"shared": {**PLAN["shared"], "model": "resnet18"}}, "inconsistent shared settings: joint.yaml fixes model"),
    ({"shared": {k: v for k, v in PLAN["shared"].items() if k != "width"}},
     "inconsistent shared settings: joint.yaml searches width"),
    ({"shared": {**PLAN["shared"], "alpha": 0.5}}, "shared.alpha: not a training setting"),
    ({"spaces": {}}, "(method ogm): params.modulation_starts at 2"),
], ids=["unknown-method", "no-space-for-dataset", "fixed-differently", "not-settled", "method-param-shared",
        "range-beyond-epochs"])
def test_bad_plan_exits_2_with_one_line_before_ray(ray_never_starts, tmp_path, capsys, changes, words):
    plan = _plan(tmp_path, **changes)
    code = cli.main(["compare", str(plan), "--storage", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(plan) in err and words in err, err
    assert not (tmp_path / "out").exists()


def test_help_explains_the_plan(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for words in ("shared:", "searched:", "confirm:", "<dataset>-<method>.yaml", "--resume", "inconsistent"):
        assert words in out


def test_shipped_plans_are_valid_and_pair_seeds():
    for name in ("compare", "compare-cremad", "compare-ave", "compare-kinetics-sounds"):
        plan = load_plan(name)
        spaces = plan.method_spaces()
        assert {s.epochs for s in spaces.values()} == {plan.shared["epochs"]}
        assert all("lr" in {p.name for p in s.params} for s in spaces.values())
        assert all(s.seed == plan.seed and s.confirm == plan.confirm for s in spaces.values())
    assert set(load_plan("compare").methods) == set(METHODS)  # the synthetic plan compares every method


def test_paired_difference_is_the_t_interval_and_ttest_rel():
    seeds = lambda values: [{"seed": s, "test/fused_acc": v} for s, v in zip((1, 2, 3), values)]
    d = report.paired_difference({"method": "m", "seeds": seeds([0.8, 0.7, 0.9])},
                                 {"method": "joint", "seeds": seeds([0.7, 0.7, 0.8])}, "test/fused_acc")
    # differences 0.1, 0, 0.1: mean 1/15, sd 1/sqrt(300), t = mean / (sd / sqrt 3) = 2 on 2 dof
    assert d["mean_diff"] == pytest.approx(1 / 15)
    half = stats.t.ppf(0.975, 2) * (1 / math.sqrt(300)) / math.sqrt(3)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((1 / 15 - half, 1 / 15 + half))
    assert d["p_value"] == pytest.approx(2 * stats.t.sf(2.0, 2)) and not d["significant"]


def test_failed_method_keeps_its_row(tmp_path):
    plan = load_plan(str(_plan(tmp_path)))
    spaces = plan.method_spaces()
    outcome = {"best": None, "error": "no trial reported a finite val/fused_acc (errors: NonFiniteLoss)",
               "wall_s": 3.0, "summary": tmp_path / "none.csv"}
    comparison = report.compare(plan, spaces, {"joint": outcome})
    assert comparison["methods"][0]["status"] == "failed" and comparison["paired"] == []
    assert "| joint | — |" in report.markdown(comparison) and "failed: no trial reported" in report.markdown(comparison)


@pytest.mark.ray
def test_small_comparison_then_resume_without_rerunning(ray_local, tiny_synthetic, tmp_path, capsys):
    plan = _plan(tmp_path)
    args = ["compare", str(plan), "--data-dir", str(tiny_synthetic), "--storage", str(tmp_path / "out")]
    # The "interrupted" comparison: only joint has run.
    assert cli.main(args + ["--methods", "joint"]) == 0
    folder = tmp_path / "out" / "small"
    joint_files = {p: p.read_bytes() for p in (folder / "joint").rglob("*") if p.is_file()}
    assert (folder / "joint" / BEST_JSON) in joint_files
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err

    assert cli.main(args + ["--resume"]) == 0
    assert "joint: finished before, not run again" in capsys.readouterr().out
    for path, content in joint_files.items():
        assert path.read_bytes() == content, f"{path} changed: joint was run again"

    comparison = json.loads((folder / report.COMPARISON_JSON).read_text())
    assert comparison["seeds"] == [1, 2] and [r["method"] for r in comparison["methods"]] == ["joint", "ogm"]
    table = pd.read_csv(folder / report.COMPARISON_CSV)
    assert len(table) == 4 and set(table.columns) >= {"method", "seed", *report.TEST_KEYS}
    for row in comparison["methods"]:
        best = json.loads((folder / row["method"] / BEST_JSON).read_text())
        summary = pd.read_csv(folder / row["method"] / SUMMARY_CSV)
        assert row["status"] == "ok" and [s["seed"] for s in row["seeds"]] == [1, 2]
        for seed, record in zip(row["seeds"], best["seeds"]):  # the per-seed figures are best.json's test
            assert {k: seed[k] for k in report.TEST_KEYS} == {k: record["test"][k] for k in report.TEST_KEYS}
            csv = table[(table["method"] == row["method"]) & (table["seed"] == seed["seed"])].iloc[0]
            assert csv["test/fused_acc"] == pytest.approx(seed["test/fused_acc"])
        assert row["mean"]["test/fused_acc"] == pytest.approx(best["test"]["test/fused_acc"])
        assert row["std"]["test/visual_acc"] == pytest.approx(best["test_std"]["test/visual_acc"])
        assert row["chosen"]["lr"] == best["config"]["lr"]
        assert row["trials"] == 2 + 1 * 2 and row["epochs"] == summary["epochs_run"].sum() + 1 * 2 * 2
        assert row["wall_s"] == json.loads((folder / row["method"] / RUN_JSON).read_text())["wall_s"] > 0
    assert set(comparison["methods"][1]["chosen"]) == {"lr", "alpha", "modulation_starts", "ge"}

    assert {(d["method"], d["baseline"], d["metric"]) for d in comparison["paired"]} == {
        ("ogm", "joint", "test/fused_acc"), ("ogm", "joint", "test/fused_f1")}
    ogm, joint = comparison["methods"][1]["seeds"], comparison["methods"][0]["seeds"]
    for d in comparison["paired"]:
        diffs = [a[d["metric"]] - b[d["metric"]] for a, b in zip(ogm, joint)]
        assert d["n"] == 2 and d["mean_diff"] == pytest.approx(sum(diffs) / 2)
        p = stats.ttest_rel([a[d["metric"]] for a in ogm], [b[d["metric"]] for b in joint]).pvalue
        assert (math.isnan(p) and math.isnan(d["p_value"])) or d["p_value"] == pytest.approx(p)

    md = (folder / report.COMPARISON_MD).read_text()
    assert "ttest_rel" in md and "95% CI" in md and md.count("\n| ogm |") == 1 + 2  # its row, and its two paired rows
    assert f"{comparison['methods'][0]['mean']['test/fused_acc']:.4f} ±" in md
    assert (folder / report.COMPARISON_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _trial_windows(experiment: Path) -> tuple[float, float]:
    """When a method's trials ran: (first epoch's start, last epoch's report), from their result rows."""
    rows = [json.loads(line) for path in experiment.rglob("result.json") for line in path.read_text().splitlines()
            if line.strip()]
    return min(r["timestamp"] - r["time_this_iter_s"] for r in rows), max(r["timestamp"] for r in rows)


@pytest.mark.ray
def test_methods_run_side_by_side_where_the_cluster_has_room(tiny_synthetic, tmp_path, _ray_temp, capsys):
    import ray

    ray.shutdown()  # this test needs a Ray with room for two methods' trials (4 logical CPUs: 1 kept for Ray Data)
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, object_store_memory=300 * 1024**2,
             _temp_dir=str(_ray_temp))
    try:
        plan = _plan(tmp_path, confirm={"top_k": 0, "seeds": 1})
        assert cli.main(["compare", str(plan), "--data-dir", str(tiny_synthetic), "--storage", str(tmp_path / "out")]) == 0
        assert "mmray: 2 methods at once fit this cluster" in capsys.readouterr().out
    finally:
        ray.shutdown()  # the next test's ray_local starts the usual 2-CPU Ray
    folder = tmp_path / "out" / "small"
    (joint_start, joint_end), (ogm_start, ogm_end) = _trial_windows(folder / "joint"), _trial_windows(folder / "ogm")
    assert joint_start < ogm_end and ogm_start < joint_end, "the two methods' trials did not overlap in time"
    comparison = json.loads((folder / report.COMPARISON_JSON).read_text())
    assert [(r["method"], r["status"], len(r["seeds"])) for r in comparison["methods"]] == [("joint", "ok", 1),
                                                                                        ("ogm", "ok", 1)]
