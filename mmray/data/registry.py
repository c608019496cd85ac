"""Which datasets mmray knows, and where their prepared shards are found (or made).

A dataset named in a search or a training run resolves to a prepared folder: the one given with
`--data-dir`, or, for datasets that can be generated offline (`synthetic-av`), a cache folder
that is prepared on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmray.data import synthetic
from mmray.data.manifest import MANIFEST_FILE, Manifest, load_manifest
from mmray.errors import UserError

# Datasets that mmray can generate itself; the real datasets are prepared from raw files by the user.
GENERATED = {synthetic.NAME: synthetic.prepare}


def cache_dir() -> Path:
    return Path(os.environ.get("MMRAY_CACHE", Path.home() / ".cache" / "mmray")).expanduser()


def resolve_data_dir(dataset: str, data_dir: str | Path | None) -> tuple[Path, Manifest]:
    """Return the absolute prepared folder for `dataset` and its verified manifest."""
    if data_dir is None:
        if dataset not in GENERATED:
            raise UserError(f"dataset {dataset!r}: give --data-dir (a folder made by `mmray prepare {dataset}`)")
        folder = cache_dir() / "datasets" / dataset
        if not (folder / MANIFEST_FILE).exists():
            print(f"mmray: preparing {dataset} into {folder} (first use)", flush=True)
            GENERATED[dataset](folder, force=False)
    else:
        folder = Path(data_dir).expanduser()
    folder = folder.resolve()
    manifest = load_manifest(folder)
    if manifest.dataset != dataset:
        raise UserError(f"{folder / MANIFEST_FILE}: holds dataset {manifest.dataset!r}, not {dataset!r}")
    return folder, manifest
