"""`mmray bench decision`: the decision-layer diagnostics of methods side by side, over seeds.

Each (method, seed) trains in this process (as `mmray bench methods` does) and keeps its
best-on-validation checkpoint; that checkpoint is then diagnosed (diagnostics.json/png beside it)
and calibrated on validation (scalar per-modality weights). Prints every run, then the mean +- std
over seeds, on test: accuracies, the decision-layer weight norms ||W_a||_F, ||W_v||_F, the feature
norms, the audio share of the true-class logit evidence, how often the fused argmax agrees with
each modality's, whom it follows where the modalities disagree, and the calibrated accuracy; then,
where the dataset records corrupted samples (synthetic-av), the same figures on the clean test
samples, where both modalities carry the class.

    mmray bench decision --methods joint ogm decision --seeds 3 --epochs 8
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from mmray.bench.methods import parse_arguments, train_runs

# (column, key in a run's flat figures, scale): accuracies in %, the rest as they are.
COLUMNS = (
    ("fused%", "test/fused_acc", 100), ("audio%", "test/audio_acc", 100), ("visual%", "test/visual_acc", 100),
    ("|W_a|", "weight_norm_audio", 1), ("|W_v|", "weight_norm_visual", 1),
    ("|f_a|", "feature_norm_audio", 1), ("|f_v|", "feature_norm_visual", 1),
    ("share_a", "logit_share_audio", 1), ("agree_a", "agree_audio", 1), ("agree_v", "agree_visual", 1),
    ("a!=v:fol_a", "follows_audio_on_disagreement", 1), ("a!=v:fol_v", "follows_visual_on_disagreement", 1),
    ("calib%", "calibrated/test/fused_acc", 100),
)
# The same on the clean test samples (no corrupted or silent modality), where the dataset records them.
CLEAN_COLUMNS = tuple((name, f"clean/{key.removeprefix('test/')}", scale) for name, key, scale in COLUMNS
                      if not key.startswith(("weight_norm", "calibrated")))


def diagnose_and_calibrate(checkpoint: Path) -> dict[str, float]:
    """Flat test figures of a checkpoint's diagnostics and of its scalar calibration."""
    from mmray.methods.diagnostics import headline
    from mmray.train.calibrate import calibrate
    from mmray.train.diagnose import diagnose_checkpoint

    report = diagnose_checkpoint(checkpoint)
    figures = headline(report, "test")
    if "test_clean" in report:
        clean = report["test_clean"]
        figures.update({f"clean/{k}": v for k, v in headline(report, "test_clean").items()})
        figures.update({f"clean/{k}_acc": v for k, v in clean["accuracy"].items()})
    summary = calibrate(checkpoint, "scalar")
    figures.update({f"calibrated/{k}": v for k, v in summary["after"].items()})
    figures["calibrated/w_audio"] = summary["calibration"]["w_audio"]
    figures["calibrated/w_visual"] = summary["calibration"]["w_visual"]
    return figures


def _row(name: str, cells: list[str]) -> str:
    return f"{name:>10}  " + "  ".join(f"{c:>15}" for c in cells)


def _print_means(rows: list[dict], methods: list[str], columns) -> None:
    print(_row("method", [name for name, _, _ in columns]))
    for method in methods:
        runs = [r for r in rows if r["method"] == method]
        cells = []
        for _, key, scale in columns:
            values = [scale * r[key] for r in runs if key in r]
            cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}" if values else "-")
        print(_row(method, cells))


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv, "mmray bench decision", __doc__, ["joint", "ogm", "decision"])
    out = Path(args.out or tempfile.mkdtemp(prefix="mmray-decision-"))
    rows = []
    print(_row("run", [name for name, _, _ in COLUMNS]), flush=True)
    for method, seed, metrics, run in train_runs(args, out):
        metrics.update(diagnose_and_calibrate(run / "best"))
        rows.append({"method": method, "seed": seed, **metrics})
        print(_row(f"{method}/{seed}", [f"{scale * metrics[key]:.3f}" if key in metrics else "-"
                                        for _, key, scale in COLUMNS]), flush=True)
    (out / "decision_bench.json").write_text(json.dumps(rows, indent=2))

    print(f"\nmmray bench decision: {args.dataset}, {args.epochs} epochs, {args.seeds} seeds, test split of the "
          f"checkpoint selected on validation, mean +- std")
    _print_means(rows, args.methods, COLUMNS)
    if any("clean/fused_acc" in r for r in rows):
        print("\nthe same on the clean test samples (no corrupted or silent modality)")
        _print_means(rows, args.methods, CLEAN_COLUMNS)
    print(f"runs, diagnostics.json/png and calibration-scalar.json in {out} (all figures: decision_bench.json)")
    return 0
