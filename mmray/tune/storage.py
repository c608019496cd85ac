"""Where a search keeps its files: a local folder, or a bucket URI with a local work folder beside it.

`--storage` is a local folder or a URI (s3://bucket/prefix, gs://..., file://...). With a URI,
Tune and Train keep trials and checkpoints there, and the driver's own files (the study: SQLite
cannot live in a bucket; the summaries; the selected checkpoint, downloaded for test evaluation)
go to a local `--workdir`, copied up to the bucket when the search ends.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mmray.errors import UserError

DEFAULT_WORKDIR = Path("~/mmray_results").expanduser()
SELECTED_CHECKPOINT = "selected_checkpoint"  # with a URI storage: the local copy of the chosen checkpoint


def is_uri(storage: str | Path) -> bool:
    return "://" in str(storage)


def parse_storage(text: str) -> Path | str:
    """`--storage` as given: a URI stays a string, anything else is a local folder."""
    return text.rstrip("/") if is_uri(text) else Path(text).expanduser().resolve()


@dataclass(frozen=True)
class RunOptions:
    storage: Path | str  # folder that holds experiments, or a URI (parse_storage)
    name: str
    address: str | None = None  # a running Ray cluster ("auto" or host:port); None starts a local one
    resume: bool = False
    workdir: Path = DEFAULT_WORKDIR  # with a URI storage: the local folder for the driver's own files

    def __post_init__(self):
        check_name(self.name)
        if self.remote:
            check_writable_folder(self.workdir, "--workdir")
        else:
            check_writable_folder(self.storage, "--storage")

    @property
    def remote(self) -> bool:
        return is_uri(self.storage)

    @property
    def experiment_dir(self) -> Path:
        """The driver's local folder: study, summaries, best.json (and Tune's trials, for a local storage)."""
        return (self.workdir if self.remote else self.storage) / self.name

    @property
    def experiment_uri(self) -> str:
        """Where Tune and Train keep the experiment's trials and checkpoints."""
        return f"{self.storage}/{self.name}" if self.remote else str(self.experiment_dir)


def fresh_name(space_name: str, now: float | None = None) -> str:
    """A new experiment's name when none is given: the space's name and the time (gmm-20261203-104512),
    so the same command can be run again."""
    return f"{space_name}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def latest_name(storage: Path | str, space_name: str) -> str:
    """The newest experiment of `space_name` in `storage` named by `fresh_name` (what `--resume` without
    `--name` continues)."""
    pattern = re.compile(re.escape(space_name) + r"-\d{8}-\d{6}")
    names = sorted(n for n in list_folder(storage) if pattern.fullmatch(n))
    if not names:
        raise UserError(f"{storage}: nothing to resume: no experiment of space {space_name!r} "
                        f"(named {space_name}-<date>-<time>); pass --name")
    return names[-1]


def list_folder(storage: Path | str) -> list[str]:
    """The names in a local folder or a bucket prefix, files and folders (none if it does not exist)."""
    if not is_uri(storage):
        return [p.name for p in Path(storage).iterdir()] if Path(storage).is_dir() else []
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        return [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))]
    except (OSError, ValueError) as e:
        raise UserError(f"{storage}: {e}") from None


def check_name(name: str) -> None:
    """An experiment name is one folder inside the storage: never a path that leads out of it."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise UserError(f"--name {name!r}: an experiment name is a single folder name (no '/', not '.' or '..')")


def check_writable_folder(folder: Path, flag: str) -> None:
    """Refuse a folder that is a file, lies under a file, or cannot be written, before anything starts.
    It need not exist yet: its nearest existing parent must then take a new file."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: exists and is not a folder")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):  # the honest test (os.access says yes to root on a 555 folder)
            pass
    except OSError as e:
        raise UserError(f"{flag} {folder}: cannot write in {existing} ({e.strerror})") from None


def storage_exists(uri: str) -> bool:
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(uri)
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (OSError, ValueError) as e:  # unknown scheme, no such bucket, no access
        raise UserError(f"{uri}: {e}") from None


def experiment_stored(options: RunOptions) -> bool:
    """Whether the experiment already exists where Tune keeps it."""
    return storage_exists(options.experiment_uri) if options.remote else options.experiment_dir.is_dir()


def nodes_missing(path: Path) -> list[str]:
    """Addresses of the cluster's live nodes on which `path` does not exist (a zero-CPU task on each)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    exists = ray.remote(num_cpus=0)(os.path.exists)
    seen = ray.get([exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(path)) for n in nodes])
    return [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]


def check_shared_storage(storage: Path) -> None:
    """On a multi-node cluster trials on every node write results and checkpoints under `storage`,
    and the driver reads them back: refuse a folder that some node cannot see."""
    import ray

    if sum(n["Alive"] for n in ray.nodes()) < 2:
        return
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".mmray-shared-check-{os.getpid()}"
    marker.touch()
    try:
        missing = nodes_missing(marker)
    finally:
        marker.unlink()
    if missing:
        raise UserError(f"--storage {storage}: this Ray cluster has several nodes and {', '.join(missing)} cannot "
                        "see this folder; pass a folder on storage shared by every node, mounted at the same path "
                        "(cluster/gpu.yaml mounts one at /mnt/mmray)")


def check_storage_reachable(options: RunOptions) -> None:
    """Every node reaches a bucket; a local folder may be on one node only."""
    if not options.remote:
        check_shared_storage(options.storage)


def local_checkpoint(checkpoint, options: RunOptions, name: str) -> Path:
    """A local folder holding `checkpoint` (a ray.train.Checkpoint): itself, or a download from the bucket
    into the workdir's `selected_checkpoint/<name>`."""
    if not options.remote:
        return Path(checkpoint.path)
    target = options.experiment_dir / SELECTED_CHECKPOINT / name
    shutil.rmtree(target, ignore_errors=True)
    return Path(checkpoint.to_directory(str(target)))


def copy_file(source: str, target: str) -> None:
    """Copy one file between a local path and a bucket URI (either way)."""
    import pyarrow.fs

    # One thread: pyarrow's threaded uploads to S3 can hang (apache/arrow#32372; Ray avoids them too).
    pyarrow.fs.copy_files(source, target, use_threads=False)


def upload_experiment(options: RunOptions) -> None:
    """With a bucket storage, copy the driver's files up: the bucket then holds the whole record."""
    if not options.remote:
        return
    copy_file(str(options.experiment_dir), options.experiment_uri)
