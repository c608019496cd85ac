"""Calibration at the decision layer (docs/methods.md, "decision"): a step after training, for any method.

On the frozen per-modality logits z_a, z_v that the method predicts with, fit on validation only:
- `scalar`: z = w_a z_a + w_v z_v + b (two weights, one bias per class), minimising the NLL;
- `class`: the same with one weight per modality and class (z_k = w_a,k z_a,k + w_v,k z_v,k + b_k);
- `standardize`: z = (z_a - mean) / s_a + (z_v - mean) / s_v, each modality's logits centred per
  sample (softmax ignores a shift) and divided by their std on validation; nothing else is fitted.
`reg` adds reg * sum (w - 1)^2 to the NLL: a pull towards the uncalibrated sum z_a + z_v.
Reports accuracy and NLL before (the method's own fused prediction) and after, on validation and test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from mmray.errors import UserError
from mmray.files import write_atomic
from mmray.methods.diagnostics import collect_outputs
from mmray.train.checkpoint import find_checkpoint, open_checkpoint

Kind = Literal["scalar", "class", "standardize"]
KINDS = ("scalar", "class", "standardize")


@dataclass
class Calibration:
    kind: str
    w_audio: torch.Tensor  # () or (K,)
    w_visual: torch.Tensor
    bias: torch.Tensor  # (K,)
    scale_audio: float = 1.0  # standardize: the std each modality's centred logits are divided by
    scale_visual: float = 1.0

    def apply(self, z_a: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        if self.kind == "standardize":
            z_a = (z_a - z_a.mean(1, keepdim=True)) / self.scale_audio
            z_v = (z_v - z_v.mean(1, keepdim=True)) / self.scale_visual
        return self.w_audio * z_a + self.w_visual * z_v + self.bias

    def to_json(self) -> dict:
        return {"kind": self.kind, "w_audio": self.w_audio.tolist(), "w_visual": self.w_visual.tolist(),
                "bias": self.bias.tolist(), "scale_audio": self.scale_audio, "scale_visual": self.scale_visual}


def fit_calibration(z_a: torch.Tensor, z_v: torch.Tensor, label: torch.Tensor, kind: str = "scalar",
                    reg: float = 0.0) -> Calibration:
    """The calibration of `kind` fitted on these (validation) logits by full-batch L-BFGS on a convex NLL."""
    z_a, z_v = z_a.double(), z_v.double()
    k = z_a.shape[1]
    if kind == "standardize":
        def scale(z):
            return (z - z.mean(1, keepdim=True)).std().clamp(min=1e-12).item()

        one = torch.ones((), dtype=torch.float64)
        return Calibration(kind, one, one, torch.zeros(k, dtype=torch.float64), scale(z_a), scale(z_v))
    shape = () if kind == "scalar" else (k,)
    w_a = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    w_v = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w_a, w_v, bias], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = (F.cross_entropy(w_a * z_a + w_v * z_v + bias, label)
                + reg * (((w_a - 1) ** 2).sum() + ((w_v - 1) ** 2).sum()))
        loss.backward()
        return loss

    optimizer.step(objective)
    return Calibration(kind, w_a.detach(), w_v.detach(), bias.detach())


def _scores(logits: torch.Tensor, label: torch.Tensor, prefix: str) -> dict[str, float]:
    return {f"{prefix}/fused_acc": (logits.argmax(1) == label).float().mean().item(),
            f"{prefix}/nll": F.cross_entropy(logits.double(), label).item()}


def calibration_target(run: str | Path, kind: str, reg: float) -> tuple[Path, Path]:
    """(checkpoint, the JSON to write) after every check on the input, so that a command can fail before Ray starts."""
    if kind not in KINDS:
        raise UserError(f"--kind: {kind!r} is not one of {list(KINDS)}")
    if reg < 0:
        raise UserError(f"--reg: {reg} must not be negative")
    checkpoint = find_checkpoint(run)
    out_file = checkpoint / f"calibration-{kind}.json"
    if out_file.exists():
        raise UserError(f"{out_file}: already calibrated with this kind (move it away to redo it)")
    return checkpoint, out_file


def calibrate(run: str | Path, kind: str = "scalar", reg: float = 0.0) -> dict:
    """Fit on validation, report before/after on validation and test, write `calibration-<kind>.json`."""
    checkpoint, out_file = calibration_target(run, kind, reg)
    saved = open_checkpoint(checkpoint, ("val", "test"))
    outputs = {split: collect_outputs(saved.network, saved.method, saved.data.eval_batches(split))
               for split in ("val", "test")}
    val = outputs["val"]
    calibration = fit_calibration(val["audio"], val["visual"], val["label"], kind, reg)
    before, after = {}, {}
    for split, o in outputs.items():
        before.update(_scores(o["fused"], o["label"], split))
        after.update(_scores(calibration.apply(o["audio"].double(), o["visual"].double()), o["label"], split))
    summary = {"checkpoint": str(checkpoint), "method": saved.method.name, "kind": kind, "reg": reg,
               "fitted_on": "val", "calibration": calibration.to_json(), "before": before, "after": after,
               "output": str(out_file)}
    write_atomic(out_file, json.dumps(summary, indent=2))
    return summary
