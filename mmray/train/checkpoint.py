"""A checkpoint is a folder holding `state.pt` (network, optimizer, method state, epoch, config)
and the method's artifacts (diagnostic files) beside it."""

from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "state.pt"


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
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


class KeepBestAndLast:
    """A `report` for runs outside Tune: saves every epoch to `out/last`, the best on `metric` to `out/best`."""

    def __init__(self, out_dir: str | Path, metric: str = "val/fused_acc", echo: bool = False):
        self.out_dir = Path(out_dir)
        self.metric = metric
        self.echo = echo
        self.best_score = float("-inf")

    def __call__(self, metrics: dict, state: dict) -> None:
        if self.echo:
            print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
                  flush=True)
        save_state(state, self.out_dir / "last")
        if metrics[self.metric] > self.best_score:
            self.best_score = metrics[self.metric]
            save_state(state, self.out_dir / "best")
