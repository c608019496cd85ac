"""TrainConfig: everything one training run needs, validated from a flat dict.

Tune configs, YAML `fixed:` blocks and CLI flags are all flat dicts like
{"method": "gmm", "lr": 0.001, "warmup_epochs": 3}. The general keys are TrainConfig fields; the
rest must be hyperparameters of the named method (its `Params` dataclass).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from mmray.config import build, field_types
from mmray.errors import UserError
from mmray.methods import get_method
from mmray.models import BACKBONES

# Keys of a flat config that are not training settings: the launcher's own.
RUN_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker")
MAX_WIDTH = 1024  # the small CNN's width: far above anything useful, far below what exhausts memory
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds


@dataclass
class TrainConfig:
    method: str = "joint"
    dataset: str = "synthetic-av"
    data_dir: str | None = None
    model: str = "small-cnn"
    fusion: Literal["concat", "sum"] = "concat"
    width: int = 32  # channel width of the small CNN encoders
    audio_grid: int = 1  # small-cnn: side of the audio map kept before the projection (1: global pooling)
    epochs: int = 8
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    lr_schedule: Literal["constant", "cosine"] = "constant"
    seed: int = 0
    shuffle_buffer: int = 1024
    # GPU speed settings, no effect on what is computed beyond rounding: bf16 autocast of the forward
    # pass and loss (on a GPU; on CPU the run stays fp32), and channels-last convolutions.
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    # Where JPEG frames are decoded: "host" in Ray Data's CPU tasks (PIL), "device" by the training worker,
    # one batched decode_jpeg call per batch (nvJPEG on a GPU), train augmentation then there too.
    decode_frames: Literal["host", "device"] = "host"
    # Precise BatchNorm: before each validation pass the BatchNorm statistics are recomputed from this
    # many of the epoch's last training batches under the final weights (0: keep the running averages,
    # which lag the weights at a high learning rate and make mid-training validation misleading).
    precise_bn_batches: int = 8
    method_params: Any = field(default=None)  # the method's Params dataclass, filled by from_flat

    @classmethod
    def general_keys(cls) -> dict[str, Any]:
        return {k: t for k, t in field_types(cls).items() if k != "method_params"}

    @classmethod
    def from_flat(cls, values: dict, where: str = "config") -> "TrainConfig":
        values = {k: v for k, v in values.items() if k not in RUN_KEYS}
        method_cls = get_method(values.get("method", cls.method))
        general = cls.general_keys()
        method_values = {k: v for k, v in values.items() if k not in general}
        method_keys = field_types(method_cls.Params)
        for key in method_values:
            if key not in method_keys:
                raise UserError(f"{where}.{key}: unknown setting: neither a training setting ({', '.join(general)}) "
                                f"nor a hyperparameter of method {method_cls.name!r} ({', '.join(method_keys) or 'none'})")
        cfg = build(cls, {k: v for k, v in values.items() if k in general}, where)
        cfg.method_params = build(method_cls.Params, method_values, where)
        for name in ("epochs", "batch_size", "width", "shuffle_buffer", "audio_grid"):
            if getattr(cfg, name) < 1:
                raise UserError(f"{where}.{name}: {getattr(cfg, name)} must be at least 1")
        for ok, key, rule in [
            (cfg.width <= MAX_WIDTH, "width", f"must be at most {MAX_WIDTH}"),
            (cfg.lr > 0, "lr", "must be positive"),
            (cfg.weight_decay >= 0, "weight_decay", "must not be negative"),
            (cfg.precise_bn_batches >= 0, "precise_bn_batches", "must not be negative"),
            (0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)"),
            (0 <= cfg.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]"),
            (cfg.model in BACKBONES, "model", f"is not a known model ({', '.join(sorted(BACKBONES))})"),
        ]:
            if not ok:
                raise UserError(f"{where}.{key}: {getattr(cfg, key)!r} {rule}")
        try:
            method_cls.check_config(cfg.method_params, cfg.epochs)
        except UserError as e:
            raise UserError(f"{where}.{e}") from None
        return cfg

    def to_flat(self) -> dict:
        flat = {k: getattr(self, k) for k in self.general_keys()}
        flat.update(dataclasses.asdict(self.method_params))
        return flat


def key_type(method: str, key: str) -> Any | None:
    """The annotation of a flat-config key for `method`, or None if the key is unknown."""
    types = TrainConfig.general_keys() | field_types(get_method(method).Params)
    return types.get(key)
