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
