"""The search-quality benchmark's replay of TPE + ASHA on known curves (no Ray instance, no training)."""

from __future__ import annotations

import itertools

import optuna

from mmray.bench.search_quality import GRID, replay

CONFIGS = list(itertools.product(*GRID.values()))


def test_replay_spends_its_budget_and_finds_what_it_draws():
    # Every configuration has its own constant curve; the best one is the last.
    curves = {config: [0.1 + 0.05 * i] * 6 for i, config in enumerate(CONFIGS)}
    best = max(c[0] for c in curves.values())
    # A budget of one epoch: the value of the first configuration TPE draws with that seed.
    first = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3)).ask(
        {name: optuna.distributions.CategoricalDistribution(values) for name, values in GRID.items()})
    assert replay(curves, 3, budget=1, epochs=6, trials=12, grace_period=1, reduction_factor=3) == \
        curves[tuple(first.params[name] for name in GRID)][0]
    # Unlimited epochs and many trials: the best configuration is drawn at some point.
    assert replay(curves, 3, budget=10**6, epochs=6, trials=300, grace_period=1, reduction_factor=3) == best
