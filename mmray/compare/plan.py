"""Comparison plan YAML -> a validated `Plan`, and each method's search space built from it, before Ray starts.

A plan names the dataset, the methods, the training protocol every method shares, the search budget
every method gets alike, the confirmation seeds and the metric:

    dataset: synthetic-av
    methods: [joint, ogm, gmm]
    spaces: {gmm: my-gmm.yaml}        # optional: a method's search space (default: the lookup below)
    metric: val/fused_acc
    mode: max
    seed: 0                           # sampler seed; confirmation seeds are seed+1 .. seed+seeds, the same for all
    trials: 6                         # every method's search gets this many trials ...
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}     # ... and this scheduler
    max_concurrent: 1
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    confirm: {top_k: 2, seeds: 3}     # top_k >= 1: each method's choice is confirmed over the seeds
    shared: {epochs: 6, batch_size: 64, model: small-cnn, optimizer: adamw}   # every method trains on these
    searched:                         # searched for every method, alike
      lr: {type: log-float, low: 3.0e-4, high: 3.0e-3}

A method's search space: `spaces[method]` if the plan names one (a path, relative to the plan's
folder, or a name in search_spaces/); else `search_spaces/<dataset>-<method>.yaml`; else, for a
dataset that has no spaces of its own in search_spaces/ (synthetic-av, or one's own prepared with
`mmray prepare manifest`), the method's generic `search_spaces/<method>.yaml`.

From a method's space only its own hyperparameters are taken (fixed and searched). Its training
settings (`TrainConfig` keys: epochs, lr, model, ...) are the plan's: a setting the plan searches
replaces the space's; a setting the space searches and the plan fixes takes the plan's value; a
setting the space fixes must equal the plan's (epochs excepted: it is the plan's budget), and one the
plan does not settle at all is refused -- either would train that method on a protocol of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from mmray.config import build, check_keys, coerce, read_yaml
from mmray.errors import UserError
from mmray.methods import get_method
from mmray.train.config import TrainConfig
from mmray.train.resources import WorkerResources
from mmray.tune.space import (RUN_LEVEL_KEYS, SPACES_DIR, Confirm, Scheduler, SearchSpace, parse_space,
                              resolve_space_path)

# Training settings every method must share: the general keys of a run, less the run-level ones.
PROTOCOL_KEYS = tuple(k for k in TrainConfig.general_keys() if k not in RUN_LEVEL_KEYS)
BUDGET_KEYS = ("epochs",)  # set by the plan (and --epochs) for every method, whatever a method space says


@dataclass(frozen=True)
class Plan:
    source: Path
    name: str
    dataset: str
    methods: tuple[str, ...]
    metric: str = "val/fused_acc"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    trials: int = 6
    max_concurrent: int = 1
    scheduler: Scheduler = Scheduler()
    resources: WorkerResources = WorkerResources()
    confirm: Confirm = Confirm(top_k=1, seeds=2)
    shared: dict[str, Any] = field(default_factory=dict)
    searched: dict[str, Any] = field(default_factory=dict)  # raw param specs, parsed in every method's space
    spaces: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None

    @property
    def seeds(self) -> list[int]:
        """The seeds every method's chosen configuration is evaluated with: the same for all (paired)."""
        if self.confirm.top_k:
            return [self.seed + i for i in range(1, self.confirm.seeds + 1)]
        return [self.seed]

    def with_overrides(self, methods=None, dataset=None, data_dir=None, trials=None, epochs=None, seeds=None,
                       name=None) -> "Plan":
        """Command-line overrides (None: not given), re-checked like the file."""
        plan = replace(self, **{k: v for k, v in {"methods": methods, "dataset": dataset, "data_dir": data_dir,
                                                  "trials": trials, "name": name}.items() if v is not None})
        if methods is not None:  # a space named for a method left out is not a typo here
            plan = replace(plan, spaces={m: path for m, path in plan.spaces.items() if m in methods})
        if epochs is not None:
            plan = replace(plan, shared={**plan.shared, "epochs": epochs})
        if seeds is not None:
            plan = replace(plan, confirm=replace(plan.confirm, seeds=seeds))
        _check_plan(plan, f"{self.source} (with command-line overrides)")
        return plan

    def method_spaces(self) -> dict[str, SearchSpace]:
        """Every method's search space under this plan (all checked before anything runs; a missing
        space is reported before an inconsistent one)."""
        files = {method: space_file(self, method) for method in self.methods}
        return {method: method_space(self, method, path) for method, path in files.items()}


TOP_LEVEL = tuple(f.name for f in fields(Plan) if f.name != "source")


def load_plan(name: str) -> Plan:
    path = resolve_space_path(name)
    return parse_plan(read_yaml(path), path)


