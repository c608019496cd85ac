"""`mmray compare`: every method of a plan searched, confirmed over the same seeds and tested, then compared.

The recipe: check the whole plan (every method's space) before Ray starts; then one `run_search` per
method, experiment `<storage>/<name>/<method>`; then the comparison files in `<storage>/<name>`.

Each method's search runs its plan's `max_concurrent` trials at once. Where the cluster has room for
more than one method's trials (a cluster at `--address`, or a big machine), as many methods as fit
run at once, each search driven from a Ray task on this node (so experiment folders stay here)
that holds no CPU of its own; otherwise (a 2-core machine) one after another, in this process.

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
from mmray.train.resources import DATA_RESERVED_CPUS
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
    outcomes = run_methods(spaces, options)
    comparison = report.compare(plan, spaces, outcomes)
    report.write(comparison, options.folder)
    print(report.markdown(comparison), flush=True)
    print(f"mmray: comparison in {options.folder} ({', '.join(report.FILES)})", flush=True)
    return comparison


def run_methods(spaces: dict[str, SearchSpace], options: CompareOptions) -> dict[str, dict]:
    """Every method's outcome (in the plan's order): as many methods at once as the cluster fits."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from mmray.tune.search import SEARCH_ENV, start_ray

    start_ray(options.address)
    # every method has the plan's resources and max_concurrent: any space tells what one method needs
    at_once = methods_at_once(next(iter(spaces.values())), len(spaces), ray.cluster_resources())
    if at_once <= 1:
        return {method: run_method(space, options) for method, space in spaces.items()}
    print(f"mmray: {at_once} methods at once fit this cluster", flush=True)
    here = ray.get_runtime_context().get_node_id()
    remote = ray.remote(run_method).options(
        num_cpus=0, max_retries=0, runtime_env={"env_vars": SEARCH_ENV},
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
    waiting, running, outcomes = list(spaces.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < at_once:
            method, space = waiting.pop(0)
            running[remote.remote(space, options)] = method
        [done], _ = ray.wait(list(running), num_returns=1)
        method = running.pop(done)
        try:
            outcomes[method] = ray.get(done)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):  # bad input found only there: one line, as in this process
                raise e.cause from None
            raise
    return {method: outcomes[method] for method in spaces}


def methods_at_once(space: SearchSpace, methods: int, cluster: dict) -> int:
    """How many of `methods` searches like `space`'s fit the cluster side by side, each with its own trials at once."""
    from mmray.tune.search import concurrent_trials

    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    trials = concurrent_trials(space, cpus, gpus)
    fits = int((cpus - DATA_RESERVED_CPUS) // (trials * space.resources.cpus_per_trial()) + 1e-9)
    gpus_per_method = trials * space.resources.workers * space.resources.gpus_per_worker
    if gpus_per_method:
        fits = min(fits, int(gpus // gpus_per_method))
    return max(1, min(fits, methods))


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
