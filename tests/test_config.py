"""Flat dicts -> typed configs (mmray/config.py, mmray/train/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from mmray.config import build, coerce
from mmray.errors import UserError
from mmray.methods import METHODS
from mmray.train.config import TrainConfig, key_type


def test_defaults_build_from_an_empty_dict():
    cfg = TrainConfig.from_flat({})
    assert cfg == TrainConfig(method_params=cfg.method_params)
    assert cfg.method_params is not None


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_registered_method_builds(method):
    cfg = TrainConfig.from_flat({"method": method, "lr": 0.01})
    assert cfg.method == method and cfg.lr == 0.01


@pytest.mark.parametrize("method", ["joint", "audio-only", "visual-only"])
def test_unknown_key_is_rejected_and_named(method):
    # None of the current methods has parameters of its own, so any non-general key is unknown.
    with pytest.raises(UserError, match="alpha"):
        TrainConfig.from_flat({"method": method, "alpha": 0.5})


def test_misspelt_general_key_is_named():
    with pytest.raises(UserError, match="lrr"):
        TrainConfig.from_flat({"lrr": 0.01})


def test_unknown_method_is_named():
    with pytest.raises(UserError, match="no-such-method"):
        TrainConfig.from_flat({"method": "no-such-method"})


def test_launcher_keys_are_ignored():
    cfg = TrainConfig.from_flat({"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0})
    assert "workers" not in cfg.to_flat()


def test_int_is_accepted_for_a_float_and_becomes_float():
    cfg = TrainConfig.from_flat({"lr": 1, "weight_decay": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert isinstance(cfg.weight_decay, float)


def test_integral_float_is_accepted_for_an_int():
    cfg = TrainConfig.from_flat({"epochs": 3.0})
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)


@pytest.mark.parametrize("values, key", [
    ({"lr": "abc"}, "lr"),
    ({"lr": True}, "lr"),
    ({"epochs": True}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": "64"}, "batch_size"),
    ({"model": 3}, "model"),
])
def test_ill_typed_values_are_rejected_naming_the_key(values, key):
    with pytest.raises(UserError, match=key):
        TrainConfig.from_flat(values, where="here")


@pytest.mark.parametrize("key, bad", [("fusion", "attention"), ("optimizer", "adam"), ("lr_schedule", "step")])
def test_literal_fields_reject_other_values(key, bad):
    with pytest.raises(UserError, match=key) as info:
        TrainConfig.from_flat({key: bad})
    assert bad in str(info.value)


@pytest.mark.parametrize("key, good", [("fusion", "sum"), ("optimizer", "sgd"), ("lr_schedule", "cosine")])
def test_literal_fields_accept_their_values(key, good):
    assert getattr(TrainConfig.from_flat({key: good}), key) == good


@pytest.mark.parametrize("values, key", [
    ({"epochs": 0}, "epochs"), ({"epochs": -3}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"width": 0}, "width"), ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"), ({"weight_decay": -1e-4}, "weight_decay"),
    ({"momentum": 1.0}, "momentum"), ({"width": 1025}, "width"), ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"),
    ({"model": "no-such-net"}, "model"), ({"shuffle_buffer": 0}, "shuffle_buffer"),
])
def test_out_of_range_values_are_rejected(values, key):
    with pytest.raises(UserError, match=key):
        TrainConfig.from_flat(values)


def test_error_message_starts_with_where():
    with pytest.raises(UserError) as info:
        TrainConfig.from_flat({"epochs": 0}, where="my.yaml: settings")
    assert str(info.value).startswith("my.yaml: settings.epochs")


def test_to_flat_from_flat_round_trip():
    cfg = TrainConfig.from_flat({"method": "visual-only", "fusion": "sum", "width": 24, "epochs": 3, "optimizer": "sgd",
                                 "lr": 0.02, "momentum": 0.85, "lr_schedule": "cosine", "data_dir": "/d", "seed": 7})
    flat = cfg.to_flat()
    assert flat["method"] == "visual-only" and flat["momentum"] == 0.85 and flat["data_dir"] == "/d"
    assert "method_params" not in flat
    assert TrainConfig.from_flat(flat) == cfg


def test_key_type_knows_general_keys_only():
    assert key_type("joint", "lr") is float
    assert key_type("joint", "epochs") is int
    assert key_type("joint", "alpha") is None
    with pytest.raises(UserError):
        key_type("no-such-method", "lr")


# --- the generic helpers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, annotation, expected", [
    (None, int | None, None), (3, int | None, 3), ("x", str, "x"), (False, bool, False),
    ("a", Literal["a", "b"], "a"), (2, float, 2.0),
])
def test_coerce_accepts(value, annotation, expected):
    out = coerce(value, annotation, "w")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, annotation", [
    (None, int), ("3", int | None), (1, bool), ("c", Literal["a", "b"]), (None, str), ("1.0", float),
    (float("nan"), float), (float("inf"), float), (-float("inf"), float | None), (float("nan"), int),
])
def test_coerce_rejects(value, annotation):
    with pytest.raises(UserError, match="^w: "):
        coerce(value, annotation, "w")


@dataclass
class _Pair:
    a: int = 1
    b: str = "x"


def test_build_rejects_unknown_keys_and_non_mappings():
    assert build(_Pair, {"a": 2}, "p") == _Pair(a=2, b="x")
    with pytest.raises(UserError, match=r"p\.c: unknown key"):
        build(_Pair, {"c": 1}, "p")
    with pytest.raises(UserError, match="expected a mapping"):
        build(_Pair, [1, 2], "p")
    with pytest.raises(UserError, match=r"p\.a"):
        build(_Pair, {"a": "two"}, "p")
