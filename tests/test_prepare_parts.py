"""Parts of `mmray prepare` that need no Ray: recipes at their real sizes, split files, the
validation carve, train-time augmentation, the real-data search spaces, the dataset registry's
typed options, and bad command lines."""

from __future__ import annotations

import numpy as np
import pytest

from mmray.cli import build_parser, main
from mmray.data.pipeline import Augment
from mmray.data.prepare.audio import AudioRecipe, spectrogram
from mmray.data.prepare.plan import Clip, Plan, carve_validation, read_rows
from mmray.data.registry import datasets, get_dataset
from mmray.data.synthetic import SyntheticConfig
from mmray.errors import UserError
from mmray.tune.space import load_space
from rawdata import tone


@pytest.mark.parametrize("recipe, shape", [
    (AudioRecipe(), (1, 257, 188)),  # CREMA-D: 3 s at 22,050 Hz, hop 353
    (AudioRecipe(sample_rate=16000, seconds=10.0, hop=160, zscore=True), (1, 257, 1001)),  # AVE
    (AudioRecipe(kind="fbank", sample_rate=16000), (1, 128, 1024)),  # Kinetics-Sounds
])
def test_recipes_give_their_documented_shapes(recipe, shape):
    spec = spectrogram(tone(1, 2.5, 16000, 0), 16000, recipe)  # a CREMA-D-length clip at CREMA-D's rate
    assert recipe.shape == shape == spec.shape and spec.dtype == np.float32 and np.isfinite(spec).all()
    if recipe.zscore:
        assert abs(spec.mean()) < 1e-4 and abs(spec.std() - 1) < 1e-3


def test_split_files_with_bom_and_crlf(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf1001_DFA_ANG_XX,ANG\r\n1001_DFA_DIS_XX,DIS\r\n\r\n")
    assert read_rows(path) == [["1001_DFA_ANG_XX", "ANG"], ["1001_DFA_DIS_XX", "DIS"]]


def test_validation_is_stratified_and_seeded():
    clips = [Clip(f"c{label}-{i:02d}", label, "train") for label in range(3) for i in range(20)] + [
        Clip("t-0", 0, "test")]
    a, b, c = (carve_validation(clips, 0.25, seed) for seed in (0, 0, 1))
    val = lambda cs: sorted(x.sample_id for x in cs if x.split == "val")
    assert val(a) == val(b) != val(c)
    assert [sum(x.split == "val" and x.label == k for x in a) for k in range(3)] == [5, 5, 5]
    assert next(x for x in a if x.sample_id == "t-0").split == "test"


def test_augmentation_crops_and_flips_whole_clips_keeping_shapes():
    rng = np.random.default_rng(0)
    frame = rng.normal(size=(3, 16, 16)).astype(np.float32)
    batch = {"frames": np.broadcast_to(frame, (32, 2, 3, 16, 16)).copy(), "label": np.arange(32)}
    out = Augment({"crop_min_area": 0.5, "horizontal_flip": True})(batch)
    assert out["frames"].shape == batch["frames"].shape and out["frames"].dtype == np.float32
    assert (out["label"] == batch["label"]).all()
    np.testing.assert_array_equal(out["frames"][:, 0], out["frames"][:, 1])  # one crop per clip, all its frames
    changed = [not np.allclose(clip[0], frame) for clip in out["frames"]]
    assert sum(changed) >= 30


@pytest.mark.parametrize("name", ["cremad-gmm", "ave-gmm", "kinetics-sounds-gmm"])
def test_real_data_search_spaces(name):
    space = load_space(name)
    assert space.dataset in datasets() and space.dataset == name.removesuffix("-gmm")
    assert space.fixed["model"] == "resnet18" and space.resources.gpus_per_worker == 1
    assert space.fixed["optimizer"] == "sgd" and space.fixed["lr"] == 1e-3 and space.fixed["batch_size"] == 64


def test_bad_command_lines_fail_in_one_line(tmp_path, capsys):
    assert main(["prepare", "cremad", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    (tmp_path / "raw").mkdir()
    assert main(["prepare", "cremad", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 2
    assert "AudioWAV: no such folder" in capsys.readouterr().err
    assert main(["prepare", "kinetics-sounds", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 2
    assert "no train list" in capsys.readouterr().err
    assert main(["prepare", "cremad", "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
                 "--max-skipped", "1.5"]) == 2
    assert "--max-skipped: 1.5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_clip_listed_twice_is_kept_once_and_named():
    plan = Plan("d", ["a"], [])
    assert plan.first_listing("x") and plan.first_listing("y")
    assert not plan.first_listing("x", " (test repeat dropped)")
    assert plan.notes == ["x is listed twice; kept the first (test repeat dropped)"]


def test_every_dataset_is_one_registry_entry_with_typed_options():
    assert set(datasets()) == {"synthetic-av", "cremad", "ave", "kinetics-sounds", "manifest"}
    assert [name for name, d in datasets().items() if d.generated] == ["synthetic-av"]
    flags = lambda *argv: vars(build_parser().parse_args(["prepare", *argv, "--out", "o"]))
    cremad = get_dataset("cremad").options_from_flags(flags("cremad", "--root", "r", "--speaker-disjoint",
                                                            "--audio-recipe", "fbank", "--val-fraction", "0.2"))
    assert (cremad.root, cremad.speaker_disjoint, cremad.audio_recipe, cremad.val_fraction) == ("r", True, "fbank", 0.2)
    assert cremad.rows_per_shard == 256 and cremad.frame_encoding == "jpeg"  # the options' defaults, not the parser's
    synthetic = get_dataset("synthetic-av").options_from_flags(flags("synthetic-av", "--seed", "3", "--root", "r"))
    assert synthetic == SyntheticConfig(seed=3)  # flags that synthetic-av does not take are left out
    with pytest.raises(UserError, match=r"^--test-fraction: 1\.0 is not in \[0, 1\)$"):
        get_dataset("ave").options_from_flags(flags("ave", "--test-fraction", "1"))
    with pytest.raises(UserError, match="dataset 'nope': mmray prepare knows synthetic-av, "):
        get_dataset("nope")
