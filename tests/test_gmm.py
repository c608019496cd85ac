"""The `gmm` method without Ray: its loss, the mixture fit, the sweep over train, training and resuming,
and the gather + fit + broadcast path on two gloo workers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distributed import run_on_two_workers
from networks import method_and_network

from mmray.data.manifest import load_manifest
from mmray.data.memory import InMemoryDataSource
from mmray.data.source import Batch
from mmray.errors import UserError
from mmray.methods.gmm import GMM, GapMixture, fit_gap_mixture
from mmray.models import AVOutput
from mmray.train import loop
from mmray.train.config import TrainConfig
from mmray.world import World

CPU = torch.device("cpu")
WIDTH = 8
WARMUP = 1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(small_synthetic):
    return small_synthetic


def _config(folder, **settings) -> TrainConfig:
    return TrainConfig.from_flat({"method": "gmm", "data_dir": str(folder), "epochs": 3, "warmup_epochs": WARMUP,
                                  "width": WIDTH, "batch_size": 32, **settings})


def _method(folder, **settings) -> GMM:
    return method_and_network(_config(folder, **settings))[0]


def _fake_step(n=6, classes=8, seed=0):
    """Random fused and unimodal logits (leaves, for gradients) and a batch of labels and indices."""
    gen = torch.Generator().manual_seed(seed)
    z, z_a, z_v = (torch.randn(n, classes, generator=gen, requires_grad=True) for _ in range(3))
    out = AVOutput(fused=z, audio=torch.zeros(n, classes), visual=torch.zeros(n, classes),
                   audio_features=torch.zeros(n, 1), visual_features=torch.zeros(n, 1))
    label = torch.randint(0, classes, (n,), generator=gen)
    batch = Batch(audio=torch.empty(0), frames=torch.empty(0), label=label, index=torch.arange(10, 10 + n))
    return out, {"audio": z_a, "visual": z_v}, batch


def _set_fit(method, r, mu_b, sigma_b):
    posteriors = torch.zeros(128)
    posteriors[10:10 + len(r)] = r
    method.posteriors = posteriors
    method.mixture = GapMixture(np.array([mu_b, 0.7]), np.array([sigma_b ** 2, 0.01]), np.array([0.8, 0.2]))


def test_params_are_validated_by_key():
    with pytest.raises(UserError, match="gmm_components"):
        TrainConfig.from_flat({"method": "gmm", "gmm_components": 0})
    with pytest.raises(UserError, match="lambda2"):
        TrainConfig.from_flat({"method": "gmm", "lambda2": -0.1})


def test_loss_in_both_stages_matches_the_formula(folder):
    settings = dict(warmup_epochs=2, alpha=0.7, beta=1.3, lambda1=0.4, lambda2=0.6)
    method = _method(folder, **settings)
    out, extras, batch = _fake_step()
    y = batch.label
    ce, ce_a, ce_v = (F.cross_entropy(z, y, reduction="none") for z in (out.fused, extras["audio"], extras["visual"]))

    assert torch.allclose(method.loss(out, extras, batch, epoch=1), ce.mean() + ce_a.mean() + ce_v.mean())

    r, mu_b, sigma_b = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 0.3]), 0.05, 0.2
    _set_fit(method, r, mu_b, sigma_b)
    g = (extras["audio"].softmax(1)[range(6), y] - extras["visual"].softmax(1)[range(6), y])
    s = settings
    by_hand = ((1 + s["beta"] * (1 - r)) * ce + ce_a + ce_v + s["lambda1"] * (1 + s["alpha"] * r) * g.abs()
               + s["lambda2"] * r * (g - mu_b) ** 2 / (2 * sigma_b ** 2)).mean()
    assert torch.allclose(method.loss(out, extras, batch, epoch=2), by_hand)


def test_stopgrad_strong_leaves_the_stronger_modality_out_of_the_penalty(folder):
    method = _method(folder, warmup_epochs=0, stopgrad_strong=True)
    out, extras, batch = _fake_step(n=16, seed=1)
    r = torch.full((16,), 0.6)
    _set_fit(method, r, 0.05, 0.2)
    y = batch.label
    ce, ce_a, ce_v = (F.cross_entropy(z, y, reduction="none") for z in (out.fused, extras["audio"], extras["visual"]))
    # The penalty terms alone: the loss less its CE part (whose gradients cancel exactly).
    penalty = method.loss(out, extras, batch, epoch=0) - ((1 + (1 - r)) * ce + ce_a + ce_v).mean()
    grad_a, grad_v = torch.autograd.grad(penalty, [extras["audio"], extras["visual"]])

    p_a = extras["audio"].softmax(1)[range(16), y]
    p_v = extras["visual"].softmax(1)[range(16), y]
    audio_strong = p_a >= p_v
    assert 0 < audio_strong.sum() < 16  # both cases occur
    strong = torch.where(audio_strong[:, None], grad_a, grad_v)
    weak = torch.where(audio_strong[:, None], grad_v, grad_a)
    assert torch.allclose(strong, torch.zeros_like(strong), atol=1e-7)
    assert (weak.abs().sum(1) > 1e-4).all()


def test_fit_finds_the_balanced_component_and_the_outliers():
    rng = np.random.default_rng(0)
    gaps = np.concatenate([rng.normal(0.0, 0.05, 900), rng.normal(0.8, 0.05, 100)])
    mixture = fit_gap_mixture(gaps, 2)
    assert abs(mixture.mu_b) < 0.02 and mixture.balanced == 0
    assert mixture.means[1] == pytest.approx(0.8, abs=0.02)
    assert mixture.sigma_b == pytest.approx(0.05, abs=0.01)
    r = mixture.imbalance_posterior(gaps)
    assert (r[900:] > 0.99).all()
    assert (r[:900] < 0.5).mean() > 0.99


def test_refit_over_train_is_deterministic_and_covers_every_sample_once(folder):
    fits = []
    for _ in range(2):
        method, network = method_and_network(_config(folder))
        metrics = method.on_epoch_start(WARMUP, network)
        assert network.training  # back in train mode after the sweep
        fits.append((metrics, method))
    (metrics, first), (again, second) = fits
    assert metrics == again
    assert torch.equal(first.posteriors, second.posteriors)
    # 128 distinct indices gathered (checked in refit) and none left unset.
    assert first.posteriors.shape == (128,) and not first.posteriors.isnan().any()
    assert first.last_gaps.shape == (128,) and first.last_fit["balanced"] in (0, 1)


class _Twice(InMemoryDataSource):
    """Sweeps train with one sample listed twice."""

    def eval_batches(self, split):
        n = len(self.tensors[split]["label"])
        return self._batches(split, torch.cat([torch.arange(n), torch.tensor([3])]))


def test_refit_refuses_a_sample_seen_twice(folder):
    manifest = load_manifest(folder)
    method, network = method_and_network(_config(folder), data=_Twice(folder, manifest, 32, 0))
    with pytest.raises(RuntimeError, match="must appear once"):
        method.on_epoch_start(WARMUP, network)


def _train(folder, resume=None, **settings):
    cfg = _config(folder, **settings)
    manifest = load_manifest(folder)
    reports = []
    data = InMemoryDataSource(folder, manifest, cfg.batch_size, cfg.seed)
    loop.train(cfg, manifest, data, lambda metrics, state: reports.append((metrics, copy.deepcopy(state))),
               World(0, 1, CPU), resume)
    return reports


def test_training_reports_the_fit_and_its_state_round_trips(folder):
    reports = _train(folder)
    (first, _), (second, _), (third, state) = reports
    assert first["gmm/stage"] == 0.0 and not any(k.startswith("gmm/") and k != "gmm/stage" for k in first)
    for metrics in (second, third):
        assert metrics["gmm/stage"] == 1.0
        assert 0.0 <= metrics["gmm/imbalanced_frac"] <= 1.0
        assert 0.0 <= metrics["gmm/auroc_corrupted"] <= 1.0
        assert metrics["gmm/mean_0"] <= metrics["gmm/mean_1"]
        assert sum(metrics[f"gmm/weight_{k}"] for k in (0, 1)) == pytest.approx(1.0)
        assert np.isfinite(metrics["train/loss"])

    method = _method(folder)
    method.load_state_dict(state["method"])
    restored = method.state_dict()
    assert restored["fitted"] and restored["fit"] == state["method"]["fit"]
    assert torch.equal(restored["posteriors"], state["method"]["posteriors"])
    assert torch.equal(restored["gaps"], state["method"]["gaps"])


def test_resuming_between_refits_continues_with_the_saved_fit(folder):
    # Refits at epochs 2 and 4 (1-based): epoch 3 trains on the fit from epoch 2, restored from the state.
    straight = _train(folder, refit_every=2)
    resumed = _train(folder, resume=straight[1][1], refit_every=2)
    assert len(resumed) == 1 and "gmm/mean_0" not in resumed[0][0]
    for key, value in straight[-1][1]["network"].items():
        assert torch.allclose(value.float(), resumed[0][1]["network"][key].float(), atol=1e-6), key


class _HalfTrain(InMemoryDataSource):
    """One of two workers: its part of train is the even or the odd indices."""

    def __init__(self, *args, rank: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank

    def eval_batches(self, split):
        n = len(self.tensors[split]["label"])
        return self._batches(split, torch.arange(self.rank, n, 2))


def _fit_on_worker(world, folder, out_dir):
    data = _HalfTrain(folder, load_manifest(folder), 32, 0, rank=world.rank)
    method, network = method_and_network(_config(folder), data=data, world=world)
    metrics = method.on_epoch_start(WARMUP, network)
    torch.save({"posteriors": method.posteriors, "metrics": metrics}, out_dir / f"rank{world.rank}.pt")


def test_two_workers_get_the_single_process_posteriors(folder, tmp_path):
    run_on_two_workers(_fit_on_worker, folder, tmp_path)
    method, network = method_and_network(_config(folder))
    single = method.on_epoch_start(WARMUP, network)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["posteriors"], method.posteriors, atol=1e-5)
        for key, value in single.items():
            assert result["metrics"][key] == pytest.approx(value, abs=1e-5), key


def test_purification_epochs_train_at_a_lower_rate_with_batchnorm_frozen(folder):
    # Epochs 1-2 train as usual; epoch 3 purifies: lr x 0.1 from then on, BatchNorm statistics untouched
    # by its training steps (and, with precise BatchNorm off, not recomputed after them either).
    reports = _train(folder, purify_epochs=1, purify_lr_factor=0.1, lr=1e-3, precise_bn_batches=0)
    lrs = [state["optimizer"]["param_groups"][0]["lr"] for _, state in reports]  # each epoch's, for the next one
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-4])
    assert 0.0 < reports[-1][0]["gmm/kept_frac"] <= 1.0
    before, after = reports[1][1]["network"], reports[2][1]["network"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight")), "it still trained"


def test_batchnorm_statistics_are_recomputed_from_kept_samples_only_while_purifying(folder):
    method = _method(folder, purify_epochs=1)
    method.posteriors, method.keep = torch.zeros(128), torch.zeros(128)
    method.keep[10:13] = 1.0
    _, _, batch = _fake_step(n=6)  # indices 10 to 15
    assert method.batchnorm_samples(batch, method.purify_from - 1) is None
    assert method.batchnorm_samples(batch, method.purify_from).tolist() == [True] * 3 + [False] * 3


def _purification_loss_on_worker(world, folder, out_dir):
    method = method_and_network(_config(folder, purify_epochs=1), world=world)[0]
    out, extras, batch = _fake_step(n=12, seed=3)
    method.posteriors, method.keep = torch.zeros(128), torch.zeros(128)
    method.keep[10:13] = 1.0  # three kept samples among the first six, all six kept among the last six
    method.keep[16:22] = 1.0
    rows = slice(0, 6) if world.rank == 0 else slice(6, 12)
    part = AVOutput(fused=out.fused[rows], audio=out.audio[rows], visual=out.visual[rows],
                    audio_features=out.audio_features[rows], visual_features=out.visual_features[rows])
    part_batch = Batch(audio=batch.audio, frames=batch.frames, label=batch.label[rows], index=batch.index[rows])
    loss = method.loss(part, {k: v[rows] for k, v in extras.items()}, part_batch, method.purify_from)
    torch.save(loss.detach(), out_dir / f"loss{world.rank}.pt")


def test_purification_loss_is_the_mean_over_kept_samples_of_all_workers(folder, tmp_path):
    run_on_two_workers(_purification_loss_on_worker, folder, tmp_path)
    # DDP averages the workers' gradients, i.e. the gradient of the mean of their losses.
    ddp_loss = (torch.load(tmp_path / "loss0.pt") + torch.load(tmp_path / "loss1.pt")) / 2
    out, extras, batch = _fake_step(n=12, seed=3)
    keep = torch.tensor([1.0] * 3 + [0.0] * 3 + [1.0] * 6)
    per_sample = sum(F.cross_entropy(z, batch.label, reduction="none") for z in (out.fused, *extras.values()))
    assert ddp_loss.item() == pytest.approx(((keep * per_sample).sum() / keep.sum()).item(), rel=1e-6)
