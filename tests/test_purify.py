"""`mmray purify` on a real local Ray: selection files, the filtered fine-tune, and no overwrite."""

from __future__ import annotations

import csv
import json

import pytest

from mmray.errors import UserError
from mmray.train.config import TrainConfig
from mmray.train.launch import run_in_process
from mmray.train.purify import purify


def test_purify_writes_the_selection_and_fine_tunes_on_it(ray_local, tiny_synthetic, tmp_path):
    cfg = TrainConfig.from_flat({"method": "gmm", "data_dir": str(tiny_synthetic), "epochs": 2,
                                 "warmup_epochs": 1, "width": 8, "batch_size": 32})
    _, best = run_in_process(cfg, tmp_path / "run", quiet=True)

    summary = purify(best, threshold=0.5, epochs=1)
    out = best.parent / "purified-t0.5"
    kept = json.loads((out / "kept.json").read_text())
    with open(out / "dropped.csv") as f:
        dropped = list(csv.DictReader(f))
    assert len(kept) + len(dropped) == summary["train_samples"] == 256
    assert summary["kept"] == len(kept) and not set(kept) & {row["sample_id"] for row in dropped}
    assert all(1.0 - float(row["p_imbalanced"]) <= 0.5 for row in dropped)
    assert set(summary["before"]) >= {"val/fused_acc", "test/fused_acc"}
    assert set(summary["after"]) == set(summary["before"])
    if dropped:
        flagged = sum(row["corrupted"] == "True" for row in dropped)
        assert summary["dropped_precision_corrupted"] == pytest.approx(flagged / len(dropped))
    assert json.loads((out / "purify.json").read_text())["kept"] == len(kept)

    # A second purification with the same threshold would overwrite the first: refused.
    with pytest.raises(UserError, match="already purified"):
        purify(best, threshold=0.5, epochs=1)
    assert json.loads((out / "kept.json").read_text()) == kept


def test_purify_refuses_a_run_that_is_not_gmm(ray_local, tiny_synthetic, tmp_path):
    cfg = TrainConfig.from_flat({"data_dir": str(tiny_synthetic), "epochs": 1, "width": 8})
    _, best = run_in_process(cfg, tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="needs a gmm run"):
        purify(best)
