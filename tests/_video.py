"""Test clips made with PyAV from the real photo examples/grace_hopper.jpg: a crop window that pans and
zooms across it, encoded as a real H.264 (or other codec) file."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO = Path(__file__).resolve().parent.parent / "examples" / "grace_hopper.jpg"


def crops(n: int, width: int, height: int) -> list[np.ndarray]:
    """``n`` RGB frames (height, width): a window panning right and zooming in on the photo."""
    photo = Image.open(PHOTO).convert("RGB")
    pw, ph = photo.size
    frames = []
    for i in range(n):
        t = i / max(n - 1, 1)
        scale = 1.0 - 0.35 * t  # zoom in
        cw, ch = pw * scale * 0.9, ph * scale * 0.9
        x0 = (pw - cw) * (0.2 + 0.6 * t)  # pan right
        y0 = (ph - ch) * 0.3
        box = (int(x0), int(y0), int(x0 + cw), int(y0 + ch))
        frames.append(np.asarray(photo.crop(box).resize((width, height), Image.Resampling.BILINEAR)))
    return frames


def make_clip(
    path: Path,
    n: int = 8,
    width: int = 96,
    height: int = 72,
    *,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    audio: bool = False,
    times: list[float] | None = None,
    container: str | None = None,
) -> Path:
    """Write the panning/zooming clip; ``rotation`` sets a display matrix, ``times`` gives each frame's time
    in seconds (variable frame rate)."""
    import av

    frames = crops(n, width, height)
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times is not None:
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if audio:
            sound = out.add_stream("aac", rate=8000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = round(times[i] * 1000) if times is not None else i
            if times is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio:
            _silence(out, sound)
    return path


def make_animation(path: Path, durations: list[int]) -> Path:
    """An animated GIF or WebP (by ``path``'s suffix) of the panning crops, each frame shown ``durations[i]`` ms."""
    frames = [Image.fromarray(a) for a in crops(len(durations), 96, 72)]
    extra = {"lossless": True} if path.suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0, **extra)
    return path


def make_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), mode="w", format="mp4") as out:
        _silence(out, out.add_stream("aac", rate=8000))
    return path


def _silence(out: object, stream: object) -> None:
    import av

    samples = np.zeros((1, 8000), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = 8000
    frame.pts = 0
    for packet in stream.encode(frame):  # type: ignore[attr-defined]
        out.mux(packet)  # type: ignore[attr-defined]
    for packet in stream.encode():  # type: ignore[attr-defined]
        out.mux(packet)  # type: ignore[attr-defined]
