"""Balancing methods, one module each, registered by name."""

from __future__ import annotations

from mmray.errors import UserError
from mmray.methods.base import Method, MethodContext, NoParams, TrainStep

METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"method {name!r}: unknown method (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


from mmray.methods import joint as _joint  # noqa: E402,F401  (registers joint and the unimodal baselines)
from mmray.methods import gmm as _gmm  # noqa: E402,F401
from mmray.methods import ogm as _ogm  # noqa: E402,F401
from mmray.methods import decision as _decision  # noqa: E402,F401
from mmray.methods import aug as _aug  # noqa: E402,F401
from mmray.methods import late_fusion as _late_fusion  # noqa: E402,F401
from mmray.methods import mmpareto as _mmpareto  # noqa: E402,F401
from mmray.methods import mla as _mla  # noqa: E402,F401
from mmray.methods import reconboost as _reconboost  # noqa: E402,F401

__all__ = ["METHODS", "Method", "MethodContext", "NoParams", "TrainStep", "get_method", "register_method"]
