"""Decision-layer diagnostics on hand-made outputs, and `mmray diagnose` / `mmray calibrate` on a real
checkpoint under a real local Ray."""

from __future__ import annotations

import json

import pytest
import torch

from mmray.cli import main
from mmray.data import synthetic
from mmray.data.manifest import load_manifest
from mmray.data.shards import read_column_by_index
from mmray.methods.diagnostics import decision_weights, diagnose_outputs, plot_diagnostics, weight_norms
from mmray.models import build_model
from mmray.train.calibrate import calibrate
from mmray.train.config import TrainConfig
from mmray.train.diagnose import DIAGNOSTICS_JSON, DIAGNOSTICS_PNG, diagnose_checkpoint
from mmray.train.launch import run_in_process


def _onehot(classes, k=3, scale=2.0):
    z = torch.zeros(len(classes), k)
    z[torch.arange(len(classes)), torch.tensor(classes)] = scale
    return z


def test_figures_on_hand_made_outputs():
    # 4 samples, 3 classes. Audio and vision disagree on samples 1, 2, 3; the fused argmax follows audio
    # on 1 and 2 and vision on 3.
    label = torch.tensor([0, 1, 2, 0])
    audio = _onehot([0, 1, 2, 1])
    visual = _onehot([0, 0, 1, 0], scale=1.0)
    fused = _onehot([0, 1, 2, 0])
    outputs = {"label": label, "fused": fused, "audio": audio, "visual": visual,
               "audio_norm": torch.tensor([1.0, 2.0, 3.0, 4.0]), "visual_norm": torch.ones(4)}
    d = diagnose_outputs(outputs, num_classes=3)

    assert d["samples"] == 4
    assert d["feature_norm"] == {"audio": 2.5, "visual": 1.0}
    # True-class logits: audio 2, 2, 2, 0 -> mean 1.5; vision 1, 0, 0, 1 -> 0.5.
    assert d["true_class_logit"]["audio"] == pytest.approx(1.5)
    assert d["true_class_logit"]["visual"] == pytest.approx(0.5)
    # Centred (less the mean over 3 classes): audio 1.5 - 2/3, vision 0.5 - 1/3.
    c_a, c_v = 1.5 - 2 / 3, 0.5 - 1 / 3
    assert d["centred_true_class_logit"]["audio"] == pytest.approx(c_a)
    assert d["logit_share"]["audio"] == pytest.approx(c_a / (c_a + c_v))
    assert d["logit_share"]["audio"] + d["logit_share"]["visual"] == pytest.approx(1.0)
    a = d["agreement"]
    assert a["audio"] == 0.75 and a["visual"] == 0.5 and a["disagreement_fraction"] == 0.75
    assert a["on_disagreement"]["audio"] == pytest.approx(2 / 3)
    assert a["on_disagreement"]["visual"] == pytest.approx(1 / 3)
    assert a["on_disagreement"]["neither"] == 0.0
    assert d["accuracy"] == {"fused": 1.0, "audio": 0.75, "visual": 0.5}
    assert d["per_class_accuracy"]["audio"] == [0.5, 1.0, 1.0]
    assert d["per_class_accuracy"]["visual"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_decision_weights_are_the_modality_halves(tmp_path, fusion):
    folder = tmp_path / "synthetic-av"
    synthetic.prepare(folder, synthetic.SyntheticConfig(sizes=(16, 8, 8)))
    model = build_model("small-cnn", fusion, load_manifest(folder), width=8)
    w_a, w_v = decision_weights(model)
    assert w_a.shape == (10, model.audio_dim) and w_v.shape == (10, model.visual_dim)
    f_a, f_v = torch.randn(3, model.audio_dim), torch.randn(3, model.visual_dim)
    _, z_a, z_v = model.fusion(f_a, f_v)
    # z_a - z_v = W_a f_a - W_v f_v: the shared or per-modality biases cancel only in concat fusion.
    if fusion == "concat":
        assert torch.allclose(z_a - z_v, f_a @ w_a.t() - f_v @ w_v.t(), atol=1e-5)
    norms = weight_norms(model)
    assert norms["audio"] == pytest.approx(w_a.norm().item())
    assert norms["visual_per_class"] == pytest.approx(w_v.norm(dim=1).tolist())


def test_diagnose_and_calibrate_a_finished_run(ray_local, tiny_synthetic, tmp_path):
    cfg = TrainConfig.from_flat({"method": "decision", "data_dir": str(tiny_synthetic), "epochs": 1, "width": 8,
                                 "batch_size": 32})
    _, best = run_in_process(cfg, tmp_path / "run", quiet=True)

    report = diagnose_checkpoint(best)
    saved = json.loads((best / DIAGNOSTICS_JSON).read_text())
    assert saved["method"] == "decision" and saved["checkpoint"] == str(best)
    assert (best / DIAGNOSTICS_PNG).read_bytes()[:4] == b"\x89PNG"
    for split, n in (("val", 64), ("test", 64)):
        assert saved[split]["samples"] == n
        assert len(saved[split]["per_class_accuracy"]["visual"]) == 10
        assert 0.0 <= saved[split]["agreement"]["audio"] <= 1.0
    assert len(saved["weight_norm"]["audio_per_class"]) == 10
    # synthetic-av records corrupted (and silent) clips: the figures again on the clean ones only.
    clean = read_column_by_index(tiny_synthetic, load_manifest(tiny_synthetic), "test", "corrupted") == "none"
    assert 0 < saved["test_clean"]["samples"] == clean.sum() < 64
    # The accuracies are the method's own (the gated fused prediction), as the loop evaluates them.
    from mmray.train.checkpoint import evaluate_checkpoint
    assert report["val"]["accuracy"]["fused"] == pytest.approx(evaluate_checkpoint(best, "val")["val/fused_acc"])

    summary = calibrate(best, "scalar")
    written = json.loads((best / "calibration-scalar.json").read_text())
    assert written["fitted_on"] == "val" and written["after"] == summary["after"]
    assert set(summary["before"]) == set(summary["after"]) == {"val/fused_acc", "val/nll", "test/fused_acc", "test/nll"}
    assert summary["before"]["val/fused_acc"] == pytest.approx(report["val"]["accuracy"]["fused"])

    # A second calibration of the same kind is refused before Ray work, and the first stays as it was.
    assert main(["calibrate", str(best)]) == 2
    assert json.loads((best / "calibration-scalar.json").read_text()) == written
    assert main(["diagnose", str(tmp_path)]) == 2  # neither a checkpoint nor an experiment folder


def test_plot_without_per_modality_weights():
    d = diagnose_outputs({"label": torch.tensor([0, 1]), "fused": _onehot([0, 1]), "audio": _onehot([0, 0]),
                          "visual": _onehot([1, 1]), "audio_norm": torch.ones(2), "visual_norm": torch.ones(2)}, 3)
    assert plot_diagnostics({"weight_norm": None, "val": d})[:4] == b"\x89PNG"
