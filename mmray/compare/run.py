"""`mmray compare`: every method of a plan searched, confirmed over the same seeds and tested, then compared.

The recipe: check the whole plan (every method's space) before Ray starts; then one `run_search` per
method, experiment `<storage>/<name>/<method>`; then the comparison files in `<storage>/<name>`.

Methods run one after another, each search using the whole cluster (the plan's `max_concurrent`
trials at once): a search is sequential in its proposals (TPE learns from finished trials, ASHA
promotes against them), so a method gets the most out of its budget when its trials have the
cluster to themselves; and one method at a time is what a 2-core machine can run anyway. On a
cluster (`--address`) each method's trials spread over it.

Selection never touches test: `run_search` picks each method's configuration on validation, and
evaluates each seed's checkpoint chosen on validation on test, once. The seeds are the plan's,
the same for every method, so the per-seed figures pair up across methods.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mmray.compare.plan import Plan
from mmray.compare import report
from mmray.errors import UserError
from mmray.train.checkpoint import BEST_JSON
from mmray.tune.results import SUMMARY_CSV, NoTrialSucceeded
from mmray.tune.space import SearchSpace
from mmray.tune.storage import RunOptions

RUN_JSON = "compare_run.json"  # in each method's experiment: its wall time, or why it failed


@dataclass(frozen=True)
class CompareOptions:
    storage: Path
    name: str
    address: str | None = None
    resume: bool = False

    @property
    def folder(self) -> Path:
        return self.storage / self.name

    def method_options(self, method: str, resume: bool) -> RunOptions:
        return RunOptions(storage=self.folder, name=method, address=self.address, resume=resume)


def run_compare(plan: Plan, options: CompareOptions) -> dict:
    spaces = plan.method_spaces()  # every bad plan fails here, before Ray starts
    if options.folder.exists() and not options.resume:
        raise UserError(f"{options.folder}: comparison already exists; pass --resume to continue it or --name "
                        "for a new one")
    if options.resume and not options.folder.is_dir():
        raise UserError(f"{options.folder}: nothing to resume (no such comparison folder)")
    options.folder.mkdir(parents=True, exist_ok=True)
    outcomes = {method: run_method(space, options) for method, space in spaces.items()}
    comparison = report.compare(plan, spaces, outcomes)
    report.write(comparison, options.folder)
    print(report.markdown(comparison), flush=True)
    print(f"mmray: comparison in {options.folder} ({', '.join(report.FILES)})", flush=True)
    return comparison


def run_method(space: SearchSpace, options: CompareOptions) -> dict:
    """One method's search and confirmation; a finished one (its best.json is there) is not run again.

    Returns {"best": best.json's record or None, "error": why it has none, "wall_s", "summary": path}."""
    from mmray.tune.search import run_search

    exp = options.folder / space.method
    if (exp / BEST_JSON).is_file():
        print(f"mmray: {space.method}: finished before, not run again", flush=True)
        return load_outcome(exp)
    print(f"\nmmray: == {space.method} ==", flush=True)
    started = time.time()
    error = None
    try:
        run_search(space, options.method_options(space.method, resume=options.resume and exp.is_dir()))
    except NoTrialSucceeded as e:
        error = str(e)
        print(f"mmray: {space.method}: {error}", flush=True)
    record = {"wall_s": time.time() - started, "error": error}
    (exp / RUN_JSON).write_text(json.dumps(record, indent=2))
    return load_outcome(exp)


def load_outcome(exp: Path) -> dict:
    run = json.loads((exp / RUN_JSON).read_text()) if (exp / RUN_JSON).is_file() else {"wall_s": None, "error": None}
    best = json.loads((exp / BEST_JSON).read_text()) if (exp / BEST_JSON).is_file() else None
    return {**run, "best": best, "summary": exp / SUMMARY_CSV}
