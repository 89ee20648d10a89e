"""Video in and out with PyAV (its wheels bundle FFmpeg: no system ffmpeg needed). Torch-free.

Frames are decoded lazily, one at a time, as RGB uint8 arrays with the container's display-matrix
rotation applied (as EXIF orientation is for photos); 10-bit and other pixel formats are converted by
FFmpeg. Each frame keeps its own timestamp (variable frame rate). Animated WebP, which FFmpeg reads as
one still image, is decoded by Pillow. A file that ends early (truncated download) is read up to its
last good frame with a warning; a file FFmpeg cannot open at all (no index, not a video, corrupt) is an
error."""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from s3seg.errors import BadRange, DependencyError, UsageError, VideoError, VideoTooLarge

if TYPE_CHECKING:
    import av.container

# Containers recognised by their first bytes (extensions are not trusted).
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # MP4, MOV, M4V, 3GP
    (0, b"\x1a\x45\xdf\xa3"),  # Matroska, WebM
    (0, b"OggS"),  # Ogg (Theora)
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x47"),  # MPEG transport stream (checked again at 188 below)
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"wide"),
    (4, b"free"),
)
_ANIMATED = (b"GIF87a", b"GIF89a")


def looks_like_video(path: Path, *, animated: bool = False) -> bool:
    """True when the file's first bytes are those of a video container (``animated``: GIF/WebP too)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return False
    return head_is_video(head, animated=animated)


HEAD_BYTES = 400  # what :func:`head_is_video` needs to see


def head_is_video(head: bytes, *, animated: bool = False) -> bool:
    """:func:`looks_like_video` for the first :data:`HEAD_BYTES` bytes of a file."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return True
    if animated and (head[:6] in _ANIMATED or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return True
    for offset, magic in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if magic == b"\x47":
                return len(head) > 188 and head[188:189] == b"\x47"
            return True
    return False


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, before decoding. ``width``/``height`` are as coded: a frame with a
    display-matrix rotation of ±90° comes out turned (read the size from the frames); ``frames`` and
    ``duration`` are estimates from the header (None when it does not say)."""

    width: int
    height: int
    fps: float
    frames: int | None
    duration: float | None
    codec: str
    exact: bool = False  # ``frames`` is the container's own count (not estimated from the duration)


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded frame: its number in the file (0-based, decode order), its time in seconds, RGB pixels."""

    index: int
    time: float
    array: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Position:
    """A point in a video: seconds (``2.5``) or a frame number (``75f``)."""

    value: float
    frames: bool = False

    @classmethod
    def parse(cls, text: str) -> Position:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(f|s)?\s*", text)
        if match is None or (match.group(2) == "f" and "." in match.group(1)):
            raise BadRange(
                f"not a time or frame number: {text!r}", hint="seconds (2.5 or 2.5s) or a frame number (75f)"
            )
        return cls(float(match.group(1)), frames=match.group(2) == "f")

    def reached(self, index: int, time: float) -> bool:
        return index >= self.value if self.frames else time >= self.value - 1e-9


def parse_selection(start: str | None, end: str | None) -> tuple[Position | None, Position | None]:
    """``start``/``end`` as the CLI takes them (seconds or ``NNf``); BadRange when unreadable, or when both are in
    the same unit and ``start`` is not before ``end`` (mixed units are checked against the clip)."""
    first, last = (None if text is None else Position.parse(text) for text in (start, end))
    if first is not None and last is not None and first.frames == last.frames and first.value >= last.value:
        raise BadRange(f"start ({start}) must come before end ({end})", hint="end is exclusive: 0f to 10f is 10 frames")
    return first, last


def selected_frames(start: Position | None, end: Position | None, frames: int, fps: float, name: str) -> range:
    """The frame numbers ``[start, end)`` choose in a clip of ``frames`` frames at ``fps``, as :func:`read`
    selects them: frame numbers exactly; seconds as the first frame at or after that time, estimated from
    ``fps`` (exact for a constant frame rate). BadRange when it is empty or reaches past the clip."""

    def index(p: Position) -> int:
        return int(p.value) if p.frames else math.ceil(round(p.value * fps, 6))

    first = 0 if start is None else index(start)
    stop = frames if end is None else index(end)
    if start is not None and first >= frames:
        raise BadRange(f"{name}: start is past the end of the clip ({frames} frames)", hint="choose an earlier start")
    if stop > frames:
        raise BadRange(f"{name}: end is past the end of the clip ({frames} frames)", hint="choose an earlier end")
    if first >= stop:
        raise BadRange(f"{name}: no frames between start and end", hint="start must come before end")
    return range(first, stop)


def _av() -> Any:
    try:
        import av
    except ImportError as e:
        raise DependencyError(
            "video needs PyAV, which is not installed", hint="pip install 's3seg[video]'  (PyAV bundles FFmpeg)"
        ) from e
    return av


def _open(path: Path) -> av.container.InputContainer:
    av = _av()
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    try:
        return av.open(str(path), mode="r")  # type: ignore[no-any-return]
    except av.error.EOFError as e:
        raise VideoError(f"{path.name}: the video is empty (no frames)", hint="check the file") from e
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(
            f"{path.name}: not a video or corrupt ({_reason(e)})", hint="check that the file plays; re-encode it"
        ) from e


def count_frames(path: Path) -> int:
    """The frames of the first video stream, counted from the container's packets (nothing is decoded); an
    animated WebP's from its header (Pillow)."""
    if _is_webp(path):
        with _open_webp(path) as image:
            return int(getattr(image, "n_frames", 1))
    container = _open(path)
    try:
        if not container.streams.video:
            raise VideoError(f"{path.name}: has no video stream", hint="give a file with video")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
    except _av().FFmpegError as e:
        raise VideoError(f"{path.name}: not a video or corrupt ({_reason(e)})", hint="check that the file plays") from e
    finally:
        container.close()


def container_format(path: Path) -> str:
    """The container's format names as FFmpeg gives them, e.g. ``mov,mp4,m4a,3gp,3g2,mj2``; ``webp`` for a
    WebP (read by Pillow: FFmpeg takes an animated one for a still image)."""
    if _is_webp(path):
        _open_webp(path).close()  # (a corrupt one is refused here, as FFmpeg refuses the rest)
        return "webp"
    container = _open(path)
    try:
        return str(container.format.name)
    finally:
        container.close()


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def _is_webp(path: Path) -> bool:
    """Animated WebP is decoded by Pillow: FFmpeg reads a WebP as one still image (no picture size for an
    animated one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def probe(path: Path, *, max_pixels: int, max_seconds: float) -> VideoInfo:
    """Open ``path`` and check its header (cheap: nothing is decoded)."""
    info, frames = _source(path, max_pixels=max_pixels, max_seconds=max_seconds)
    frames.close()
    return info


def _source(path: Path, *, max_pixels: int, max_seconds: float) -> tuple[VideoInfo, Generator[_Raw]]:
    """The header, checked, and a generator of raw frames (closing it closes the file)."""
    webp = _is_webp(path)
    handle = _open_webp(path) if webp else _open(path)
    try:
        header = _webp_info if webp else _info
        info = header(path, handle, max_pixels=max_pixels, max_seconds=max_seconds)
    except BaseException:
        handle.close()
        raise
    return info, _webp_decoded(handle) if webp else _av_decoded(handle)


def _info(path: Path, container: av.container.InputContainer, *, max_pixels: int, max_seconds: float) -> VideoInfo:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        what = f"only {', '.join(kinds)} streams" if kinds else "no streams at all: empty"
        raise VideoError(f"{path.name}: has no video stream ({what})", hint="give a file with video")
    stream = container.streams.video[0]
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    duration: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    frames = int(stream.frames) if stream.frames else (round(duration * fps) if duration and fps else None)
    codec = stream.codec_context.name or "?"
    return _checked(
        path,
        VideoInfo(width, height, fps, frames, duration, codec, exact=bool(stream.frames)),
        max_pixels=max_pixels,
        max_seconds=max_seconds,
    )


def _checked(path: Path, info: VideoInfo, *, max_pixels: int, max_seconds: float) -> VideoInfo:
    """``info`` when the picture size, the length and the limits are right; a :class:`VideoError` otherwise."""
    if info.width <= 0 or info.height <= 0:
        raise VideoError(f"{path.name}: the video stream has no picture size (corrupt?)")
    if info.width * info.height > max_pixels:
        raise VideoTooLarge(
            f"{path.name}: {info.width}×{info.height} is over the limit of {max_pixels} pixels per frame",
            hint="downscale the video or raise S3SEG_MAX_VIDEO_PIXELS",
        )
    if info.duration is not None and info.duration > max_seconds:
        raise VideoTooLarge(
            f"{path.name}: {info.duration:.1f} s is over the limit of {max_seconds:g} s",
            hint="cut the clip (--start/--end only choose frames) or raise S3SEG_MAX_VIDEO_SECONDS",
        )
    if info.frames == 0:
        raise VideoError(f"{path.name}: the video stream has no frames")
    return info


def _open_webp(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise VideoError(
            f"{path.name}: not an animated WebP or corrupt ({_reason(e)})", hint="check that the file plays"
        ) from e
    return image


def _webp_info(path: Path, image: Any, *, max_pixels: int, max_seconds: float) -> VideoInfo:
    """Frame count and size from the header; the rate from the first frame's duration (frames keep their own
    times when they are read)."""
    frames = int(getattr(image, "n_frames", 1))
    first = float(image.info.get("duration") or 0) / 1000
    fps = 1 / first if first > 0 else 10.0
    width, height = image.size
    return _checked(
        path,
        VideoInfo(width, height, fps, frames, frames / fps, "webp"),
        max_pixels=max_pixels,
        max_seconds=max_seconds,
    )


def read(
    path: Path,
    *,
    max_pixels: int,
    max_seconds: float,
    start: Position | None = None,
    end: Position | None = None,
    every: int = 1,
) -> tuple[VideoInfo, Iterator[DecodedFrame]]:
    """The header, and an iterator decoding frames [start, end) lazily, keeping every ``every``-th one.

    Raises :class:`VideoError` before returning for anything the header shows wrong; while iterating, for
    a video with no frame in the range. A decode error after the first frame ends the iteration with a
    :class:`TruncatedVideoWarning` (the frames before it are good).
    """
    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")
    info, raw = _source(path, max_pixels=max_pixels, max_seconds=max_seconds)
    return info, _frames(path, raw, info, start, end, every, max_seconds)


_Raw = tuple[float | None, Any]  # a decoded frame's time in seconds (None: unknown) and its RGB pixels


class _Damaged(Exception):
    """A frame could not be decoded (the file ends early or is damaged there)."""


def _av_decoded(container: av.container.InputContainer) -> Generator[_Raw]:
    av = _av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        decoder = container.decode(stream)
        while True:
            try:
                frame = next(decoder)
            except StopIteration:
                return
            except av.FFmpegError as e:
                raise _Damaged(_reason(e)) from e
            yield frame.time, _rgb(frame)
    finally:
        container.close()


def _webp_decoded(image: Any) -> Generator[_Raw]:
    """Pillow's frames of an animated WebP, with the time each one starts (the sum of the durations before)."""
    time = 0.0
    try:
        for k in range(int(getattr(image, "n_frames", 1))):
            try:
                image.seek(k)
                rgb = np.array(image.convert("RGB"))  # writable: torch.from_numpy reads it
            except (OSError, EOFError, ValueError) as e:
                raise _Damaged(_reason(e)) from e
            yield time, rgb
            time += float(image.info.get("duration") or 0) / 1000
    finally:
        image.close()


