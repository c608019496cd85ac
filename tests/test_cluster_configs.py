"""The cluster configs under cluster/: valid for Ray's cluster launcher (the schema Ray ships),
and holding mmray's settings: the dashboard on 127.0.0.1 only, token auth on, experiments in S3
reached through the nodes' IAM roles, datasets on storage shared by every node, the Ray and
Python versions of pyproject on every node, no credentials; the KubeRay manifest and the Grafana
dashboard checked the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from mmray.train.telemetry import PREFIX, exported, metric_name

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_CONFIGS = ["gpu.yaml", "local.yaml"]
RAY_VERSION = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
# Secrets that must never be written into a config: AWS keys, or any key/secret/password/token value.
CREDENTIAL = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|(secret|password|token)\w*\s*[:=]\s*[\"']?[\w+/-]{16,}", re.I)


def _load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def _start_commands(cfg: dict) -> list[str]:
    return cfg.get("head_start_ray_commands", []) + cfg.get("worker_start_ray_commands", [])


def test_ray_version_is_pinned_and_installed():
    assert RAY_VERSION == ray.__version__ == "2.60.0"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_is_valid_for_ray(name):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(_load(name), schema)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_dashboard_and_jobs_api_on_loopback_with_token_auth(name):
    cfg = _load(name)
    (head_start,) = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    # Ray's defaults.yaml starts the head with --dashboard-host=0.0.0.0: the config must say 127.0.0.1.
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (CLUSTER / name).read_text()
    for command in _start_commands(cfg):
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    assert "disabled" not in (CLUSTER / name).read_text()


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS + ["kuberay.yaml"])
def test_no_credentials_in_configs(name):
    assert not CREDENTIAL.search((CLUSTER / name).read_text())


def test_gpu_cluster_cpu_head_autoscaling_gpu_workers():
    cfg = _load("gpu.yaml")
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head runs the drivers, not GPU work"
    (worker,) = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert worker["min_workers"] == 0 < worker["max_workers"] <= cfg["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance type"
    assert cfg["provider"]["type"] == "aws"
    assert not {"aws_access_key_id", "aws_secret_access_key"} & set(cfg["provider"])


def test_gpu_cluster_same_ray_python_and_mmray_everywhere():
    cfg = _load("gpu.yaml")
    images = [cfg["docker"]["head_image"], cfg["docker"]["worker_image"]]
    for image in images:
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-py311"), image
    # This checkout, installed on every node with the Ray pinned in pyproject.
    assert cfg["file_mounts"]["/home/ray/mmray"] == "."
    assert any("pip install" in c and "/home/ray/mmray" in c for c in cfg["setup_commands"])
    assert ".venv" in cfg["rsync_exclude"]
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def _documented_storage(name: str) -> list[str]:
    """The --storage of the submit commands written in a config's comments."""
    return re.findall(r"--storage (\S+)", (CLUSTER / name).read_text())


@pytest.mark.parametrize("name", ["gpu.yaml", "kuberay.yaml"])
def test_experiments_go_to_s3(name):
    storages = _documented_storage(name)
    assert storages and all(s.startswith("s3://") for s in storages), storages
    assert "/mnt/mmray/results" not in (CLUSTER / name).read_text()


def test_gpu_cluster_nodes_reach_s3_through_instance_profiles():
    for node_type in _load("gpu.yaml")["available_node_types"].values():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), arn


def test_gpu_cluster_shared_dataset_storage_and_shm():
    cfg = _load("gpu.yaml")
    run_options = cfg["docker"]["run_options"]
    # The datasets' storage is mounted on every host (initialization_commands run on each node)
    # and into every container at the same path.
    assert any("mount -t nfs4" in c and "/mnt/mmray" in c for c in cfg["initialization_commands"])
    assert "--volume=/mnt/mmray:/mnt/mmray" in run_options
    assert not any("initialization_commands" in t for t in cfg["available_node_types"].values())
    (shm,) = [o for o in run_options if o.startswith("--shm-size=")]
    assert int(shm.removeprefix("--shm-size=").removesuffix("g")) >= 8
    for command in _start_commands(cfg):
        if "ray start" in command:
            assert "--metrics-export-port=8080" in command


def _kuberay() -> tuple[dict, dict, dict]:
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()))
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    (account,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    return cluster, claim, account


def test_kuberay_cluster():
    cluster, claim, account = _kuberay()
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == RAY_VERSION and spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP", "no LoadBalancer or NodePort for the dashboard"
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]

    pods = [head["template"]["spec"], gpu["template"]["spec"]]
    for pod in pods:
        (container,) = pod["containers"]
        assert f"{RAY_VERSION}-py311" in container["image"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/mnt/mmray"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert pod["serviceAccountName"] == account["metadata"]["name"], "S3 access through the account's role"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every pod reads the datasets"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    worker = gpu["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_grafana_dashboard_plots_mmray_metrics():
    board = json.loads((CLUSTER / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    names = {name for q in queries for name in re.findall(r"\bray_mmray_\w+", q)}
    for key in ("val/fused_acc", "val/audio_acc", "val/visual_acc", "val/gap", "gmm/imbalanced_frac"):
        assert f"ray_{metric_name(key)}" in names, key
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"experiment", "trial", "method"} <= variables
    for q in queries:
        assert 'experiment=~"$experiment"' in q, q


def test_metric_names_prometheus_accepts():
    assert metric_name("val/fused_acc") == f"{PREFIX}val_fused_acc"
    assert metric_name("aug/heads_audio") == "mmray_aug_heads_audio"
    assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", metric_name("gmm/means.0-x"))
    # Numbers only: no flags, paths or undefined values.
    assert exported({"val/gap": -0.25, "epoch": 3, "checkpoint_path": "/x", "stopped": True,
                     "gmm/auroc_corrupted": float("nan")}) == {"mmray_val_gap": -0.25, "mmray_epoch": 3.0}


def test_shared_mount_belongs_to_the_ray_user_not_to_everyone():
    commands = " ".join(_load("gpu.yaml")["initialization_commands"])
    assert "chmod 777" not in commands and "a+w" not in commands and "o+w" not in commands
    assert "chown 1000:100 /mnt/mmray" in commands  # the rayproject images' `ray` user and its group
    assert re.search(r"chmod 7[0-7][0-5] /mnt/mmray", commands), "no write permission for others"


SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_stop_only_the_ray_they_started_and_use_token_auth(script):
    text = script.read_text()
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"ray\"? stop", commands), "a bare `ray stop` ends every Ray on the machine"
    if re.search(r"ray\"? start", commands):
        assert "export RAY_AUTH_MODE=token" in text and "get-auth-token --generate" in text
        assert "--block" in text and 'kill "$head"' in text  # the head's own `ray start` is what is stopped
    if "ray\" up" in text:
        assert '"$venv/bin/ray" down -y "$config"' in text


def test_local_cluster_does_not_stop_other_rays_on_this_machine():
    commands = _load("local.yaml")["head_start_ray_commands"]
    assert not any(re.search(r"ray stop", c) for c in commands)
    (start,) = commands
    assert "--temp-dir=/tmp/ray-mmray-local" in start
    assert "pkill -TERM -f -- \"$temp/\"" in (ROOT / "scripts" / "ray_up_local.sh").read_text()
