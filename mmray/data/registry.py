"""Which datasets mmray knows, and where their prepared shards are found (or made).

Every dataset is one entry, declared next to its code: a `prepare(out, options, force)` decorated
with `@register(name, Options)` (synthetic.py), or, for a real-data preset, its `plan` decorated
with `@preset(name, Options, defaults)` (prepare/preset.py). `Options` is a dataclass of what
preparing it takes, built and validated from plain values (`mmray prepare` flags) with mmray.config.build.

A dataset named in a search or a training run resolves to a prepared folder: the one given with
`--data-dir`, or, for datasets that mmray generates offline (`synthetic-av`), a cache folder
that is prepared on first use with default options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mmray.config import build, field_types
from mmray.errors import UserError

if TYPE_CHECKING:
    from mmray.data.manifest import Manifest


@dataclass(frozen=True)
class Dataset:
    name: str
    Options: type  # a dataclass
    prepare: Callable[..., "Manifest"]  # (out folder, options, force) -> the manifest written
    generated: bool  # made by mmray itself, so prepared on first use; real datasets need raw files

    def options_from_flags(self, flags: dict):
        """The options from `mmray prepare`'s flags (argparse's values by dest). The flags are shared by
        every dataset: those this one does not take, and those not given (None), are left out."""
        given = {k: v for k, v in flags.items() if k in field_types(self.Options) and v is not None}
        return build(self.Options, given, f"mmray prepare {self.name}", flags=True)


_DATASETS: dict[str, Dataset] = {}


def register(name: str, options: type, generated: bool = False):
    """Decorator over a dataset's prepare function: `@register("synthetic-av", SyntheticConfig, generated=True)`."""
    def add(prepare):
        _DATASETS[name] = Dataset(name, options, prepare, generated)
        return prepare
    return add


def datasets() -> dict[str, Dataset]:
    """Every dataset, by name. Importing the modules that hold the entries registers them (here, not
    at import of this module, so that naming a dataset stays cheap and the entries may import `register`)."""
    from mmray.data import synthetic  # noqa: F401
    from mmray.data.prepare import ave, cremad, csv_manifest, kinetics_sounds  # noqa: F401
    return _DATASETS


def get_dataset(name: str) -> Dataset:
    known = datasets()
    if name not in known:
        raise UserError(f"dataset {name!r}: mmray prepare knows {', '.join(known)}")
    return known[name]


def cache_dir() -> Path:
    return Path(os.environ.get("MMRAY_CACHE", Path.home() / ".cache" / "mmray")).expanduser()


def resolve_data_dir(dataset: str, data_dir: str | Path | None) -> tuple[Path, "Manifest"]:
    """Return the absolute prepared folder for `dataset` and its verified manifest."""
    from mmray.data.manifest import MANIFEST_FILE, load_manifest

    if data_dir is None:
        entry = datasets().get(dataset)
        if entry is None or not entry.generated:
            raise UserError(f"dataset {dataset!r}: give --data-dir (a folder made by `mmray prepare {dataset}`)")
        folder = cache_dir() / "datasets" / dataset
        if not (folder / MANIFEST_FILE).exists():
            prepare_once(entry, folder)
    else:
        folder = Path(data_dir).expanduser()
    folder = folder.resolve()
    manifest = load_manifest(folder)
    if manifest.dataset != dataset:
        raise UserError(f"{folder / MANIFEST_FILE}: holds dataset {manifest.dataset!r}, not {dataset!r}")
    return folder, manifest


def prepare_once(entry: Dataset, folder: Path) -> None:
    """Prepare a generated dataset on first use. Two searches starting at once would write the same folder:
    an exclusive lock beside it lets one prepare while the other waits, then uses the finished dataset."""
    import fcntl

    from mmray.data.manifest import MANIFEST_FILE

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when this process dies
        if not (folder / MANIFEST_FILE).exists():
            print(f"mmray: preparing {entry.name} into {folder} (first use)", flush=True)
            entry.prepare(folder, entry.Options(), force=False)