def _frames(
    path: Path,
    raw: Generator[_Raw],
    info: VideoInfo,
    start: Position | None,
    end: Position | None,
    every: int,
    max_seconds: float,
) -> Iterator[DecodedFrame]:
    t0: float | None = None
    selected = 0
    index = -1
    try:
        while True:
            try:
                pts, rgb = next(raw)
            except StopIteration:
                break
            except _Damaged as e:
                if index < 0:
                    raise VideoError(f"{path.name}: no frame could be decoded ({e})") from e
                warnings.warn(
                    f"{path.name}: the video data ends early or is damaged after frame {index} "
                    f"({e}); processed up to the last good frame",
                    TruncatedVideoWarning,
                    stacklevel=2,
                )
                break
            index += 1
            if pts is None:
                pts = index / (info.fps or 1.0)
            if t0 is None:
                t0 = pts
            time = max(0.0, pts - t0)
            if time > max_seconds:
                raise VideoTooLarge(
                    f"{path.name}: longer than the limit of {max_seconds:g} s",
                    hint="cut the clip or raise S3SEG_MAX_VIDEO_SECONDS",
                )
            if end is not None and end.reached(index, time):
                break
            if start is not None and not start.reached(index, time):
                continue
            if selected % every == 0:
                yield DecodedFrame(index, time, rgb)
            selected += 1
    finally:
        raw.close()
    if end is None and info.exact and info.frames and 0 <= index < info.frames - 1:
        warnings.warn(
            f"{path.name}: the file says {info.frames} frames but only {index + 1} could be read "
            "(truncated?); processed up to the last good frame",
            TruncatedVideoWarning,
            stacklevel=2,
        )
    if selected == 0:
        where = " between --start and --end" if start is not None or end is not None else ""
        raise VideoError(f"{path.name}: no video frames{where}", hint="check the file and the --start/--end range")


def _rgb(frame: Any) -> npt.NDArray[np.uint8]:
    array: npt.NDArray[np.uint8] = frame.to_ndarray(format="rgb24")
    turns = (round(frame.rotation or 0) // 90) % 4
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


class TruncatedVideoWarning(UserWarning):
    """The video ended early or is damaged; frames up to the last good one were processed."""


class VideoWriter:
    """H.264 (yuv420p) MP4 written to a hidden temporary file and renamed into place by :meth:`close`;
    :meth:`abort` (or leaving the ``with`` block on an error) removes it, so nothing half-written stays."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, *, crf: int = 23) -> None:
        av = _av()
        self.path = path
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
        self._container = av.open(str(self._tmp), mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width = width + width % 2  # yuv420p needs even sizes: edge pixels are repeated
        self._stream.height = height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "veryfast"}
        self._size = (width, height)
        self.frames = 0

    def write(self, rgb: npt.NDArray[np.uint8]) -> None:
        av = _av()
        pad_h, pad_w = self._stream.height - rgb.shape[0], self._stream.width - rgb.shape[1]
        if pad_h or pad_w:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
