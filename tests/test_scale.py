"""Scale in simulation: a 2-node Ray cluster on this machine (ray.cluster_utils.Cluster, 1 CPU per node).

Trials land on both nodes, and every trial reads the cached splits from the same objects: the
driver materializes them once and each trial maps the very same blocks (no copy per trial).
"""

from __future__ import annotations

import pytest
import torch

from mmray.data.manifest import load_manifest
from mmray.data.pipeline import CachedSplit, configure_data_context, load_splits


@pytest.mark.ray
def test_trials_run_on_both_nodes_and_share_the_cached_splits(tiny_synthetic, tmp_path):
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # this test needs its own (2-node) cluster
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * 1024**2, "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2, resources={"second_node": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        configure_data_context()
        datasets = load_splits(str(tiny_synthetic), load_manifest(tiny_synthetic))

        def trial(config, datasets):
            split = CachedSplit(datasets["train"])
            rows = sum(len(b.label) for b in split.batches(64, config["seed"], torch.device("cpu")))
            blocks = [ref.hex() for bundle in datasets["train"].iter_internal_ref_bundles()
                      for ref in bundle.block_refs]
            tune.report({"node": ray.get_runtime_context().get_node_id(), "rows": rows, "blocks": ",".join(blocks)})

        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(trial, datasets=datasets), {"CPU": 1}),
            param_space={"seed": tune.grid_search([0, 1, 2, 3])},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="scale", verbose=0),
        )
        results = [r.metrics for r in tuner.fit()]
        nodes = {r["node"] for r in results}
        assert len(nodes) == 2, f"trials ran on {nodes}"
        assert {r["rows"] for r in results} == {256}
        # The same block objects for every trial: the split was materialized once, not per trial.
        expected = ",".join(ref.hex() for bundle in datasets["train"].iter_internal_ref_bundles()
                            for ref in bundle.block_refs)
        assert {r["blocks"] for r in results} == {expected}
    finally:
        ray.shutdown()
        cluster.shutdown()
