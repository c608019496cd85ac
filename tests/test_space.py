"""Search-space YAML -> validated SearchSpace (mmray/tune/space.py). Pure Python: no Ray is started."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import optuna
import pytest
import yaml
from networks import method_and_network

from mmray.errors import UserError
from mmray.train.config import TrainConfig
from mmray.train.loop import evaluate
from mmray.tune.space import METRICS, SPACES_DIR, Param, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {
    "method": "joint",
    "dataset": "synthetic-av",
    "metric": "val/fused_acc",
    "mode": "max",
    "num_samples": 5,
    "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
    "fixed": {"epochs": 4, "batch_size": 32},
    "params": {
        "lr": {"type": "log-float", "low": 1.0e-4, "high": 1.0e-2},
        "fusion": {"type": "categorical", "choices": ["concat", "sum"]},
        "width": {"type": "int", "low": 16, "high": 48, "step": 16},
    },
}

CONDITIONAL = {
    **BASE,
    "params": {
        "lr": {"type": "log-float", "low": 1.0e-4, "high": 1.0e-2},
        "width": {"type": "int", "low": 8, "high": 40, "step": 8},
        "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    },
}


def write_space(tmp_path: Path, content: dict | str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message, f"message does not name the file {path}: {message!r}"
    for fragment in fragments:
        assert fragment in message, f"message does not name {fragment!r}: {message!r}"
    return message


# --- the shipped space -------------------------------------------------------------------------------------------


def test_shipped_joint_space_loads_as_written():
    path = SPACES_DIR / "joint.yaml"
    raw = yaml.safe_load(path.read_text())
    space = load_space("joint")  # found by name in search_spaces/
    assert space.source == path
    assert load_space(str(path)) == space  # and by path
    assert (space.method, space.dataset, space.metric, space.mode) == (
        raw["method"], raw["dataset"], raw["metric"], raw["mode"])
    assert space.num_samples == raw["num_samples"]
    assert space.epochs == raw["fixed"]["epochs"]
    assert space.fixed == raw["fixed"]
    assert space.scheduler.grace_period == raw["scheduler"]["grace_period"]
    assert {p.name: p.type for p in space.params} == {name: spec["type"] for name, spec in raw["params"].items()}
    for p in space.params:
        spec = raw["params"][p.name]
        if p.type == "categorical":
            assert list(p.choices) == spec["choices"]
        else:
            assert (p.low, p.high) == (spec["low"], spec["high"])
            assert isinstance(p.low, int if p.type == "int" else float)


def test_valid_space_round_trips_its_values(tmp_path):
    space = load_space(str(write_space(tmp_path, BASE)))
    assert space.name == "space"  # defaults to the file's stem
    assert space.num_samples == 5 and space.epochs == 4
    assert [p.name for p in space.params] == ["lr", "fusion", "width"]
    lr = space.params[0]
    assert (lr.type, lr.low, lr.high) == ("log-float", 1e-4, 1e-2)


# --- errors name the file and the key -----------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    expect_error(tmp_path / "nope.yaml", "no such")


def test_malformed_yaml_names_the_line(tmp_path):
    text = "method: joint\ndataset: synthetic-av\nmetric: val/fused_acc\nmode: max: min\nnum_samples: 2\n"
    expect_error(write_space(tmp_path, text), "malformed YAML", "line 4")


def test_top_level_must_be_a_mapping(tmp_path):
    expect_error(write_space(tmp_path, "- method\n- joint\n"), "mapping")


def _with(changes: dict, drop: tuple[str, ...] = ()) -> dict:
    """BASE with `changes` applied; keys like "params.lr.low" reach into nested mappings."""
    raw = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[last]
    return raw


BAD_SPACES = {
    "unknown top-level key": (_with({"epochz": 3}), ["'epochz'"]),
    "missing required key": (_with({}, drop=("metric",)), ["'metric'"]),
    "unknown method": (_with({"method": "no-such-method"}), ["no-such-method"]),
    "unknown key under fixed": (_with({"fixed.dropout": 0.1}), ["fixed.dropout"]),
    "run setting under fixed": (_with({"fixed.seed": 1}), ["fixed.seed"]),
    "decode_frames searched": (_with({"params.decode_frames": {"type": "categorical", "choices": ["host", "device"]}}),
                               ["params.decode_frames", "under fixed"]),
    "unknown param name": (_with({"params.alpha": {"type": "float", "low": 0.1, "high": 1.0}}), ["params.alpha"]),
    "param also in fixed": (_with({"fixed.lr": 1e-3}), ["params.lr", "fixed"]),
    "unknown param type": (_with({"params.lr.type": "uniform"}), ["params.lr.type", "uniform"]),
    "empty range": (_with({"params.lr.low": 1e-3, "params.lr.high": 1e-3}), ["params.lr"]),
    "inverted range": (_with({"params.lr.low": 1e-2, "params.lr.high": 1e-4}), ["params.lr"]),
    "log-float low of zero": (_with({"params.weight_decay": {"type": "log-float", "low": 0.0, "high": 0.1}}),
                              ["params.weight_decay.low"]),
    "log-float negative low": (_with({"params.weight_decay": {"type": "log-float", "low": -1.0, "high": 0.1}}),
                               ["params.weight_decay.low"]),
    "int type on a float setting": (_with({"params.lr": {"type": "int", "low": 1, "high": 3}}), ["params.lr.type"]),
    "float type on an int setting": (_with({"params.width": {"type": "float", "low": 8, "high": 64}}),
                                     ["params.width.type"]),
    "categorical with empty choices": (_with({"params.fusion.choices": []}), ["params.fusion.choices"]),
    "categorical choice of wrong type": (_with({"params.fusion.choices": ["concat", 3]}),
                                         ["params.fusion.choices", "3"]),
    "categorical choice not allowed": (_with({"params.fusion.choices": ["concat", "attention"]}),
                                       ["params.fusion.choices", "attention"]),
    "test metric": (_with({"metric": "test/fused_acc"}), ["metric", "test/fused_acc"]),
    "unknown validation metric": (_with({"metric": "val/loss"}), ["metric", "val/loss"]),
    "grace period above epochs": (_with({"scheduler.grace_period": 5}), ["grace_period", "epochs"]),
    "when names an unknown key": (
        _with({"params.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimiser": "sgd"}}}),
        ["params.momentum.when.optimiser"]),
    "when names a later param": (
        _with({"params.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
               "params.optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}}),
        ["params.momentum.when.optimizer"]),
    # Every bound and every choice is checked, not only `low` and the first choice.
    "NaN bound": (_with({"params.lr.high": float("nan")}), ["params.lr.high", "nan"]),
    "inf bound": (_with({"params.lr.high": float("inf")}), ["params.lr.high", "inf"]),
    "negative weight decay at low": (_with({"params.weight_decay": {"type": "float", "low": -0.1, "high": 0.1}}),
                                     ["weight_decay", "-0.1"]),
    "unknown model as a second choice": (_with({"params.model": {"type": "categorical",
                                                                 "choices": ["small-cnn", "no-such-net"]}}),
                                         ["params.model", "no-such-net"]),
    "huge width as the high bound": (_with({"params.width.high": 100000}), ["params.width", "100000", "1024"]),
    "momentum of 1 as the high bound": (_with({"params.momentum": {"type": "float", "low": 0.5, "high": 1.5}}),
                                        ["params.momentum", "1.5"]),
    "NaN cpus per worker": (_with({"resources": {"cpus_per_worker": float("nan")}}),
                            ["resources.cpus_per_worker", "nan"]),
    "NaN fixed setting": (_with({"fixed.weight_decay": float("nan")}), ["fixed.weight_decay", "nan"]),
    "negative seed": (_with({"seed": -1}), ["seed", "-1"]),
    "seed above 2**32 - 1": (_with({"seed": 2**32}), ["seed", str(2**32)]),
    "confirmation seeds above 2**32 - 1": (_with({"seed": 2**32 - 2, "confirm": {"top_k": 1, "seeds": 3}}),
                                           ["seed", str(2**32 + 1)]),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_raises_user_error_naming_file_and_key(tmp_path, case):
    raw, fragments = BAD_SPACES[case]
    expect_error(write_space(tmp_path, raw), *fragments)


@pytest.mark.parametrize("fields, key", [
    ({"type": "log-float", "low": 0.0, "high": 1.0}, "low"),
    ({"type": "float", "low": 0.5, "high": 0.5}, "high"),
    ({"type": "int", "low": 8, "high": 16, "step": 0}, "step"),
    ({"type": "categorical", "choices": ()}, "choices"),
])
def test_a_param_refuses_what_cannot_be_searched_naming_the_key(fields, key):
    with pytest.raises(UserError, match=f"^{key}: "):
        Param("x", **fields)


def test_accepted_metrics_are_the_ones_the_loop_reports(small_synthetic):
    method, network = method_and_network(TrainConfig.from_flat({"data_dir": str(small_synthetic), "width": 8}))
    reported = evaluate(network, method, method.ctx.data.eval_batches("val"), method.ctx.num_classes, "val")
    assert set(reported) == set(METRICS)


# --- conditional parameters through a real Optuna trial -----------------------------------------------------------


def _ask_many(space, n=60, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    define = space.define_by_run()
    for _ in range(n):
        trial = study.ask()
        constants = define(trial)
        yield trial.params, constants


def test_conditional_param_is_suggested_exactly_when_its_condition_holds(tmp_path):
    space = load_space(str(write_space(tmp_path, CONDITIONAL)))
    seen = set()
    for params, _ in _ask_many(space):
        seen.add(params["optimizer"])
        assert ("momentum" in params) == (params["optimizer"] == "sgd"), params
    assert seen == {"adamw", "sgd"}  # both branches were exercised


def test_define_by_run_returns_the_shared_constants(tmp_path):
    space = load_space(str(write_space(tmp_path, CONDITIONAL)))
    for _, constants in _ask_many(space, n=3):
        assert constants["method"] == "joint"
        assert constants["dataset"] == "synthetic-av"
        assert constants["epochs"] == 4 and constants["batch_size"] == 32
        assert not {"lr", "width", "optimizer", "momentum"} & set(constants)  # searched values are not constants


def test_suggested_values_stay_within_bounds(tmp_path):
    space = load_space(str(write_space(tmp_path, CONDITIONAL)))
    widths = set()
    for params, _ in _ask_many(space):
        assert isinstance(params["width"], int) and 8 <= params["width"] <= 40 and params["width"] % 8 == 0
        widths.add(params["width"])
        assert 1e-4 <= params["lr"] <= 1e-2
        if "momentum" in params:
            assert 0.8 <= params["momentum"] <= 0.99
    assert len(widths) > 1


def test_log_float_is_sampled_on_a_log_scale(tmp_path):
    # Uniform on [1e-4, 1e-2] would put ~99% of draws above 1e-3; log-uniform puts ~50% there.
    space = load_space(str(write_space(tmp_path, CONDITIONAL)))
    lrs = [params["lr"] for params, _ in _ask_many(space, n=200)]
    below = sum(lr < 1e-3 for lr in lrs) / len(lrs)
    assert 0.3 < below < 0.7, below
    assert all(math.isfinite(lr) for lr in lrs)


@pytest.mark.parametrize("optimizer, expect_momentum", [("sgd", True), ("adamw", False)])
def test_condition_on_a_fixed_setting(tmp_path, optimizer, expect_momentum):
    raw = copy.deepcopy(CONDITIONAL)
    del raw["params"]["optimizer"]
    raw["fixed"]["optimizer"] = optimizer
    space = load_space(str(write_space(tmp_path, raw)))
    for params, constants in _ask_many(space, n=5):
        assert constants["optimizer"] == optimizer
        assert ("momentum" in params) is expect_momentum


# --- command-line overrides ---------------------------------------------------------------------------------------


def test_with_overrides_changes_values_and_keeps_the_rest(tmp_path):
    space = load_space(str(write_space(tmp_path, BASE)))
    changed = space.with_overrides(num_samples=3, epochs=6, max_concurrent=None, seed=None)
    assert changed.num_samples == 3
    assert changed.epochs == 6 and changed.fixed["epochs"] == 6
    assert changed.fixed["batch_size"] == 32
    assert changed.seed == space.seed and changed.max_concurrent == space.max_concurrent  # None = not given
    assert changed.params == space.params
    assert (space.num_samples, space.epochs) == (5, 4)  # the original is untouched


def test_override_epochs_below_grace_period_is_rejected(tmp_path):
    path = write_space(tmp_path, BASE)  # grace_period 2
    space = load_space(str(path))
    with pytest.raises(UserError, match="grace_period") as info:
        space.with_overrides(epochs=1)
    assert str(path) in str(info.value)


def test_override_num_samples_zero_is_rejected(tmp_path):
    space = load_space(str(write_space(tmp_path, BASE)))
    with pytest.raises(UserError, match="num_samples"):
        space.with_overrides(num_samples=0)


# --- where a search writes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a/b", "/abs/olute"])
def test_experiment_name_must_be_one_folder_inside_the_storage(tmp_path, name):
    from mmray.tune.storage import RunOptions

    with pytest.raises(UserError, match="--name"):
        RunOptions(storage=tmp_path / "res", name=name)
    assert not (tmp_path / "res").exists() and not (tmp_path / "x").exists()


def test_storage_that_cannot_hold_experiments_is_refused(tmp_path):
    import os

    from mmray.tune.storage import RunOptions

    (tmp_path / "file").write_text("data")
    for storage, words in [(tmp_path / "file", "not a folder"), (tmp_path / "file" / "res", "is a file")]:
        with pytest.raises(UserError, match=words) as info:
            RunOptions(storage=storage, name="x")
        assert str(storage) in str(info.value)
    assert (tmp_path / "file").read_text() == "data"
    if os.geteuid() != 0:  # root writes into a read-only (0555) folder, so only others can see the refusal
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(UserError, match="cannot write"):
            RunOptions(storage=locked / "res", name="x")
    RunOptions(storage=tmp_path / "new" / "res", name="x")  # a folder yet to be made is fine
    assert not (tmp_path / "new").exists()
