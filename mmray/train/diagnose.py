"""`mmray diagnose`: the decision-layer diagnostics of a finished run, on validation and test.

Works for every method: the figures come from the method's own prediction (mmray/methods/diagnostics.py).
Where the dataset records which samples have a corrupted modality (synthetic-av's `corrupted`, which
includes its silent clips), the figures are also given for the clean samples only (`val_clean`,
`test_clean`): there both modalities carry the class, and whom the decision follows is not forced.
Writes `diagnostics.json` and `diagnostics.png` into the checkpoint folder; both are recomputed from
the saved model, so running it again rewrites them with the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mmray.data.shards import read_column_by_index
from mmray.files import write_atomic
from mmray.methods.diagnostics import collect_outputs, diagnose, plot_diagnostics, subset
from mmray.train.checkpoint import find_checkpoint, open_checkpoint

DIAGNOSTICS_JSON = "diagnostics.json"
DIAGNOSTICS_PNG = "diagnostics.png"


def diagnose_checkpoint(run: str | Path, splits: tuple[str, ...] = ("val", "test")) -> dict:
    """Diagnose a checkpoint folder or an experiment folder's selected checkpoint; write the files beside it."""
    checkpoint = find_checkpoint(run)
    saved = open_checkpoint(checkpoint, splits)
    method, network, manifest = saved.method, saved.network, saved.manifest
    outputs = {split: collect_outputs(network, method, saved.data.eval_batches(split)) for split in splits}
    if "corrupted" in manifest.metadata_columns:
        for split in splits:
            clean = read_column_by_index(method.ctx.data_dir, manifest, split, "corrupted") == "none"
            outputs[f"{split}_clean"] = subset(outputs[split], torch.from_numpy(clean[outputs[split]["index"].numpy()]))
    report = {"checkpoint": str(checkpoint), "method": method.name,
              **diagnose(network.model, outputs, manifest.num_classes)}
    write_atomic(checkpoint / DIAGNOSTICS_JSON, json.dumps(report, indent=2))
    (checkpoint / DIAGNOSTICS_PNG).write_bytes(plot_diagnostics(report, title=f"{method.name}: {checkpoint}"))
    return report
