"""`mmray bench prepare`: how fast raw clips become shards, and whether streaming them keeps up.

Generates CREMA-D-sized clips in CREMA-D's layout (2.5 s WAV at 16 kHz, 3 JPEG frames of 480 x 360
in Image-01-FPS/<name>/), then
- preprocessing: times `mmray prepare cremad` with its default recipe (257 x 188 log-STFT,
  3 frames of 224 as JPEG) on `--workers` CPUs: clips per second, Ray start-up excluded;
- streaming: runs `mmray bench data` on the result with ResNet-18: samples per second that Ray
  Data delivers to a training worker (decode, and for the cached path the train-time crop/flip)
  against samples per second that the ResNet-18 training step consumes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit mono PCM, as CREMA-D ships."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_frames(folder: Path, images: list[np.ndarray]) -> None:
    """A frame folder as OGM-GE's extraction writes it: 000001.jpg, 000002.jpg, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images, 1):
        Image.fromarray(image).save(folder / f"{i:06d}.jpg", quality=90)


def make_cremad_clips(root: Path, clips: int, seconds: float = 2.5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    for i in range(clips):
        emotion = i % len(EMOTIONS)
        name = f"{1001 + i // 60}_S{i % 60 // 6:02d}_{EMOTIONS[emotion]}_XX"
        write_wav(root / "AudioWAV" / f"{name}.wav",
                  0.3 * np.sin(2 * np.pi * (200 + 50 * emotion) * t) + 0.05 * rng.normal(size=t.shape), 16000)
        base = rng.integers(0, 256, size=(45, 60, 3)).astype(np.uint8)  # smooth content, like a face video
        frames = [np.asarray(Image.fromarray(np.roll(base, k, axis=1)).resize((480, 360), Image.BILINEAR))
                  for k in range(3)]
        write_frames(root / "Image-01-FPS" / name, frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmray bench prepare", description=__doc__)
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2, help="CPUs for preprocessing (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="streaming epochs timed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--folder", help="work folder (default: a temp folder, removed afterwards)")
    args = parser.parse_args(argv)

    import ray

    from mmray.bench import data as bench_data
    from mmray.cli import build_parser, prepare_dataset

    work = Path(args.folder or tempfile.mkdtemp(prefix="mmray-bench-prepare-"))
    raw, out = work / "CREMA-D", work / "cremad"
    try:
        start = time.perf_counter()
        make_cremad_clips(raw, args.clips)
        print(f"generated {args.clips} CREMA-D-sized clips in {time.perf_counter() - start:.1f} s", flush=True)

        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_start = time.perf_counter() - start
        prepare_args = build_parser().parse_args(["prepare", "cremad", "--root", str(raw), "--out", str(out),
                                                  "--rows-per-shard", "32", "--quiet"])
        start = time.perf_counter()
        manifest = prepare_dataset(prepare_args)
        seconds = time.perf_counter() - start
        ray.shutdown()
        load = os.getloadavg()
        print(f"\nmmray bench prepare: {args.clips} clips, {args.workers} CPUs, audio {manifest.audio.shape} "
              f"{manifest.audio.dtype}, {manifest.frames.count} frames of {manifest.frames.height} (JPEG)")
        print(f"  preprocessing  {seconds:7.1f} s  {args.clips / seconds:7.1f} clips/s  (Ray start-up {ray_start:.1f} s "
              f"not included; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})", flush=True)
        bench_data.main(["--dataset", "cremad", "--data-dir", str(out), "--epochs", str(args.epochs),
                         "--set", "model=resnet18", "--set", f"batch_size={args.batch_size}"])
        print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if args.folder is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0
