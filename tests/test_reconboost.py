"""`reconboost`: the stage schedule and the weighted loss by hand, fresh optimizers per phase over the phase's
parameters, two gloo workers in step, and resume inside a phase."""

from __future__ import annotations

import math

import pytest
import torch
from distributed import parameters, train_on_two_workers, train_reports

from mmray.data.manifest import load_manifest
from mmray.errors import UserError
from mmray.methods.reconboost import ReconBoostParams, boosting_loss, schedule
from mmray.train.config import TrainConfig
from mmray.train.loop import build_method_and_network
from mmray.world import World

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(folder, **settings) -> dict:
    return {"method": "reconboost", "data_dir": str(folder), "width": 8, "batch_size": 32, "epochs": 2,
            "hidden": 16, **settings}


def test_stage_schedule():
    # stage_epochs 2, rectify_epochs 1: audio, audio, rectify | visual, visual, rectify | audio ...
    got = [schedule(e, 2, 1) for e in range(7)]
    assert got == [(0, "audio"), (0, "audio"), (0, None), (1, "visual"), (1, "visual"), (1, None), (2, "audio")]
    assert [schedule(e, 1, 0) for e in range(3)] == [(0, "audio"), (1, "visual"), (2, "audio")]


def test_weighted_loss_by_hand():
    p = ReconBoostParams()  # w1 5, w2 1, ga 0.5
    z_m = torch.zeros(1, 2, requires_grad=True)  # p_m = [0.5, 0.5]
    z_other = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # softmax [0.75, 0.25]
    y = torch.tensor([0])
    beta = torch.tensor(1.0)
    # (1/K) [-w1 log p_m(y) + w2 q(y) log p_m(y)] + ga mean_k (p_m - p_m')^2, K = 2, q(y) = 0.75
    mse = ((0.5 - 0.75) ** 2 + (0.5 - 0.25) ** 2) / 2
    loss = boosting_loss(z_m, z_other, y, beta, p, other_trained=True)
    assert loss.item() == pytest.approx((5 - 0.75) * math.log(2) / 2 + 0.5 * mse)
    # Before the other modality was trained, q(y) = 1.
    assert boosting_loss(z_m, z_other, y, beta, p, other_trained=False).item() == pytest.approx(
        (5 - 1) * math.log(2) / 2 + 0.5 * mse)
    # beta sharpens q: beta = 2 gives q(y) = 9 / 10.
    assert boosting_loss(z_m, z_other, y, torch.tensor(2.0), p, other_trained=True).item() == pytest.approx(
        (5 - 0.9) * math.log(2) / 2 + 0.5 * mse)
    # The MSE term has a gradient through p_m (the released code detached it); the other modality gets none.
    only_mse = ReconBoostParams(w1=0.0, w2=0.0, ga=1.0)
    boosting_loss(z_m, z_other, y, beta, only_mse, other_trained=True).backward()
    assert z_m.grad.abs().sum() > 0 and z_other.grad is None


def test_settings_must_fit_the_run():
    with pytest.raises(UserError, match="stage_epochs"):
        TrainConfig.from_flat({"method": "reconboost", "epochs": 2, "stage_epochs": 2})
    with pytest.raises(UserError, match="rectify_epochs"):
        TrainConfig.from_flat({"method": "reconboost", "rectify_epochs": -1})


def test_each_phase_trains_its_own_parameters(small_synthetic):
    reports = train_reports(_settings(small_synthetic, epochs=3, stage_epochs=1, rectify_epochs=0))
    assert [m["reconboost/modality"] for m, _ in reports] == [0.0, 1.0, 0.0]
    assert [m["reconboost/stage"] for m, _ in reports] == [0.0, 1.0, 2.0]
    (_, first), (_, second), _ = reports
    visual = [k for k in first["network"] if k.startswith("model.visual_encoder.") and "running" not in k
              and "num_batches" not in k]
    audio = [k.replace("visual", "audio") for k in visual if k.replace("visual", "audio") in first["network"]]
    # Stage 0 trains audio (and H): beta and the visual encoder keep their initial values; stage 1 the other way.
    cfg = TrainConfig.from_flat(_settings(small_synthetic, epochs=3, stage_epochs=1, rectify_epochs=0))
    init = build_method_and_network(cfg, load_manifest(small_synthetic), None, World.current())[1].state_dict()
    assert all(torch.equal(first["network"][k], init[k]) for k in visual)
    assert all(torch.equal(second["network"][k], first["network"][k]) for k in audio if "running" not in k)
    assert first["network"]["heads.beta"].item() == 1.0 == second["network"]["heads.beta"].item()
    assert second["method"]["phase"] == (1, "visual")
    # Each phase has an optimizer of its own over its parameters only (SGD/AdamW state starts fresh).
    assert len(second["method"]["optimizer"]["param_groups"][0]["params"]) == len(visual) + 4


def test_rectification_trains_beta(small_synthetic):
    reports = train_reports(_settings(small_synthetic))
    assert [m["reconboost/rectifying"] for m, _ in reports] == [0.0, 1.0]
    assert reports[0][0]["reconboost/beta"] == 1.0 != reports[1][0]["reconboost/beta"]


def test_two_workers_keep_identical_parameters(small_synthetic, tmp_path):
    zero, one = train_on_two_workers(_settings(small_synthetic), tmp_path)
    for (m0, s0), (m1, s1) in zip(zero, one):
        assert m0["reconboost/beta"] == m1["reconboost/beta"]
        for key, value in parameters(s0).items():
            assert torch.equal(value, s1["network"][key]), key


def test_resume_inside_a_phase_gives_the_straight_run(small_synthetic):
    # stage_epochs 2: the checkpoint after epoch 1 is in the middle of stage 0's audio phase.
    settings = _settings(small_synthetic, epochs=3, stage_epochs=2, rectify_epochs=1)
    straight = train_reports(settings)
    resumed = train_reports(settings, resume=straight[0][1])
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[-1][1]["network"][key].float(), atol=1e-6), key
    assert resumed[-1][0]["reconboost/beta"] == pytest.approx(straight[-1][0]["reconboost/beta"])
