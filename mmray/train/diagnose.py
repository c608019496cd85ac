"""`mmray diagnose`: the decision-layer diagnostics of a finished run, on validation and test.

Works for every method: the figures come from the method's own prediction (mmray/methods/diagnostics.py).
Writes `diagnostics.json` and `diagnostics.png` into the checkpoint folder; both are recomputed from
the saved model, so running it again rewrites them with the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmray.methods.diagnostics import diagnose, plot_diagnostics
from mmray.train.launch import open_checkpoint
from mmray.train.purify import find_checkpoint

DIAGNOSTICS_JSON = "diagnostics.json"
DIAGNOSTICS_PNG = "diagnostics.png"


def diagnose_checkpoint(run: str | Path, splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Diagnose a checkpoint folder or an experiment folder's selected checkpoint; write the files beside it."""
    checkpoint = find_checkpoint(run)
    method, network, data, manifest = open_checkpoint(checkpoint, splits)
    report = diagnose(network, method, {s: data.eval_batches(s) for s in splits}, manifest.num_classes)
    report = {"checkpoint": str(checkpoint), "method": method.name, **report}
    (checkpoint / DIAGNOSTICS_JSON).write_text(json.dumps(report, indent=2))
    (checkpoint / DIAGNOSTICS_PNG).write_bytes(plot_diagnostics(report, title=f"{method.name}: {checkpoint}"))
    return report
