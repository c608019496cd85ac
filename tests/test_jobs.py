"""The cluster path on one machine: a Ray head started with `ray start` (dashboard and jobs API on
127.0.0.1), a search submitted to it as a Ray job, mmray's metrics read from the node's
Prometheus endpoint; and the refusal of a storage folder that a node of a multi-node cluster
cannot see."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from distributed import free_port

from mmray.errors import UserError
from mmray.train.checkpoint import BEST_JSON
from mmray.tune.storage import check_shared_storage

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def ray_head(no_ray):
    """`ray start --head` in a short temp dir; yields (temp dir, GCS port, dashboard port, metrics port)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths must stay under 107 bytes
    ports = free_port(), free_port(), free_port()
    # Export Ray metrics every second instead of every ten.
    env = {**os.environ, "RAY_metrics_report_interval_ms": "1000"}
    subprocess.run([RAY, "start", "--head", f"--temp-dir={temp}", f"--port={ports[0]}", "--num-cpus=2",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports[1]}",
                    f"--metrics-export-port={ports[2]}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        yield (temp, *ports)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _mmray_samples(metrics_port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        return [line for line in page.read().decode().splitlines() if line.startswith("ray_mmray_")]


def test_search_submitted_as_a_job_exports_its_metrics(ray_head, tiny_synthetic, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, _, dashboard_port, metrics_port = ray_head
    client = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}")
    job = client.submit_job(entrypoint=f"{sys.executable} -m mmray.tune --space joint.yaml --num-samples 2 "
                                       f"--epochs 2 --data-dir {tiny_synthetic} --storage {tmp_path / 'res'} "
                                       "--name job --address auto")
    samples: list[str] = []
    deadline = time.time() + 400
    while time.time() < deadline:
        status = client.get_job_status(job)
        # Read while trials run: a finished trial's process, and with it its gauges, may be gone.
        samples = samples or _mmray_samples(metrics_port)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            break
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "best trial" in logs
    assert (tmp_path / "res" / "job" / BEST_JSON).is_file()

    accuracy = [s for s in samples if s.startswith("ray_mmray_val_fused_acc{")]
    assert accuracy, samples
    tags = dict(re.findall(r'(\w+)="([^"]*)"', accuracy[0]))
    assert tags["experiment"] == "job" and tags["method"] == "joint" and tags["trial"]
    assert 0.0 <= float(accuracy[0].rsplit(" ", 1)[1]) <= 1.0
    names = {s.split("{")[0] for s in samples}
    assert {"ray_mmray_val_audio_acc", "ray_mmray_val_visual_acc", "ray_mmray_val_gap"} <= names


def test_multi_node_cluster_refuses_storage_a_node_cannot_see(ray_head, tmp_path):
    temp, gcs_port, _, _ = ray_head
    hidden, shared = tmp_path / "hidden", tmp_path / "shared"
    hidden.mkdir()
    # A second node on this machine, in its own mount namespace where `hidden` is an empty tmpfs:
    # to it, `hidden` is a different folder, as a local disk on another machine would be.
    start = (f"mount -t tmpfs none {hidden} && exec {RAY} start --address=127.0.0.1:{gcs_port} "
             f"--temp-dir={temp} --num-cpus=1 --disable-usage-stats")
    second = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", start],
                            capture_output=True, text=True, timeout=120)
    if second.returncode != 0 and "mount" in second.stderr:
        pytest.skip(f"no mount namespaces here: {second.stderr.strip()}")
    assert second.returncode == 0, second.stderr

    import ray

    ray.init(address=f"127.0.0.1:{gcs_port}")
    try:
        deadline = time.time() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
            time.sleep(0.5)
        assert sum(n["Alive"] for n in ray.nodes()) == 2
        check_shared_storage(shared)  # every node sees it: accepted
        assert list(shared.iterdir()) == [], "the check leaves nothing behind"
        with pytest.raises(UserError, match=rf"--storage {hidden}: this Ray cluster has several nodes and .* cannot see"):
            check_shared_storage(hidden)
    finally:
        ray.shutdown()