def parse_plan(raw: Any, path: Path) -> Plan:
    where = str(path)
    check_keys(raw, TOP_LEVEL, ("dataset", "methods"), where)
    methods = raw["methods"]
    if not isinstance(methods, list) or not methods:
        raise UserError(f"{where}: methods: expected a non-empty list of method names")
    for key in ("shared", "searched", "spaces"):
        if not isinstance(raw.get(key) or {}, dict):
            raise UserError(f"{where}: {key}: expected a mapping")
    defaults = Plan(path, "", "", ())
    plan = Plan(
        source=path,
        name=coerce(raw.get("name", path.stem), str, f"{where}: name"),
        dataset=coerce(raw["dataset"], str, f"{where}: dataset"),
        data_dir=coerce(raw.get("data_dir"), str | None, f"{where}: data_dir"),
        methods=tuple(coerce(m, str, f"{where}: methods") for m in methods),
        metric=coerce(raw.get("metric", defaults.metric), str, f"{where}: metric"),
        mode=coerce(raw.get("mode", defaults.mode), Literal["max", "min"], f"{where}: mode"),
        seed=coerce(raw.get("seed", 0), int, f"{where}: seed"),
        trials=coerce(raw.get("trials", defaults.trials), int, f"{where}: trials"),
        max_concurrent=coerce(raw.get("max_concurrent", 1), int, f"{where}: max_concurrent"),
        scheduler=build(Scheduler, raw.get("scheduler") or {}, f"{where}: scheduler"),
        resources=build(WorkerResources, raw.get("resources") or {}, f"{where}: resources"),
        confirm=build(Confirm, raw.get("confirm") or {"top_k": 1, "seeds": 2}, f"{where}: confirm"),
        shared=dict(raw.get("shared") or {}),
        searched=dict(raw.get("searched") or {}),
        spaces={coerce(k, str, f"{where}: spaces"): coerce(v, str, f"{where}: spaces.{k}")
                for k, v in (raw.get("spaces") or {}).items()},
    )
    _check_plan(plan, where)
    return plan


def _check_plan(plan: Plan, where: str) -> None:
    """What can be checked without the methods' spaces (those are checked by `method_spaces`)."""
    for method in plan.methods:
        try:
            get_method(method)
        except UserError as e:
            raise UserError(f"{where}: methods: {e}") from None
    if len(set(plan.methods)) != len(plan.methods):
        raise UserError(f"{where}: methods: a method is listed twice")
    for key in plan.spaces:
        if key not in plan.methods:
            raise UserError(f"{where}: spaces.{key}: not one of the plan's methods {list(plan.methods)}")
    for key in (*plan.shared, *plan.searched):
        if key not in PROTOCOL_KEYS:
            raise UserError(f"{where}: {'shared' if key in plan.shared else 'searched'}.{key}: not a training "
                            f"setting every method shares ({', '.join(PROTOCOL_KEYS)}); a method's own "
                            "hyperparameters come from its search space")
    both = sorted(set(plan.shared) & set(plan.searched))
    if both:
        raise UserError(f"{where}: {both[0]!r} is both shared (fixed) and searched; keep one")
    if plan.trials < 1:
        raise UserError(f"{where}: trials must be at least 1, got {plan.trials}")
    if plan.confirm.top_k < 0 or plan.confirm.seeds < 1:
        raise UserError(f"{where}: confirm needs top_k >= 0 and seeds >= 1")


def space_file(plan: Plan, method: str) -> Path:
    """The lookup rule of the module docstring."""
    if method in plan.spaces:
        given = Path(plan.spaces[method]).expanduser()
        local = given if given.is_absolute() else plan.source.parent / given
        return local.resolve() if local.is_file() else resolve_space_path(plan.spaces[method])
    per_dataset = SPACES_DIR / f"{plan.dataset}-{method}.yaml"
    if per_dataset.is_file():
        return per_dataset
    generic = SPACES_DIR / f"{method}.yaml"
    if generic.is_file() and not any(SPACES_DIR.glob(f"{plan.dataset}-*.yaml")):
        return generic
    raise UserError(f"{plan.source}: methods: {method!r} has no search space for dataset {plan.dataset!r} "
                    f"(no {per_dataset.name} in {SPACES_DIR}); write one, or name one under spaces.{method}")


def method_space(plan: Plan, method: str, path: Path) -> SearchSpace:
    """`method`'s search space under `plan` (from the file `path`): its own hyperparameters, the plan's
    protocol, budget and seeds."""
    raw = read_yaml(path) or {}
    own = parse_space(raw, path)  # the space as shipped must be valid on its own (errors name it)
    if own.method != method:
        raise UserError(f"{path}: its method is {own.method!r}, but the plan uses it for {method!r}")
    where = f"{plan.source}: inconsistent shared settings: {path.name}"
    fixed = {}
    for key, value in own.fixed.items():
        if key not in PROTOCOL_KEYS or key in plan.searched or key in BUDGET_KEYS:
            if key not in PROTOCOL_KEYS:
                fixed[key] = value  # the method's own hyperparameter
            continue
        if key not in plan.shared:
            raise UserError(f"{where} fixes {key}: {value!r}, which the plan does not share; add it to shared")
        if value != coerce(plan.shared[key], type(value), f"{plan.source}: shared.{key}"):
            raise UserError(f"{where} fixes {key}: {value!r}, the plan shares {key}: {plan.shared[key]!r}")
    params = {}
    for name, spec in (raw.get("params") or {}).items():
        if name not in PROTOCOL_KEYS:
            params[name] = spec
        elif name not in plan.shared and name not in plan.searched:
            raise UserError(f"{where} searches {name}, which the plan neither shares nor searches; add it to "
                            "shared or searched")
    merged = {"name": method, "method": method, "dataset": plan.dataset, "data_dir": plan.data_dir,
              "metric": plan.metric, "mode": plan.mode, "num_samples": plan.trials,
              "max_concurrent": plan.max_concurrent, "seed": plan.seed,
              "scheduler": vars(plan.scheduler), "resources": vars(plan.resources), "confirm": vars(plan.confirm),
              "fixed": {**plan.shared, **fixed}, "params": {**plan.searched, **params}}
    # parse_space also tries every range at its ends: a range that does not fit the plan is refused here.
    return parse_space(merged, Path(f"{plan.source} (method {method})"))
