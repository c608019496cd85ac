"""Shared fixtures. Ray runs once per test session, on 2 CPUs, with its files under pytest's tmp dir."""

from __future__ import annotations

import os

import pytest

# Tests only: no token auth, no usage stats, no progress-bar flood, and patience with a busy 2-core box.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
os.environ["RAY_health_check_failure_threshold"] = "30"


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A small synthetic-av dataset (256 / 64 / 64 clips), prepared once."""
    from mmray.data import synthetic

    folder = tmp_path_factory.mktemp("data") / "synthetic-av"
    synthetic.prepare(folder, synthetic.SyntheticConfig(sizes=(256, 64, 64)))
    return folder


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A smaller synthetic-av (128 / 32 / 32 clips) for method unit tests, prepared once."""
    from mmray.data import synthetic

    folder = tmp_path_factory.mktemp("small") / "synthetic-av"
    synthetic.prepare(folder, synthetic.SyntheticConfig(sizes=(128, 32, 32)))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a busy 2-core machine a second intra-op thread makes each step many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def _ray_temp(tmp_path_factory):
    return tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must stay under 107 bytes


@pytest.fixture
def ray_local(_ray_temp):
    """A real local Ray on 2 CPUs, started on first use and kept for the session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 object_store_memory=300 * 1024**2, _temp_dir=str(_ray_temp))
    yield ray


@pytest.fixture
def no_ray():
    """For tests that start their own Ray in a subprocess: never two Ray instances at once."""
    import ray

    ray.shutdown()


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
