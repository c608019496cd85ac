"""Raw-dataset fixtures in the real layouts of docs/datasets.md: real WAV files (stdlib `wave`), real
JPEG frame folders, real MP4 (MPEG-4 + AAC) and FLV (FLV1 + MP3) videos with an audio track
(PyAV), and split files in their real formats (CREMA-D's lists with a UTF-8 BOM and CRLF).

Each builder plants bad clips among the good ones and returns what the manifest must say:
{"skipped": {sample_id: reason fragment}, "classes": [...], ...}.
"""

from __future__ import annotations

import io
import wave
import zlib
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from mmray.bench.prepare import write_frames, write_wav  # the benchmark writes the same layouts

GARBAGE = bytes(range(256)) * 8  # not a WAV, JPEG or MP4


def tone(label: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    """A class-specific tone with a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * (300 + 150 * label) * t) + 0.05 * rng.normal(size=t.shape)).astype(np.float32)


def picture(label: int, size: int, seed: int) -> np.ndarray:
    """A class-coloured (size, size, 3) uint8 image with noise."""
    rng = np.random.default_rng(seed)
    colour = np.array([(label * 67) % 256, (label * 131 + 80) % 256, (label * 29 + 160) % 256], np.float32)
    return np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
        return data.astype(np.float32) / 32768.0, f.getframerate()


def write_video(path: Path, images: list[np.ndarray], fps: int, samples: np.ndarray, rate: int) -> None:
    """An MP4 (MPEG-4 video, AAC audio) or, for a .flv path, an FLV (FLV1 video, MP3 audio)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flv = path.suffix == ".flv"
    with av.open(str(path), "w", format="flv" if flv else "mp4") as out:
        video = out.add_stream("flv" if flv else "mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        audio = out.add_stream("mp3" if flv else "aac", rate=rate)
        audio.layout = "mono"
        for image in images:
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        step = audio.codec_context.frame_size or 1024
        for start in range(0, len(pcm), step):
            frame = av.AudioFrame.from_ndarray(pcm[None, start:start + step], format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode())


def read_track(path: Path) -> tuple[np.ndarray, int]:
    """A video's audio track as mono float32, decoded independently of mmray."""
    with av.open(str(path)) as f:
        frames = list(f.decode(audio=0))
    return np.concatenate([fr.to_ndarray().mean(axis=0) for fr in frames]).astype(np.float32), frames[0].sample_rate


CREMAD_EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def make_cremad(root: Path, actors=(1001, 1002, 1003), sentences=("DFA", "IEO"), seconds=1.0,
                video: str = "frames", lists: bool = True, image=48) -> dict:
    """CREMA-D: AudioWAV/ at 16 kHz, Image-01-FPS/<name>/ (3 JPEGs at 1 fps) or VideoFlash/<name>.flv,
    and (with `lists`) train.csv / test.csv with a BOM and CRLF line ends."""
    rows = []
    for a in actors:
        for s in sentences:
            for e, emotion in enumerate(CREMAD_EMOTIONS):
                name = f"{a}_{s}_{emotion}_XX"
                seed = zlib.crc32(name.encode())
                samples = tone(e, seconds, 16000, seed)
                write_wav(root / "AudioWAV" / f"{name}.wav", samples, 16000)
                images = [picture(e, image, seed + k) for k in range(3)]
                if video == "frames":
                    write_frames(root / "Image-01-FPS" / name, images)
                else:
                    write_video(root / "VideoFlash" / f"{name}.flv", images * 4, 4, samples, 22050)  # 3 s at 4 fps
                rows.append((name, emotion))
    corrupt_wav, corrupt_frames, short = rows[0][0], rows[1][0], rows[2][0]
    (root / "AudioWAV" / f"{corrupt_wav}.wav").write_bytes(GARBAGE)
    if video == "frames":
        for jpg in (root / "Image-01-FPS" / corrupt_frames).iterdir():
            jpg.write_bytes(GARBAGE[:300])
    else:
        (root / "VideoFlash" / f"{corrupt_frames}.flv").write_bytes(GARBAGE)
    write_wav(root / "AudioWAV" / f"{short}.wav", tone(2, 0.1, 16000, 0), 16000)
    skipped = {corrupt_wav: "unreadable audio", corrupt_frames: "unreadable frames", short: "too short"}
    missing = f"{actors[0]}_ITS_ANG_XX"  # listed, never recorded
    mislabelled = f"{actors[-1]}_{sentences[0]}_HAP_XX"
    if lists:
        test = [r for r in rows if r[0].startswith(str(actors[-1])) and sentences[-1] in r[0]]
        train = [r for r in rows if r not in test] + [(missing, "ANG")]
        train = [(n, "SAD" if n == mislabelled else label) for n, label in train]
        for name, part in (("train.csv", train), ("test.csv", test)):
            text = "".join(f"{n},{label}\r\n" for n, label in part)
            (root / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        skipped |= {missing: "missing file", mislabelled: "mislabelled"}
    return {"skipped": skipped, "classes": CREMAD_EMOTIONS, "names": [r[0] for r in rows],
            "lists": lists}


AVE_CATEGORIES = ["Church bell", "Male speech, man speaking", "Dog", "Frying (food)"]


def make_ave(root: Path, per_class: int = 6, seconds: float = 2.0, image: int = 48) -> dict:
    """AVE: AVE/<id>.mp4 (4 fps, AAC at 16 kHz), Annotations.txt with its header, and
    trainSet/valSet/testSet.txt (`Category&YouTubeID&Quality&StartSec&EndSec`), with a repeated ID."""
    entries = []
    for c, category in enumerate(AVE_CATEGORIES):
        for k in range(per_class):
            vid = f"v{c}{k}x{'ab'[k % 2]}-{c * 7 + k:04d}"
            seed = c * 100 + k
            images = [picture(c, image, seed + f) for f in range(int(seconds * 4))]
            write_video(root / "AVE" / f"{vid}.mp4", images, 4, tone(c, seconds, 16000, seed), 16000)
            split = ("test", "val", "train", "train", "train", "train")[k % 6]
            entries.append((split, category, vid))
    corrupt, short = entries[2][2], entries[3][2]
    (root / "AVE" / f"{corrupt}.mp4").write_bytes(GARBAGE)
    write_video(root / "AVE" / f"{short}.mp4", [picture(0, image, 1)], 4, tone(0, 0.2, 16000, 1), 16000)
    missing = "zzMissing000"
    entries.append(("train", AVE_CATEGORIES[1], missing))
    repeated = entries[4]
    entries.append(("train", AVE_CATEGORIES[2], repeated[2]))  # a second event in the same video
    line = lambda category, vid: f"{category}&{vid}&good&0&{int(seconds)}\n"
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&StartTime&EndTime\n"
                                          + "".join(line(c, v) for _, c, v in entries))
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / name).write_text("".join(line(c, v) for s, c, v in entries if s == split))
    return {"skipped": {corrupt: "unreadable audio", short: "too short", missing: "missing file"},
            "classes": sorted(AVE_CATEGORIES), "repeated": repeated[2]}


KS_CLASSES = ["playing bagpipes", "playing drums", "dog barking", "chainsaw"]


def make_kinetics_sounds(root: Path, per_class: int = 7, seconds: float = 1.5, image: int = 48) -> dict:
    """Kinetics-Sounds: <label>/<clip_id>.mp4 class folders, my_train.txt / my_test.txt with rows
    `<clip_id>,<duration>,<label>`, and a class-list file; one listed clip's class is not in it."""
    train, test = [], []
    for c, label in enumerate(KS_CLASSES + ["tapping pen"]):
        for k in range(per_class if c < len(KS_CLASSES) else 1):
            clip = f"ks{c:02d}_{k:06d}"
            seed = 1000 + c * 10 + k
            images = [picture(c, image, seed + f) for f in range(int(seconds * 4))]
            write_video(root / "videos" / label / f"{clip}.mp4", images, 4, tone(c, seconds, 16000, seed), 16000)
            (test if k == 0 else train).append((clip, seconds, label))
    corrupt, short = train[0][0], train[1][0]
    (root / "videos" / KS_CLASSES[0] / f"{corrupt}.mp4").write_bytes(GARBAGE)
    write_video(root / "videos" / KS_CLASSES[0] / f"{short}.mp4", [picture(0, image, 2)], 4, tone(0, 0.2, 16000, 2), 16000)
    train.append(("ks99_missing", 10.0, KS_CLASSES[1]))
    for name, rows in (("my_train.txt", train), ("my_test.txt", test)):
        (root / name).write_text("".join(f"{c},{d},{label}\n" for c, d, label in rows))
    (root / "classes.txt").write_text("\n".join(KS_CLASSES) + "\n")
    out_of_list = [c for c, _, label in train + test if label == "tapping pen"]
    return {"skipped": {corrupt: "unreadable audio", short: "too short", "ks99_missing": "missing file",
                        **{c: "not in the class list" for c in out_of_list}},
            "classes": KS_CLASSES}


def make_csv_manifest(root: Path, per_class: int = 8, seconds: float = 1.0, image: int = 48) -> dict:
    """The generic CSV: WAV + frame folder for some clips, an MP4 (its own audio track) for others;
    train and test rows only (val is carved)."""
    labels = ["low", "mid", "high"]
    lines = ["sample_id,label,split,audio_path,video_path,frames_dir"]
    for c, label in enumerate(labels):
        for k in range(per_class):
            sid, seed = f"{label}-{k}", 500 + c * 10 + k
            split = "test" if k < 2 else "train"
            if k % 2:
                write_video(root / "clips" / f"{sid}.mp4", [picture(c, image, seed + f) for f in range(4)], 4,
                            tone(c, seconds, 16000, seed), 16000)
                lines.append(f"{sid},{label},{split},,clips/{sid}.mp4,")
            else:
                write_wav(root / "audio" / f"{sid}.wav", tone(c, seconds, 16000, seed), 16000)
                write_frames(root / "frames" / sid, [picture(c, image, seed + f) for f in range(2)])
                lines.append(f"{sid},{label},{split},audio/{sid}.wav,,frames/{sid}")
    (root / "audio" / "low-2.wav").write_bytes(GARBAGE)
    lines.append("gone-1,mid,train,audio/gone-1.wav,,frames/gone-1")
    lines.append("odd-1,purple,train,audio/low-4.wav,,frames/low-4")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(labels) + "\n")
    return {"skipped": {"low-2": "unreadable audio", "gone-1": "missing file", "odd-1": "not in the class list"},
            "classes": labels}


