"""The comparison a researcher pastes into a paper: per-method test figures over seeds, paired tests
against the baselines, and a figure. docs/compare.md explains the statistics.

Every method's chosen configuration was evaluated on test with the same seeds, so the figures pair
up by seed: for method M against baseline B, d_s = M_s - B_s; the table gives mean(d), its 95%
confidence interval mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n), and the two-sided p-value of the
paired t-test (scipy.stats.ttest_rel), marked * where below 0.05. With n seeds the test has n - 1
degrees of freedom: with 2 seeds it is reported, and it is weak.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from mmray.compare.plan import Plan
from mmray.tune.space import SearchSpace

COMPARISON_MD, COMPARISON_CSV, COMPARISON_JSON, COMPARISON_PNG = (
    "comparison.md", "comparison.csv", "comparison.json", "comparison.png")
FILES = (COMPARISON_MD, COMPARISON_CSV, COMPARISON_JSON, COMPARISON_PNG)
TEST_KEYS = ("test/fused_acc", "test/fused_f1", "test/audio_acc", "test/audio_f1", "test/visual_acc",
             "test/visual_f1", "test/gap")
BASELINES = ("joint", "late-fusion")
PAIRED_KEYS = ("test/fused_acc", "test/fused_f1")
ALPHA = 0.05
TEST_NAME = "paired t-test (scipy.stats.ttest_rel, two-sided); 95% CI of the mean difference, t-based"


def compare(plan: Plan, spaces: dict[str, SearchSpace], outcomes: dict[str, dict]) -> dict:
    """comparison.json's content: every method's row and per-seed figures, and the paired differences."""
    rows = [method_row(method, spaces[method], outcome) for method, outcome in outcomes.items()]
    by_method = {row["method"]: row for row in rows if row["seeds"]}
    paired = [paired_difference(by_method[m], by_method[b], key)
              for b in BASELINES if b in by_method for m in by_method if m != b for key in PAIRED_KEYS]
    return {"plan": str(plan.source), "name": plan.name, "dataset": plan.dataset, "metric": plan.metric,
            "seeds": plan.seeds, "trials_per_method": plan.trials, "epochs": spaces[plan.methods[0]].epochs,
            "shared": plan.shared, "searched": sorted(plan.searched), "test": TEST_NAME, "alpha": ALPHA,
            "methods": rows, "paired": paired}


def method_row(method: str, space: SearchSpace, outcome: dict) -> dict:
    best, summary = outcome["best"], outcome["summary"]
    table = pd.read_csv(summary) if Path(summary).is_file() else pd.DataFrame()
    confirmed = len(best.get("confirmation", [])) if best else 0
    seeds = [{"seed": s["seed"], "trial_id": s["trial_id"], "best_epoch": s["best_epoch"],
              space.metric: s["validation"].get(space.metric), **{k: s["test"].get(k) for k in TEST_KEYS}}
             for s in (best["seeds"] if best else [])]
    per_seed = pd.DataFrame(seeds)
    return {
        "method": method,
        "status": "ok" if best else "failed",
        "error": outcome.get("error") or (None if best else "no best.json (search did not finish)"),
        "chosen": {p.name: best["config"].get(p.name) for p in space.params} if best else {},
        "trials": len(table) + confirmed * space.confirm.seeds,
        "epochs": int(table["epochs_run"].fillna(0).sum() if "epochs_run" in table else 0)
                  + confirmed * space.confirm.seeds * space.epochs,
        "wall_s": outcome.get("wall_s"),
        "mean": {k: float(per_seed[k].mean()) for k in TEST_KEYS} if seeds else {},
        "std": {k: float(per_seed[k].std(ddof=1)) if len(seeds) > 1 else 0.0 for k in TEST_KEYS} if seeds else {},
        "seeds": seeds,
    }


def paired_difference(row: dict, baseline: dict, key: str) -> dict:
    """Mean paired difference over the seeds both have, its t-based 95% CI, and the paired t-test."""
    from scipy import stats

    ours = {s["seed"]: s[key] for s in row["seeds"]}
    theirs = {s["seed"]: s[key] for s in baseline["seeds"]}
    common = sorted(set(ours) & set(theirs))
    a, b = [ours[s] for s in common], [theirs[s] for s in common]
    diffs = pd.Series(a) - pd.Series(b)
    n = len(common)
    mean = float(diffs.mean()) if n else math.nan
    low = high = p = math.nan
    if n > 1:
        half = stats.t.ppf(1 - ALPHA / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
        low, high = mean - half, mean + half
        p = float(stats.ttest_rel(a, b).pvalue)  # nan when every difference is the same
    return {"method": row["method"], "baseline": baseline["method"], "metric": key, "seeds": common, "n": n,
            "mean_diff": mean, "ci_low": float(low), "ci_high": float(high), "p_value": p,
            "significant": bool(p < ALPHA) if math.isfinite(p) else False}


def write(comparison: dict, folder: Path) -> None:
    (folder / COMPARISON_JSON).write_text(json.dumps(comparison, indent=2, default=str))
    per_seed = [{"method": row["method"], **seed} for row in comparison["methods"] for seed in row["seeds"]]
    pd.DataFrame(per_seed, columns=["method", "seed", "trial_id", "best_epoch", comparison["metric"], *TEST_KEYS]) \
        .to_csv(folder / COMPARISON_CSV, index=False)
    (folder / COMPARISON_MD).write_text(markdown(comparison))
    (folder / COMPARISON_PNG).write_bytes(figure(comparison))


def _pm(row: dict, key: str) -> str:
    return f"{row['mean'][key]:.4f} ± {row['std'][key]:.4f}" if row["seeds"] else "—"


def _value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(comparison: dict) -> str:
    seeds = comparison["seeds"]
    lines = [f"# mmray compare: {comparison['name']} on {comparison['dataset']}", "",
             f"Test figures of each method's configuration chosen on {comparison['metric']}, mean ± std over "
             f"seeds {seeds} (each seed's checkpoint chosen on validation, evaluated on test once). Every method: "
             f"{comparison['trials_per_method']} search trials, {comparison['epochs']} epochs, shared settings "
             f"{comparison['shared']}, searched alike: {comparison['searched'] or 'nothing'}.", "",
             "| method | fused acc | fused macro-F1 | audio acc | visual acc | chosen hyperparameters "
             "| trials | epochs | wall time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in comparison["methods"]:
        chosen = ", ".join(f"{k}={_value(v)}" for k, v in row["chosen"].items()) or "—"
        if row["status"] != "ok":
            chosen = f"failed: {row['error']}"
        wall = f"{row['wall_s'] / 60:.1f} min" if row["wall_s"] is not None else "—"
        lines.append(f"| {row['method']} | {_pm(row, 'test/fused_acc')} | {_pm(row, 'test/fused_f1')} | "
                     f"{_pm(row, 'test/audio_acc')} | {_pm(row, 'test/visual_acc')} | {chosen} | {row['trials']} | "
                     f"{row['epochs']} | {wall} |")
    if comparison["paired"]:
        lines += ["", f"Paired differences over seeds (method − baseline); test: {comparison['test']}; "
                      f"* p < {comparison['alpha']}. With n seeds the test has n − 1 degrees of freedom.", "",
                  "| method | baseline | metric | mean difference | 95% CI | p-value | n |", "|---|---|---|---|---|---|---|"]
        for d in comparison["paired"]:
            mark = " *" if d["significant"] else ""
            ci = f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if math.isfinite(d["ci_low"]) else "—"
            p = f"{d['p_value']:.3g}{mark}" if math.isfinite(d["p_value"]) else "—"
            lines.append(f"| {d['method']} | {d['baseline']} | {d['metric'].removeprefix('test/')} | "
                         f"{d['mean_diff']:+.4f} | {ci} | {p} | {d['n']} |")
    return "\n".join(lines) + "\n"


def figure(comparison: dict) -> bytes:
    """Left: per method, fused / audio / visual test accuracy (mean, error bars: std over seeds).
    Right: per seed, visual (the weak modality's) accuracy against fused accuracy."""
    import matplotlib

    from mmray.plots import subplots, to_png

    rows = [row for row in comparison["methods"] if row["seeds"]]
    fig, (bars, scatter) = subplots(1, 2, figsize=(max(8.0, 1.6 * len(rows) + 5), 4))
    width = 0.27
    for i, (head, color) in enumerate((("fused", "tab:blue"), ("audio", "tab:orange"), ("visual", "tab:green"))):
        key = f"test/{head}_acc"
        bars.bar([x + (i - 1) * width for x in range(len(rows))], [r["mean"][key] for r in rows], width,
                 yerr=[r["std"][key] for r in rows], capsize=3, label=head, color=color)
    bars.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, ha="right")
    bars.set_ylabel("test accuracy")
    bars.set_title(f"mean ± std over seeds {comparison['seeds']}")
    bars.legend(fontsize=8)
    colors = matplotlib.colormaps["tab20"].colors  # 20 colours, and a marker each: a method never shares both
    for i, row in enumerate(rows):
        scatter.scatter([s["test/visual_acc"] for s in row["seeds"]], [s["test/fused_acc"] for s in row["seeds"]],
                        label=row["method"], color=colors[i % len(colors)], marker="osD^vPX"[i % 7])
    scatter.set_xlabel("visual (weak modality) test accuracy")
    scatter.set_ylabel("fused test accuracy")
    scatter.set_title("per seed: balance vs accuracy")
    scatter.legend(fontsize=8)
    return to_png(fig)
