"""Search-space YAML -> a validated `SearchSpace`, before Ray starts.

A search space names the method, dataset, metric and mode, how many trials and how many at once,
the scheduler, each trial's resources, the fixed settings and the searched ones:

    method: joint
    dataset: synthetic-av
    metric: val/fused_acc          # validation metrics only
    mode: max
    num_samples: 6
    max_concurrent: 1
    scheduler: {type: asha, grace_period: 2, reduction_factor: 2}
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
    retries: {trials: 2, workers: 2}   # a failed trial / Train run restarts from its last checkpoint
    fixed: {epochs: 6, batch_size: 64}
    params:
      lr: {type: log-float, low: 3.0e-4, high: 3.0e-3}
      fusion: {type: categorical, choices: [concat, sum]}
      momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}   # conditional

Every error names the file and the key at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from mmray.config import build, check_keys, coerce, read_yaml
from mmray.errors import UserError
from mmray.methods import get_method
from mmray.methods.base import require
from mmray.train.config import MAX_SEED, TrainConfig, key_type
from mmray.train.resources import WorkerResources
from mmray.train.metrics import metric_names

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
PARAM_TYPES = ("int", "float", "log-float", "categorical")
# Top-level keys that are run settings, not hyperparameters: they may not appear in fixed/params.
RUN_LEVEL_KEYS = ("method", "dataset", "data_dir", "seed")
METRICS = metric_names("val")  # what the loop reports on validation each epoch


@dataclass(frozen=True)
class Param:
    """One searched setting: a range or a list of choices, searched only `when` other settings allow."""
    name: str
    type: Literal["int", "float", "log-float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)  # key -> allowed values

    def __post_init__(self):
        """Refuse what Optuna cannot search, naming the key (`parse` adds the file and the parameter)."""
        if self.type == "categorical":
            require(len(self.choices) > 0, "choices", list(self.choices), "must not be empty")
            return
        for key in ("low", "high"):
            require(math.isfinite(getattr(self, key)), key, getattr(self, key), "must be finite")
        require(self.high > self.low, "high", self.high, f"must be above low ({self.low})")
        require(self.type != "log-float" or self.low > 0, "low", self.low, "must be above 0 for a log-float range")
        require(self.step is None or self.type != "log-float", "step", self.step, "cannot be set for a log-float range")
        require(self.step is None or 0 < self.step <= self.high - self.low, "step", self.step,
                "must be positive and at most high - low")

    @classmethod
    def parse(cls, name: str, spec: Any, annotation: Any, at: str) -> "Param":
        """`{type: ..., low/high/step or choices}` for a setting of type `annotation`; the space parses `when`."""
        if not isinstance(spec, dict) or "type" not in spec:
            raise UserError(f"{at}: expected {{type: {'|'.join(PARAM_TYPES)}, ...}}")
        kind = spec["type"]
        require(kind in PARAM_TYPES, f"{at}.type", kind, f"is not one of {list(PARAM_TYPES)}")
        allowed = {"type", "when"} | ({"choices"} if kind == "categorical" else {"low", "high", "step"})
        for key in spec:
            require(key in allowed, at, key, f"is not a key of type {kind} (allowed: {', '.join(sorted(allowed))})")
        if kind == "categorical":
            choices = spec.get("choices")
            require(isinstance(choices, list), f"{at}.choices", choices, "must be a list")
            values = {"choices": tuple(coerce(c, annotation, f"{at}.choices") for c in choices)}
        else:
            base = _base_type(annotation)
            require(base in (int, float), at, name, "is not numeric; use type: categorical")
            fits = "int" if base is int else "float or log-float"
            require((kind == "int") == (base is int), f"{at}.type", kind,
                    f"does not fit the {base.__name__} setting {name!r}; use {fits}")
            for key in ("low", "high"):
                require(key in spec, at, key, "is missing")
            values = {key: coerce(spec[key], base, f"{at}.{key}") for key in ("low", "high")}
            if spec.get("step") is not None:
                values["step"] = coerce(spec["step"], base, f"{at}.step")
        try:
            return cls(name, kind, **values)
        except UserError as e:
            raise UserError(f"{at}.{e}") from None

    def active(self, values: dict) -> bool:
        return all(values.get(key) in allowed for key, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        """Ask an Optuna trial for this parameter."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        if self.type == "log-float":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step)