# ---- helpers the prepare tests share ----

def prepare(dataset: str, root: Path, out: Path, *options: str):
    """`mmray prepare <dataset> --root root --out out options...`, parsed by the real CLI, run in this
    process on the test session's Ray."""
    from mmray.cli import build_parser, prepare_dataset

    args = build_parser().parse_args(["prepare", dataset, "--root", str(root), "--out", str(out), "--quiet", *options])
    return prepare_dataset(args)


def stored_rows(out: Path, manifest) -> dict[str, dict]:
    """sample_id -> the stored row (with its split), over all splits."""
    rows = {}
    for split in manifest.shards:
        table = pq.read_table(manifest.shard_paths(out, split)).to_pylist()
        rows.update({r["sample_id"]: {**r, "split": split} for r in table})
    return rows


def check_prepared(out: Path, expected: dict, image_size: int) -> tuple:
    """What every preset's manifest and shards must satisfy; returns (manifest, rows)."""
    from mmray.data.manifest import load_manifest

    manifest = load_manifest(out)  # verifies every shard's size, rows and checksum
    assert manifest.class_names == expected["classes"]
    reasons = {s["sample_id"]: s["reason"] for s in manifest.skipped}
    assert set(reasons) == set(expected["skipped"])
    for sample_id, fragment in expected["skipped"].items():
        assert fragment in reasons[sample_id], (sample_id, reasons[sample_id])
    rows = stored_rows(out, manifest)
    assert not set(rows) & set(reasons)
    counts = manifest.preprocessing["counts"]
    for split in ("train", "val", "test"):
        assert counts[split]["prepared"] == manifest.split_size(split) > 0
        assert counts[split]["listed"] == counts[split]["prepared"] + counts[split]["skipped"]
        indices = [r["index"] for r in rows.values() if r["split"] == split]
        assert len(set(indices)) == len(indices)
    for row in rows.values():
        assert 0 <= row["label"] < len(manifest.class_names)
        assert len(row["audio"]) == 2 * int(np.prod(manifest.audio.shape))  # float16
        assert len(row["frames"]) == manifest.frames.count
        for blob in row["frames"]:
            assert np.asarray(Image.open(io.BytesIO(blob))).shape == (image_size, image_size, 3)
    return manifest, rows


def stored_audio(row: dict, manifest) -> np.ndarray:
    return np.frombuffer(row["audio"], dtype="<f2").reshape(manifest.audio.shape)


def train_one_epoch(out: Path, dataset: str, run_dir: Path) -> dict:
    """One epoch of joint training with ResNet-18 through the Ray Data path (needs `ray_local`)."""
    from mmray.train.checkpoint import STATE_FILE
    from mmray.train.config import TrainConfig
    from mmray.train.launch import run_in_process

    cfg = TrainConfig.from_flat({"method": "joint", "dataset": dataset, "data_dir": str(out), "model": "resnet18",
                                 "epochs": 1, "batch_size": 8})
    metrics, best = run_in_process(cfg, run_dir, quiet=True)
    assert (best / STATE_FILE).is_file()
    assert metrics["epoch"] == 1 and np.isfinite(metrics["train/loss"]) and 0 <= metrics["val/fused_acc"] <= 1
    return metrics
