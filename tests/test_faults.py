"""Faults and data loss without Ray: checkpoints that cannot run code, a resumed run that keeps its best score
and refuses another run's folder, result files that are never half-written, datasets prepared once."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmray.data import synthetic
from mmray.data.manifest import load_manifest
from mmray.data.shards import staged_output
from mmray.errors import UserError
from mmray.train.checkpoint import METRICS_JSON, STATE_FILE, KeepBestAndLast, load_state, save_state
from mmray.train.config import TrainConfig

MARKER = "pwned"


class RunsCode:
    """Pickled, it calls os.system on load: what a crafted state.pt could hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / MARKER
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"network": {}, "payload": RunsCode(marker)}, folder / STATE_FILE)
    with pytest.raises(UserError, match=str(folder / STATE_FILE)):
        load_state(folder)
    assert not marker.exists()


def test_a_plain_checkpoint_loads(tmp_path):
    state = {"network": {"w": torch.ones(2)}, "epoch": 3, "config": {"lr": 1e-3, "method": "joint"}}
    loaded = load_state(save_state(state, tmp_path / "ckpt"))
    assert loaded["epoch"] == 3 and loaded["config"] == state["config"] and torch.equal(loaded["network"]["w"],
                                                                                         torch.ones(2))


def _epoch(keeper: KeepBestAndLast, epoch: int, score: float) -> None:
    keeper({"epoch": epoch, "val/fused_acc": score}, {"epoch": epoch, "network": {}})


def test_a_resumed_run_keeps_its_best_score(tmp_path):
    first = KeepBestAndLast(tmp_path)
    _epoch(first, 0, 0.8)
    _epoch(first, 1, 0.5)
    resumed = KeepBestAndLast(tmp_path)  # the process restarted
    _epoch(resumed, 2, 0.6)  # worse than epoch 0: best must stay
    assert load_state(tmp_path / "best")["epoch"] == 0
    assert json.loads((tmp_path / "best" / METRICS_JSON).read_text())["val/fused_acc"] == 0.8
    assert load_state(tmp_path / "last")["epoch"] == 2


def test_train_out_of_another_run_is_refused_and_left_as_it_was(tiny_synthetic, tmp_path):
    from mmray.train.launch import run_in_process

    other = TrainConfig.from_flat({"data_dir": str(tiny_synthetic), "lr": 0.01, "width": 8})
    # Saved by an older mmray, before decode_frames existed: only the setting that truly differs is named.
    saved = {k: v for k, v in other.to_flat().items() if k != "decode_frames"}
    save_state({"config": saved, "epoch": 4}, tmp_path / "last")
    before = (tmp_path / "last" / STATE_FILE).read_bytes()
    cfg = TrainConfig.from_flat({"data_dir": str(tiny_synthetic), "lr": 0.001, "width": 8})
    with pytest.raises(UserError, match=r"other settings \(lr\)"):
        run_in_process(cfg, tmp_path, quiet=True)
    assert (tmp_path / "last" / STATE_FILE).read_bytes() == before and not (tmp_path / "best").exists()


def test_result_files_are_never_half_written(tmp_path):
    """A full disk (a file-size limit here) while rewriting best.json leaves the previous one whole."""
    (tmp_path / "best.json").write_text(json.dumps({"score": 1}))
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from mmray.tune.results import write_best
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_best({{"big": "x" * 100000}}, Path({str(tmp_path)!r}))
        except OSError:
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "refused" in out
    assert json.loads((tmp_path / "best.json").read_text()) == {"score": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best.json"]  # no temp file left behind


def test_prepare_refuses_a_partial_folder_it_did_not_make(tmp_path):
    users = tmp_path / "d.partial"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="d.partial: exists and was not made by mmray"):
        with staged_output(tmp_path / "d"):
            pass
    assert (users / "notes.txt").read_text() == "mine"


def test_prepare_resumes_over_its_own_partial_folder(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):  # a crash mid-prepare leaves mmray's marked staging folder behind
        with staged_output(out) as staging:
            (staging / "half").write_text("x")
            raise RuntimeError
    synthetic.prepare(out, synthetic.SyntheticConfig(sizes=(8, 4, 4)))
    assert load_manifest(out).dataset == "synthetic-av"
    assert not any(p.name.startswith(".mmray") for p in out.iterdir())


def _first_use(cache: str) -> str:
    os.environ["MMRAY_CACHE"] = cache
    from mmray.data.registry import resolve_data_dir

    folder, manifest = resolve_data_dir("synthetic-av", None)
    return str(folder)


def test_two_first_uses_at_once_prepare_the_dataset_once(tmp_path):
    """Two searches starting together on the built-in data: one prepares, the other waits for it."""
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        folders = pool.map(_first_use, [str(tmp_path)] * 2)
    assert folders[0] == folders[1]
    load_manifest(folders[0], verify=True)  # every shard's checksum holds
    assert not Path(folders[0]).with_name("synthetic-av.partial").exists()
