"""Frames: read from a folder of images or decoded from a video at a chosen rate, then resized.

A clip keeps `count` frames spread evenly over the frames available (at `fps` for a video, all
of a folder's images in numeric order); a clip with fewer repeats some. Frames are resized to a
square `size` x `size` (as `Resize((224, 224))` does in the published loaders).
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def spread(available: int, count: int) -> list[int]:
    """`count` indices spread evenly over `available` items (centres of equal parts)."""
    return [min(available - 1, int((k + 0.5) * available / count)) for k in range(count)]


def resize(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _numeric_key(path: Path):
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def frames_from_folder(folder: str | Path, count: int, size: int) -> np.ndarray:
    """(count, size, size, 3) uint8 from the images in `folder`."""
    files = sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_numeric_key)
    if not files:
        raise ValueError("no frames")
    out = []
    for i in spread(len(files), count):
        with Image.open(files[i]) as image:
            out.append(resize(image, size))
    return np.stack(out)


def frames_from_video(path: str | Path, count: int, size: int, fps: float) -> np.ndarray:
    """(count, size, size, 3) uint8: the video sampled at `fps` (the first frame at or after k / fps)."""
    picked = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_time:
                continue
            picked.append(frame)
            next_time = len(picked) / fps
    if not picked:
        raise ValueError("no video frames")
    return np.stack([resize(picked[i].to_image(), size) for i in spread(len(picked), count)])