@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run function: cheap suggest_* calls only, conditionals included.

    A class rather than a closure because Tune pickles the searcher with the experiment state.
    """
    constants: dict[str, Any]
    params: tuple[Param, ...]

    def __call__(self, trial) -> dict[str, Any]:
        values = dict(self.constants)
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return self.constants  # merged into the trial's config next to the suggested values


@dataclass(frozen=True)
class Scheduler:
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class Confirm:
    """After the search: retrain the `top_k` best configurations with `seeds` further seeds (0: off)."""
    top_k: int = 0
    seeds: int = 2


@dataclass(frozen=True)
class Retries:
    """How often a failed trial (its process killed, out of memory) restarts from its last checkpoint, and,
    in a trial of several workers, how often its Train run restarts when a worker dies."""
    trials: int = 2
    workers: int = 2


@dataclass(frozen=True)
class SearchSpace:
    source: Path
    name: str
    method: str
    dataset: str
    metric: str
    mode: Literal["max", "min"]
    num_samples: int
    max_concurrent: int
    scheduler: Scheduler
    resources: WorkerResources
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    data_dir: str | None = None
    seed: int = 0
    confirm: Confirm = Confirm()
    retries: Retries = Retries()

    @property
    def epochs(self) -> int:
        return int(self.fixed.get("epochs", TrainConfig.epochs))

    def constants(self) -> dict[str, Any]:
        """The settings every trial shares (merged into each trial's config)."""
        return {"method": self.method, "dataset": self.dataset, "data_dir": self.data_dir,
                "seed": self.seed, **self.fixed}

    def define_by_run(self) -> "DefineByRun":
        return DefineByRun(self.constants(), self.params)

    def with_overrides(self, **overrides) -> "SearchSpace":
        """Apply command-line overrides (None means "not given") and re-validate what they touch."""
        epochs = overrides.pop("epochs", None)
        confirm = {k: overrides.pop(f"confirm_{k}", None) for k in ("top_k", "seeds")}
        changes = {k: v for k, v in overrides.items() if v is not None}
        space = replace(self, **changes)
        space = replace(space, confirm=replace(space.confirm, **{k: v for k, v in confirm.items() if v is not None}))
        if epochs is not None:
            space = replace(space, fixed={**space.fixed, "epochs": epochs})
        _check_space(space, where=f"{self.source} (with command-line overrides)")
        return space


def resolve_space_path(name: str) -> Path:
    """`gmm.yaml` or `gmm` -> search_spaces/gmm.yaml; anything that exists as a path is used as is."""
    as_path = Path(name).expanduser()
    if as_path.is_file():
        return as_path.resolve()
    for candidate in (SPACES_DIR / name, SPACES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.name for p in SPACES_DIR.glob("*.yaml"))) or "none"
    raise UserError(f"{name}: no such search space file (nor in {SPACES_DIR}: {known})")


def load_space(name: str) -> SearchSpace:
    path = resolve_space_path(name)
    return parse_space(read_yaml(path), path)


TOP_LEVEL = tuple(f.name for f in fields(SearchSpace) if f.name != "source")  # the file is not a key in it
REQUIRED = ("method", "dataset", "metric", "mode")


def parse_space(raw: Any, path: Path) -> SearchSpace:
    where = str(path)
    check_keys(raw, TOP_LEVEL, REQUIRED, where)
    method = coerce(raw["method"], str, f"{where}: method")
    try:
        get_method(method)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    space = SearchSpace(
        source=path,
        name=coerce(raw.get("name", path.stem), str, f"{where}: name"),
        method=method,
        dataset=coerce(raw["dataset"], str, f"{where}: dataset"),
        data_dir=coerce(raw.get("data_dir"), str | None, f"{where}: data_dir"),
        metric=coerce(raw["metric"], str, f"{where}: metric"),
        mode=coerce(raw["mode"], Literal["max", "min"], f"{where}: mode"),
        num_samples=coerce(raw.get("num_samples", 8), int, f"{where}: num_samples"),
        max_concurrent=coerce(raw.get("max_concurrent", 1), int, f"{where}: max_concurrent"),
        seed=coerce(raw.get("seed", 0), int, f"{where}: seed"),
        scheduler=build(Scheduler, raw.get("scheduler") or {}, f"{where}: scheduler"),
        resources=build(WorkerResources, raw.get("resources") or {}, f"{where}: resources"),
        confirm=build(Confirm, raw.get("confirm") or {}, f"{where}: confirm"),
        retries=build(Retries, raw.get("retries") or {}, f"{where}: retries"),
        fixed=_parse_fixed(raw.get("fixed") or {}, method, where),
        params=(),
    )
    space = replace(space, params=_parse_params(raw.get("params") or {}, space, where))
    _check_space(space, where)
    return space


def _parse_fixed(fixed: Any, method: str, where: str) -> dict[str, Any]:
    if not isinstance(fixed, dict):
        raise UserError(f"{where}: fixed must be a mapping of setting: value")
    out = {}
    for key, value in fixed.items():
        at = f"{where}: fixed.{key}"
        if key in RUN_LEVEL_KEYS:
            raise UserError(f"{at}: set {key!r} at the top level, not under fixed")
        annotation = key_type(method, key)
        if annotation is None:
            raise UserError(f"{at}: unknown setting for method {method!r}")
        out[key] = coerce(value, annotation, at)
    return out


