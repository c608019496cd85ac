"""Datasets: preparing shards, the manifest that describes them, and Ray Data pipelines over them."""
