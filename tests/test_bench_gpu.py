"""`mmray bench gpu` runs on CPU at tiny sizes and prints its figures."""

from __future__ import annotations

import pytest


@pytest.mark.ray
def test_bench_gpu_runs_on_cpu_at_tiny_sizes(capsys):
    import ray

    from mmray.bench import gpu

    if ray.is_initialized():
        ray.shutdown()  # the benchmark starts its own local Ray
    assert gpu.main(["--tiny", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for line in ("plain PyTorch loop", "mmray trial (1 worker)", "Ray Train (1 worker)", "delivered by Ray Data",
                 "ratio mmray / plain", "ratio delivered / consumed"):
        assert line in out
    assert "CPU (no GPU" in out
