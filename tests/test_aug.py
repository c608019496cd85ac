"""`aug`: the boosting loss, the assignment rule, heads switched on mid-training, resume, and two gloo workers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from distributed import HalfData, run_on_two_workers
from networks import method_and_network

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.errors import UserError
from mmray.methods.aug import assign_head, boosting_loss, fit_alpha
from mmray.train.config import TrainConfig
from mmray.train.loop import build_optimizer, train
from mmray.world import World


def _config(folder, **settings) -> TrainConfig:
    return TrainConfig.from_flat({"method": "aug", "data_dir": str(folder), "width": 8, "batch_size": 32,
                                  "hidden": 16, **settings})


def test_loss_with_one_head_is_cross_entropy():
    z = torch.tensor([[[1.0, -0.5, 0.2], [0.3, 0.3, 2.0]]])
    y = torch.tensor([0, 2])
    assert boosting_loss(z, y, 0.5).item() == pytest.approx(F.cross_entropy(z[0], y).item())


def test_loss_with_three_heads_matches_the_hand_computed_value():
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 2.0]]], requires_grad=True)  # (t=3, B=1, K=2)
    y = torch.tensor([0])
    # Ensemble [2, 3], earlier heads [2, 1], newest [0, 2]; true class 0; lambda = 0.5.
    eps_all = math.log(1 + math.e)
    eps_pre = math.log(1 + math.exp(-1))
    p_earlier = 1 / (1 + math.exp(-1))
    eps = (1 - 0.5 * p_earlier) * math.log(1 + math.exp(2))
    loss = boosting_loss(z, y, 0.5)
    assert loss.item() == pytest.approx(eps_all + eps_pre + eps, rel=1e-6)

    # The residual label is a constant: the earlier heads get gradients from eps_all and eps_pre only.
    loss.backward()
    z2 = z.detach().clone().requires_grad_(True)
    (F.cross_entropy(z2.sum(0), y) + F.cross_entropy(z2[:2].sum(0), y)).backward()
    assert torch.allclose(z.grad[:2], z2.grad[:2])


@pytest.mark.parametrize("audio, visual, sigma, tau, expected", [
    (0.80, 0.50, 1.0, 0.01, "visual"),  # audio leads: the visual modality gets the head
    (0.40, 0.70, 1.0, 0.01, "audio"),
    (0.605, 0.600, 1.0, 0.01, None),  # inside the dead zone
    (0.600, 0.605, 1.0, 0.01, None),
    (0.80, 0.70, 1.2, 0.01, None),  # sigma weighs the other score up: 0.80 - 0.84 < tau
    # sigma < 1: both qualify; the head goes where the other leads by more.
    (0.60, 0.50, 0.5, 0.01, "visual"),  # visual: 0.60 - 0.25 = 0.35; audio: 0.50 - 0.30 = 0.20
    (0.50, 0.60, 0.5, 0.01, "audio"),
])
def test_assignment_rule(audio, visual, sigma, tau, expected):
    assert assign_head(audio, visual, sigma, tau) == expected


def test_alpha_fitted_on_known_logits():
    label = torch.arange(10) % 3
    audio = F.one_hot(label, 3).float() * 4.0  # always right
    visual = torch.zeros(10, 3)  # no information
    assert fit_alpha(audio, visual, label) == 1.0
    assert fit_alpha(visual, audio, label) == 0.0


def test_params_are_validated_by_key(tiny_synthetic):
    with pytest.raises(UserError, match="boost_rate"):
        _config(tiny_synthetic, boost_rate=1.5)
    with pytest.raises(UserError, match="check_every"):
        _config(tiny_synthetic, check_every=4, epochs=4)


def test_head_switched_on_mid_training_is_trained_by_the_next_step(tiny_synthetic):
    cfg = _config(tiny_synthetic, tau=0.0, alpha=0.5)
    data = InMemoryDataSource(tiny_synthetic, load_manifest(tiny_synthetic), cfg.batch_size, cfg.seed)
    method, network = method_and_network(cfg, data=data)
    optimizer = build_optimizer(cfg, network.parameters())  # built once, before any head is added

    def step(batch):
        out, extras = network(batch.audio, batch.frames)
        loss = method.loss(out, extras, batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = data.train_batches(0)
    method.on_epoch_start(0, network)
    step(next(batches))
    method.on_epoch_end(0, network)  # tau = 0: the modality behind gets a second head
    modality = method.pending
    assert modality in ("audio", "visual")
    method.on_epoch_start(1, network)
    assert method.boosted.count(modality) == 2

    new_head = method.boosted.hidden_layers[modality][1][0].weight
    idle_head = method.boosted.hidden_layers[modality][2][0].weight
    assert any(new_head is p for group in optimizer.param_groups for p in group["params"])
    new_before, idle_before = new_head.detach().clone(), idle_head.detach().clone()
    step(next(batches))
    assert not torch.equal(new_head, new_before), "the new head was not trained"
    assert torch.equal(idle_head, idle_before), "a head that is not on changed"


def _train(folder, epochs, resume=None, **settings):
    manifest = load_manifest(folder)
    cfg = _config(folder, epochs=epochs, tau=0.0, **settings)
    data = InMemoryDataSource(folder, manifest, cfg.batch_size, cfg.seed)
    reports = []
    train(cfg, manifest, data, lambda m, s: reports.append((m, copy.deepcopy(s))), World.current(), resume)
    return reports


def test_resume_continues_with_the_same_heads(tiny_synthetic):
    straight = _train(tiny_synthetic, epochs=3)
    heads = [(m["aug/heads_audio"], m["aug/heads_visual"]) for m, _ in straight]
    assert sum(heads[-1]) > 2, "tau = 0 adds heads"
    assert {"alpha", "history"} <= set(straight[0][1]["method"])
    assert "aug_heads.png" in straight[-1][1]["artifacts"]

    resumed = _train(tiny_synthetic, epochs=3, resume=straight[0][1])
    assert (resumed[0][0]["aug/heads_audio"], resumed[0][0]["aug/heads_visual"]) == heads[1]
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[-1][1]["network"][key].float(), atol=1e-6), key


def _train_on_worker(world, folder, out_dir):
    manifest = load_manifest(folder)
    cfg = _config(folder, epochs=3, tau=0.0)
    data = HalfData(folder, manifest, cfg.batch_size, cfg.seed, rank=world.rank)
    reports = []
    train(cfg, manifest, data, lambda m, s: reports.append((m, copy.deepcopy(s))), world)
    torch.save(reports, out_dir / f"rank{world.rank}.pt")


def test_two_workers_assign_the_same_heads_and_keep_identical_parameters(tiny_synthetic, tmp_path):
    run_on_two_workers(_train_on_worker, tiny_synthetic, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for (m0, s0), (m1, s1) in zip(*ranks):
        for key in ("aug/heads_audio", "aug/heads_visual", "aug/score_audio", "aug/score_visual", "aug/alpha"):
            assert m0[key] == m1[key], key
        assert s0["method"]["pending"] == s1["method"]["pending"]
        params0 = {k: v for k, v in s0["network"].items() if "running" not in k and "num_batches" not in k}
        for key, value in params0.items():
            assert torch.equal(value, s1["network"][key]), key
    last = ranks[0][-1][0]
    assert last["aug/heads_audio"] + last["aug/heads_visual"] > 2, "heads were added under DDP"