def _parse_params(params: Any, space: SearchSpace, where: str) -> tuple[Param, ...]:
    if not isinstance(params, dict):
        raise UserError(f"{where}: params must be a mapping of name: {{type: ..., ...}}")
    parsed: list[Param] = []
    for name, spec in params.items():
        at = f"{where}: params.{name}"
        if name in RUN_LEVEL_KEYS or name == "epochs":
            raise UserError(f"{at}: {name!r} cannot be searched (it is a run setting)")
        if name == "decode_frames":  # the search opens the datasets once, for every trial
            raise UserError(f"{at}: 'decode_frames' cannot be searched; set it under fixed")
        annotation = key_type(space.method, name)
        if annotation is None:
            raise UserError(f"{at}: unknown setting for method {space.method!r}")
        if name in space.fixed:
            raise UserError(f"{at}: also given under fixed; keep one")
        param = Param.parse(name, spec, annotation, at)
        parsed.append(replace(param, when=_parse_when(spec.get("when") or {}, space, parsed, at)))
    return tuple(parsed)


def _parse_when(when: Any, space: SearchSpace, earlier: list[Param], at: str) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise UserError(f"{at}.when: expected a mapping of setting: value (or list of values)")
    earlier_by_name = {p.name: p for p in earlier}
    out = {}
    for key, value in when.items():
        if key not in space.fixed and key not in earlier_by_name:
            raise UserError(f"{at}.when.{key}: must name a fixed setting or a parameter listed before this one")
        values = tuple(value) if isinstance(value, list) else (value,)
        param = earlier_by_name.get(key)
        for v in values:
            coerce(v, key_type(space.method, key), f"{at}.when.{key}")
            if param is not None and param.type == "categorical" and v not in param.choices:
                raise UserError(f"{at}.when.{key}: {v!r} is not one of its choices {list(param.choices)}")
        out[key] = values
    return out


def _base_type(annotation: Any) -> Any:
    if get_origin(annotation) is Literal:
        return None
    options = [a for a in get_args(annotation) if a is not type(None)]
    return options[0] if options else annotation


def _check_space(space: SearchSpace, where: str) -> None:
    """Cross-field checks, and one full trial config built from the space to catch anything else early."""
    if not space.metric.startswith("val/"):
        raise UserError(f"{where}: metric {space.metric!r} must be a validation metric (val/...); never select on test")
    if space.metric not in METRICS:
        raise UserError(f"{where}: metric {space.metric!r} is not one of {list(METRICS)}")
    for key in ("num_samples", "max_concurrent"):
        if getattr(space, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(space, key)}")
    r = space.resources
    if r.workers < 1 or r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise UserError(f"{where}: resources need workers >= 1, cpus_per_worker > 0, gpus_per_worker >= 0")
    c = space.confirm
    if c.top_k < 0 or c.seeds < 1:
        raise UserError(f"{where}: confirm needs top_k >= 0 (0: no confirmation) and seeds >= 1, "
                        f"got top_k {c.top_k}, seeds {c.seeds}")
    for key in ("trials", "workers"):
        if getattr(space.retries, key) < 0:
            raise UserError(f"{where}: retries.{key} must be at least 0, got {getattr(space.retries, key)}")
    s = space.scheduler
    if s.type == "asha" and not (1 <= s.grace_period <= space.epochs):
        raise UserError(f"{where}: scheduler.grace_period {s.grace_period} must be between 1 and epochs ({space.epochs})")
    if s.reduction_factor <= 1:
        raise UserError(f"{where}: scheduler.reduction_factor must be above 1, got {s.reduction_factor}")
    last_seed = space.seed + (space.confirm.seeds if space.confirm.top_k else 0)
    if not 0 <= space.seed <= last_seed <= MAX_SEED:
        raise UserError(f"{where}: seed {space.seed} (and the confirmation's seeds up to {last_seed}) "
                        f"must be in [0, {MAX_SEED}]")
    # One full trial config per value a parameter can take at its edges (every bound, every choice),
    # the others at their first: a bad second choice or a bad high bound fails here, not in a trial.
    example = space.constants()
    for p in space.params:
        example[p.name] = p.choices[0] if p.type == "categorical" else p.low
    TrainConfig.from_flat(example, where=f"{where}: settings")
    for p in space.params:
        for value in p.choices if p.type == "categorical" else (p.low, p.high):
            TrainConfig.from_flat({**example, p.name: value}, where=f"{where}: params.{p.name} at {value!r}: settings")
