"""What a finished search leaves: a summary of every trial, the trial and checkpoint chosen on
validation, and `best.json` with that checkpoint's test metrics (evaluated once, after selection)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from mmray.files import write_atomic
from mmray.train.checkpoint import BEST_JSON
from mmray.train.diagnose import DIAGNOSTICS_JSON
from mmray.tune.space import SearchSpace

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


def best_index(values: pd.Series, epochs: pd.Series, mode: str):
    """Index of the best finite value (None if there is none); on a tie the later epoch wins (it is the
    checkpoint Ray keeps). NaN and inf never rank best: pandas would sort NaN last, i.e. as the best."""
    values = pd.to_numeric(values, errors="coerce")
    finite = values.map(math.isfinite)
    if not finite.any():
        return None
    order = pd.DataFrame({"v": values if mode == "max" else -values, "e": epochs})[finite].sort_values(["v", "e"])
    return order.index[-1]


def error_reason(result) -> str | None:
    """The last line of a failed trial's error (e.g. 'NonFiniteLoss: train/loss is nan in epoch 3 ...')."""
    if not result.error:
        return None
    lines = [line.strip() for line in str(result.error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(result.error).__name__


def summarize(results, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: status, searched values, epochs run, and its best epoch's validation metrics."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        row = {"trial_id": result.metrics.get("trial_id") if result.metrics else None,
               "status": "ERROR" if result.error else "TERMINATED", "error": error_reason(result),
               **{f"config/{p.name}": result.config.get(p.name) for p in space.params}}
        best = None
        if history is not None and not history.empty and space.metric in history:
            best = best_index(history[space.metric], history["epoch"], space.mode)
            row["epochs_run"] = int(history["epoch"].max())
        if best is not None:
            best = history.loc[best]
            row.update({"best_epoch": int(best["epoch"]), "last_value": float(history[space.metric].iloc[-1])})
            row.update({k: float(best[k]) for k in history.columns if k.startswith("val/")})
        row["path"] = result.path
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(table: pd.DataFrame, folder: Path) -> None:
    write_atomic(folder / SUMMARY_CSV, table.to_csv(index=False))
    write_atomic(folder / SUMMARY_JSON, table.to_json(orient="records", indent=2))


def best_trial(results, table: pd.DataFrame, space: SearchSpace):
    """The result of the trial whose best epoch is best on the search metric, and its summary row."""
    best = best_index(table[space.metric], table["best_epoch"], space.mode) if space.metric in table else None
    if best is None:
        reasons = "; ".join(sorted({r for r in table.get("error", pd.Series()).dropna()})) or "none reported"
        raise NoTrialSucceeded(f"no trial reported a finite {space.metric} (errors: {reasons})")
    row = table.loc[best]
    return next(r for r in results if r.path == row["path"]), row


class NoTrialSucceeded(RuntimeError):
    """Every trial of a search failed or reported no finite value of its metric."""


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
    table = pd.DataFrame([m for _, m in candidates])
    best = best_index(table[metric], table["epoch"], mode) if candidates else None
    if best is None:
        raise RuntimeError(f"trial {result.path} kept no checkpoint with a finite {metric}")
    return candidates[best]


def best_value(result, space: SearchSpace) -> float | None:
    """A trial's best finite value of the search metric over its epochs (None if it has none)."""
    history = result.metrics_dataframe
    if history is None or history.empty or space.metric not in history:
        return None
    best = best_index(history[space.metric], history["epoch"], space.mode)
    return None if best is None else float(history.loc[best, space.metric])


def mean_std(records: list[dict]) -> tuple[dict, dict]:
    """Per key, the mean and the (sample) standard deviation over records (std 0 for one record)."""
    table = pd.DataFrame(records)
    std = table.std(ddof=1) if len(table) > 1 else table.iloc[0] * 0.0
    return table.mean().to_dict(), std.to_dict()


def best_record(config: dict, seeds: list[dict], space: SearchSpace, experiment: str, study: str) -> dict:
    """The content of best.json: the chosen configuration, its runs' validation and test figures (mean and
    std over seeds, and each seed's), and the checkpoint of its best run on validation."""
    best = seeds[best_index(pd.Series([s["validation"][space.metric] for s in seeds]),
                            pd.Series([s["best_epoch"] for s in seeds]), space.mode)]
    validation, validation_std = mean_std([s["validation"] for s in seeds])
    test, test_std = mean_std([s["test"] for s in seeds])
    return {
        "trial_id": best["trial_id"],
        "config": {k: v for k, v in config.items() if not _is_nan(v)},
        "validation": validation, "validation_std": validation_std,
        "test": test, "test_std": test_std,
        "best_epoch": best["best_epoch"],
        "checkpoint": best["checkpoint"],
        "diagnostics": str(Path(best["checkpoint"]) / DIAGNOSTICS_JSON),
        "seeds": seeds,
        "experiment": experiment,
        "study": study,
    }


def confirmation_record(groups: list, space: SearchSpace) -> list[dict]:
    """Every confirmed configuration (its searched values) with each seed's best validation value, best first."""
    record = []
    for config, runs in groups:
        values = {seed: best_value(result, space) for seed, result in runs}
        finite = [v for v in values.values() if v is not None]
        record.append({"config": {p.name: config.get(p.name) for p in space.params}, "validation": values,
                       "mean": sum(finite) / len(finite) if finite else None,
                       "std": float(pd.Series(finite).std(ddof=1)) if len(finite) > 1 else 0.0})
    return record


def write_best(best: dict, folder: Path) -> None:
    write_atomic(folder / BEST_JSON, json.dumps(best, indent=2, default=str))


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def print_best(best: dict, space: SearchSpace, table: pd.DataFrame, files: str) -> None:
    searched = {p.name: best["config"].get(p.name) for p in space.params}
    fmt = lambda d: "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
    pm = lambda mean, std: "  ".join(f"{k}={v:.4f}" + (f"+-{std[k]:.4f}" if len(best["seeds"]) > 1 else "")
                                     for k, v in mean.items())
    for _, row in table[table["status"] == "ERROR"].iterrows():
        print(f"mmray: trial {row['trial_id'] or row['path']} failed: {row['error']}")
    seeds = [s["seed"] for s in best["seeds"]]
    print("\n== mmray: best trial", best["trial_id"], f"(epoch {best['best_epoch']}, selected on {space.metric};",
          f"the chosen configuration's {len(seeds)} seed(s): {seeds})")
    print("config     ", fmt(searched) or "(nothing searched)")
    print("validation ", pm(best["validation"], best["validation_std"]))
    print("test       ", pm(best["test"], best["test_std"]))
    if len(seeds) > 1:
        for s in best["seeds"]:
            print(f"  seed {s['seed']:<4} val {s['validation'][space.metric]:.4f}  "
                  + "  ".join(f"{k}={v:.4f}" for k, v in s["test"].items() if k.endswith("_acc")))
    for rank, candidate in enumerate(best.get("confirmation", []), 1):
        mean = "failed" if candidate["mean"] is None else f"{candidate['mean']:.4f}+-{candidate['std']:.4f}"
        print(f"  confirmed #{rank}: {space.metric} {mean} over seeds {list(candidate['validation'])}  "
              + fmt(candidate["config"]))
    print("results    ", best["experiment"], f"({files})", flush=True)
