"""Decision-layer diagnostics that any method's trained model can be put through (docs/methods.md, "decision").

For a split, from the logits the method itself predicts with (`method.predict`: fused, audio, visual)
and the encoders' features:
- `feature_norm`: mean ||f_a|| and ||f_v||;
- `true_class_logit`: the mean logit of the true class per modality, raw and centred (less the
  mean over classes, which softmax ignores; for z = z_a + z_v the centred values add up to the
  fused one); `logit_share`: each modality's part of the summed centred true-class logits;
- `agreement`: how often the fused argmax equals each modality's argmax, overall and on the
  samples where the two modalities disagree (whom the decision follows there);
- `accuracy` and `per_class_accuracy` of the fused, audio-only and visual-only predictions.
Independent of the split, `weight_norm`: ||W_a||_F and ||W_v||_F of the model's decision layer and
their per-class row norms. For concat fusion W_a, W_v are the two halves of the one linear layer
(z_a = W_a f_a + b/2), for sum fusion the two modality heads. They are always the *model's*
fusion layer: a method that predicts with heads of its own (aug) decides elsewhere, and its
weight norms then describe a layer its prediction does not use (the logit figures, agreement and
accuracies still come from its own prediction).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from mmray.models.fusion import ConcatFusion, SumFusion
from mmray.plots import subplots, to_png

MODALITIES = ("audio", "visual")


def decision_weights(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W_a, W_v), each (K, D_m), of the model's fusion layer; None for a fusion without per-modality weights."""
    fusion = model.fusion
    if isinstance(fusion, ConcatFusion):
        w = fusion.fc.weight
        return w[:, :fusion.audio_dim], w[:, fusion.audio_dim:]
    if isinstance(fusion, SumFusion):
        return fusion.fc_audio.weight, fusion.fc_visual.weight
    return None


