"""What a finished search leaves: a summary of every trial, the trial and checkpoint chosen on
validation, and `best.json` with that checkpoint's test metrics (evaluated once, after selection)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from mmray.train.checkpoint import BEST_JSON
from mmray.tune.space import SearchSpace

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


def best_index(values: pd.Series, epochs: pd.Series, mode: str):
    """Index of the best value; on a tie the later epoch wins (it is the checkpoint Ray keeps)."""
    order = pd.DataFrame({"v": values if mode == "max" else -values, "e": epochs}).sort_values(["v", "e"])
    return order.index[-1]


def summarize(results, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: status, searched values, epochs run, and its best epoch's validation metrics."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        row = {"trial_id": result.metrics.get("trial_id") if result.metrics else None,
               "status": "ERROR" if result.error else "TERMINATED",
               **{f"config/{p.name}": result.config.get(p.name) for p in space.params}}
        if history is not None and not history.empty and space.metric in history:
            best = history.loc[best_index(history[space.metric], history["epoch"], space.mode)]
            row.update({"epochs_run": int(history["epoch"].max()), "best_epoch": int(best["epoch"])})
            row.update({k: float(best[k]) for k in history.columns if k.startswith("val/")})
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(table: pd.DataFrame, folder: Path) -> None:
    table.to_csv(folder / SUMMARY_CSV, index=False)
    (folder / SUMMARY_JSON).write_text(table.to_json(orient="records", indent=2))


def best_trial(results, table: pd.DataFrame, space: SearchSpace):
    """The result of the trial whose best epoch is best on the search metric, and its summary row."""
    ok = table.dropna(subset=[space.metric]) if space.metric in table else table.iloc[0:0]
    if ok.empty:
        raise RuntimeError(f"no trial reported {space.metric}")
    row = ok.loc[best_index(ok[space.metric], ok["best_epoch"], space.mode)]
    return next(r for r in results if r.path == row["path"]), row


def selected_checkpoint(result, metric: str, mode: str):
    """The trial's kept checkpoint (a ray.train.Checkpoint) with the best validation metric, and the
    metrics it was saved with.

    1-worker trials keep Tune checkpoints; N-worker trials keep Ray Train's, whose paths come in
    the `checkpoint_path` metric, as paths on the storage's filesystem (a bucket's, or the local one).
    """
    import pyarrow.fs
    from ray.train import Checkpoint

    fs = result.filesystem
    kept = lambda path: isinstance(path, str) and fs.get_file_info(path).type == pyarrow.fs.FileType.Directory
    candidates = list(result.best_checkpoints)
    history = result.metrics_dataframe
    if history is not None and "checkpoint_path" in history:
        candidates += [(Checkpoint(row["checkpoint_path"], filesystem=fs), row.to_dict())
                       for _, row in history.iterrows() if kept(row["checkpoint_path"])]
    candidates = [(checkpoint, m) for checkpoint, m in candidates if metric in m]
    if not candidates:
        raise RuntimeError(f"trial {result.path} kept no checkpoint with {metric}")
    table = pd.DataFrame([m for _, m in candidates])
    return candidates[best_index(table[metric], table["epoch"], mode)]


def best_record(result, row, saved_metrics: dict, checkpoint: Path, test: dict, diagnostics: Path,
                experiment: str, study: str) -> dict:
    """The content of best.json."""
    return {
        "trial_id": row["trial_id"],
        "config": {k: v for k, v in result.config.items() if not _is_nan(v)},
        "validation": {k: float(v) for k, v in saved_metrics.items() if k.startswith("val/")},
        "best_epoch": int(saved_metrics["epoch"]),
        "test": test,
        "checkpoint": str(checkpoint),
        "diagnostics": str(diagnostics),
        "experiment": experiment,
        "study": study,
    }


def write_best(best: dict, folder: Path) -> None:
    (folder / BEST_JSON).write_text(json.dumps(best, indent=2, default=str))


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def print_best(best: dict, space: SearchSpace, files: str) -> None:
    searched = {p.name: best["config"].get(p.name) for p in space.params}
    fmt = lambda d: "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
    print("\n== mmray: best trial", best["trial_id"], f"(epoch {best['best_epoch']}, selected on {space.metric})")
    print("config     ", fmt(searched) or "(nothing searched)")
    print("validation ", fmt(best["validation"]))
    print("test       ", fmt(best["test"]))
    print("results    ", best["experiment"], f"({files})", flush=True)
