"""Frames: read from a folder of images or decoded from a video at a chosen rate, then resized.

A clip keeps `count` frames spread evenly over the frames available (at `fps` for a video, all
of a folder's images in numeric order); a clip with fewer repeats some. Frames are resized to a
square `size` x `size` (as `Resize((224, 224))` does in the published loaders). A video's frames
are resized as they are decoded, so a long video takes no more memory than a short one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
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
    """(count, size, size, 3) uint8: the video sampled at `fps` (the first frame at or after k / fps).

    Memory stays at `count` frames of `size` x `size` (and a time per packet) however long the
    video: a first pass reads only the packets' times to learn how many frames the sampling yields,
    so the frames to keep are known before decoding, and the decoding pass resizes each one as it
    comes and drops the rest. Where the packets carry no times, or the decoder does not yield the
    frames they promise (it drops some, or its times differ), the decoding pass's own count is
    used for a second one.
    """
    promised = _sampled_packets(path, fps)
    kept, sampled = _decode_sampled(path, fps, set(spread(promised, count)) if promised else set(), size)
    if not sampled:
        raise ValueError("no video frames")
    if sampled != promised:
        kept, _ = _decode_sampled(path, fps, set(spread(sampled, count)), size)
    return np.stack([kept[k] for k in spread(sampled, count)])


def _sampled(items: Iterable, fps: float, time: Callable = lambda item: item) -> Iterator:
    """The items that sampling at `fps` keeps: the first at or after each k / fps in turn (none without a time)."""
    next_time, kept = 0.0, 0
    for item in items:
        t = time(item)
        if t is None or t + 1e-6 < next_time:
            continue
        yield item
        kept += 1
        next_time = kept / fps


def _video_stream(container):
    if not container.streams.video:
        raise ValueError("no video stream")
    return container.streams.video[0]


def _sampled_packets(path: str | Path, fps: float) -> int | None:
    """How many frames sampling at `fps` keeps, from the packets' times alone (no decoding); None
    where a packet has no time."""
    times = []
    with av.open(str(path)) as container:
        for packet in container.demux(_video_stream(container)):
            if packet.size == 0:  # the empty packet that ends the stream
                continue
            if packet.pts is None:
                return None
            times.append(float(packet.pts * packet.time_base))
    return sum(1 for _ in _sampled(sorted(times), fps))  # packets come in decoding order


def _decode_sampled(path: str | Path, fps: float, wanted: set[int], size: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode the video -> ({k: the k-th sampled frame, resized, for each k in `wanted`}, frames sampled)."""
    kept, sampled = {}, 0
    with av.open(str(path)) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        for frame in _sampled(container.decode(stream), fps, lambda f: f.time):
            if sampled in wanted:
                kept[sampled] = resize(frame.to_image(), size)
            sampled += 1
    return kept, sampled