@torch.no_grad()
def collect_outputs(network: nn.Module, method, batches: Iterable) -> dict[str, torch.Tensor]:
    """Index, label, the method's fused/audio/visual logits and both feature norms of every sample, in eval mode."""
    was_training = network.training
    network.eval()
    parts: dict[str, list] = {k: [] for k in ("index", "label", "fused", "audio", "visual", "audio_norm", "visual_norm")}
    for batch in batches:
        out, extras = network(batch.audio, batch.frames)
        logits = method.predict(out, extras)
        parts["index"].append(batch.index.cpu())
        parts["label"].append(batch.label.cpu())
        for key in ("fused", "audio", "visual"):
            parts[key].append(logits[key].float().cpu())
        parts["audio_norm"].append(out.audio_features.float().norm(dim=1).cpu())
        parts["visual_norm"].append(out.visual_features.float().norm(dim=1).cpu())
    network.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def _per_class_accuracy(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy within each true class (None for a class without samples)."""
    total = torch.bincount(label, minlength=num_classes)
    right = torch.bincount(label[pred == label], minlength=num_classes)
    return [right[k].item() / total[k].item() if total[k] else None for k in range(num_classes)]


def diagnose_outputs(outputs: dict[str, torch.Tensor], num_classes: int) -> dict:
    """The split figures (see the module docstring) from `collect_outputs`."""
    y = outputs["label"]
    pred = {k: outputs[k].argmax(1) for k in ("fused", *MODALITIES)}
    true_logit, centred = {}, {}
    for m in MODALITIES:
        z = outputs[m]
        z_y = z.gather(1, y[:, None]).squeeze(1)
        true_logit[m] = z_y.mean().item()
        centred[m] = (z_y - z.mean(1)).mean().item()
    evidence = centred["audio"] + centred["visual"]
    disagree = pred["audio"] != pred["visual"]
    n_disagree = int(disagree.sum())

    def follows(m: str, where: torch.Tensor) -> float | None:
        return (pred["fused"][where] == pred[m][where]).float().mean().item() if where.any() else None

    return {
        "samples": int(len(y)),
        "feature_norm": {m: outputs[f"{m}_norm"].mean().item() for m in MODALITIES},
        "true_class_logit": true_logit,
        "centred_true_class_logit": centred,
        "logit_share": {m: centred[m] / evidence if evidence else None for m in MODALITIES},
        "agreement": {
            **{m: follows(m, torch.ones_like(disagree)) for m in MODALITIES},
            "disagreement_fraction": n_disagree / max(len(y), 1),
            "on_disagreement": {
                **{m: follows(m, disagree) for m in MODALITIES},
                "neither": (((pred["fused"] != pred["audio"]) & (pred["fused"] != pred["visual"]))[disagree]
                            .float().mean().item() if n_disagree else None),
            },
        },
        "accuracy": {k: (p == y).float().mean().item() for k, p in pred.items()},
        "per_class_accuracy": {k: _per_class_accuracy(p, y, num_classes) for k, p in pred.items()},
    }


def weight_norms(model: nn.Module) -> dict | None:
    weights = decision_weights(model)
    if weights is None:
        return None
    return {**{m: w.detach().norm().item() for m, w in zip(MODALITIES, weights)},
            **{f"{m}_per_class": w.detach().norm(dim=1).tolist() for m, w in zip(MODALITIES, weights)}}


def subset(outputs: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The collected outputs of the samples where `keep` is true."""
    return {k: v[keep] for k, v in outputs.items()}


def diagnose(model: nn.Module, outputs_by_name: dict[str, dict], num_classes: int) -> dict:
    """Every figure: the model's decision weights, and one entry per set of collected outputs (a split, a subset)."""
    report = {"weight_norm": weight_norms(model)}
    for name, outputs in outputs_by_name.items():
        report[name] = diagnose_outputs(outputs, num_classes)
    return report


def headline(report: dict, split: str) -> dict[str, float]:
    """The figures one compares across methods, flat (for tables)."""
    s = report[split]
    flat = {}
    if report.get("weight_norm"):
        flat.update({f"weight_norm_{m}": report["weight_norm"][m] for m in MODALITIES})
    for m in MODALITIES:
        flat[f"feature_norm_{m}"] = s["feature_norm"][m]
        flat[f"logit_share_{m}"] = s["logit_share"][m]
        flat[f"agree_{m}"] = s["agreement"][m]
        flat[f"follows_{m}_on_disagreement"] = s["agreement"]["on_disagreement"][m]
    return {k: v for k, v in flat.items() if v is not None}


def plot_diagnostics(report: dict, title: str = "") -> bytes:
    """PNG bytes: per-class weight norms of the two modalities; agreement and logit share per split."""
    splits = [k for k, v in report.items() if isinstance(v, dict) and "agreement" in v]
    fig, (left, right) = subplots(1, 2, figsize=(11, 3.8), dpi=100)
    norms = report.get("weight_norm")
    if norms:
        classes = np.arange(len(norms["audio_per_class"]))
        for shift, m in ((-0.2, "audio"), (0.2, "visual")):
            left.bar(classes + shift, norms[f"{m}_per_class"], width=0.4, label=f"{m}: ||W||_F = {norms[m]:.2f}")
        left.set_xticks(classes)
        left.set_xlabel("class")
        left.set_ylabel("row norm of W_m")
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no per-modality decision weights\nfor this fusion", ha="center", va="center")
    left.set_ylim(0, 1.3 * left.get_ylim()[1])  # room for the legend above the bars
    left.set_title("decision-layer weight norm per class", fontsize=9)

    bars = [("fused = audio", lambda s: s["agreement"]["audio"]),
            ("fused = visual", lambda s: s["agreement"]["visual"]),
            ("follows audio\n(a != v)", lambda s: s["agreement"]["on_disagreement"]["audio"]),
            ("follows visual\n(a != v)", lambda s: s["agreement"]["on_disagreement"]["visual"]),
            ("logit share\naudio", lambda s: s["logit_share"]["audio"])]
    x = np.arange(len(bars))
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        values = [f(report[split]) for _, f in bars]
        right.bar(x + (i - (len(splits) - 1) / 2) * width, [np.nan if v is None else v for v in values],
                  width=width, label=split)
    right.set_xticks(x)
    right.set_xticklabels([name for name, _ in bars], fontsize=8)
    right.set_ylim(0, 1.15)
    right.axhline(0.5, color="0.6", linewidth=0.8, linestyle="--")
    right.set_title("whom the fused decision follows", fontsize=9)
    right.legend(fontsize=7, ncol=len(splits))
    if title:
        fig.suptitle(title, fontsize=10)
    return to_png(fig)
