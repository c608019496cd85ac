"""Checkpoints, in one place: writing and reading them, finding one, and rebuilding a saved run.

A checkpoint is a folder holding `state.pt` (network, optimizer, method state, epoch, config) and
the method's artifacts (diagnostic files) beside it. A search's experiment folder names the
checkpoint it selected in `best.json`; `find_checkpoint` accepts either folder.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from mmray.data.manifest import Manifest, load_manifest
from mmray.data.pipeline import RayDataSource, configure_data_context, open_split
from mmray.errors import UserError
from mmray.files import write_atomic
from mmray.methods import Method
from mmray.train.config import TrainConfig
from mmray.train.loop import Network, build_method_and_network, evaluate
from mmray.world import World

STATE_FILE = "state.pt"
BEST_JSON = "best.json"  # written by a search into its experiment folder
METRICS_JSON = "metrics.json"  # KeepBestAndLast: the metrics of the epoch saved beside it


def save_state(state: dict, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    for name, content in (state.pop("artifacts", None) or {}).items():
        (folder / name).write_bytes(content)
    tmp = folder / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_FILE)  # never leave a half-written state behind
    return folder


def load_state(folder: str | Path) -> dict:
    """A saved state: tensors and plain types only. `weights_only` refuses any other pickled object,
    so a crafted state.pt (in a folder or a bucket) cannot run code when it is loaded."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: not a plain mmray checkpoint (holds something other than tensors and plain "
                        f"values), refused: {reason}") from None


def find_checkpoint(run: str | Path) -> Path:
    """A checkpoint folder, or a search's experiment folder (its selected checkpoint)."""
    run = Path(run).expanduser()
    if (run / STATE_FILE).is_file():
        return run
    if (run / BEST_JSON).is_file():
        try:
            checkpoint = Path(json.loads((run / BEST_JSON).read_text())["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError) as e:  # truncated, not JSON, or no "checkpoint"
            raise UserError(f"{run / BEST_JSON}: unreadable ({type(e).__name__}: {e})") from None
        if not (checkpoint / STATE_FILE).is_file():
            raise UserError(f"{run / BEST_JSON}: names {checkpoint}, which holds no {STATE_FILE}")
        return checkpoint
    raise UserError(f"{run}: neither a checkpoint (no {STATE_FILE}) nor an experiment folder (no {BEST_JSON})")


@dataclass
class SavedRun:
    """A checkpoint rebuilt on CPU: its config and state, the method, the network (eval mode) with the
    saved weights, and a data source over the requested splits (read from the shards, in order)."""
    folder: Path
    state: dict
    cfg: TrainConfig
    manifest: Manifest
    method: Method
    network: Network
    data: RayDataSource

    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.network, self.method, self.data.eval_batches(split), self.manifest.num_classes, split)


def open_checkpoint(folder: str | Path, splits: tuple[str, ...], verify: bool = False) -> SavedRun:
    configure_data_context()
    state = load_state(folder)
    cfg = TrainConfig.from_flat(state["config"])
    manifest = load_manifest(cfg.data_dir, verify=verify)
    device = torch.device("cpu")
    data = RayDataSource({s: open_split(cfg.data_dir, manifest, s) for s in splits}, cfg.batch_size, cfg.seed, device)
    method, network = build_method_and_network(cfg, manifest, data, World.current(device))
    network.load_state_dict(state["network"])
    method.load_state_dict(state["method"])
    return SavedRun(Path(folder), state, cfg, manifest, method, network.eval(), data)


def evaluate_checkpoint(folder: str | Path, split: str) -> dict[str, float]:
    """Metrics of a saved checkpoint on one split (run once, after selection on validation)."""
    return open_checkpoint(folder, (split,)).evaluate(split)


class KeepBestAndLast:
    """A `report` for runs outside Tune: saves every epoch to `out/last`, the best on `metric` to `out/best`,
    each with its metrics beside it; a resumed run starts from the best score saved in `out/best`."""

    def __init__(self, out_dir: str | Path, metric: str = "val/fused_acc", echo: bool = False):
        self.out_dir = Path(out_dir)
        self.metric = metric
        self.echo = echo
        saved = self.out_dir / "best" / METRICS_JSON
        self.best_score = json.loads(saved.read_text())[metric] if saved.is_file() else float("-inf")

    def __call__(self, metrics: dict, state: dict) -> None:
        if self.echo:
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
                  flush=True)
        self._save(metrics, state, "last")
        if metrics[self.metric] > self.best_score:
            self.best_score = metrics[self.metric]
            self._save(metrics, state, "best")

    def _save(self, metrics: dict, state: dict, name: str) -> None:
        folder = save_state(state, self.out_dir / name)
        write_atomic(folder / METRICS_JSON, json.dumps(metrics, default=float))
