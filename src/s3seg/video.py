"""Video: every instance of each prompt tracked through a clip, with stable track ids. Torch-free.

>>> video = s3seg.segment_video("clip.mp4", ["person", "dog"])     # doctest: +SKIP
>>> for frame in video:                                            # as frames are processed
...     for track_id, inst in frame.tracks(): ...                   # doctest: +SKIP
>>> video.write_tracks("clip.tracks.json"); video.write_overlay("clip.overlay.mp4")  # doctest: +SKIP

Tracks JSON is YouTube-VIS style (the format SA-Co/VEval uses): ``videos`` (size, frame count, fps and
each processed frame's number and timestamp), ``categories`` (one per prompt) and ``annotations``, one per
track: ``track_id``, ``category_id``, ``score`` and, per processed frame, ``segmentations`` (COCO RLE or
null where the track is absent), ``bboxes`` (COCO xywh or null) and ``areas`` (or null).
:func:`read_tracks` turns such a document back into the same frames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from s3seg import _rle
from s3seg.errors import Cancelled, ResultFormatError, UsageError, VideoTooLarge
from s3seg.types import Instance, SegmentationResult, normalize_prompts

if TYPE_CHECKING:
    import threading

    from s3seg._videoio import DecodedFrame, Position, VideoInfo
    from s3seg.config import Settings
    from s3seg.engine._video import Sam3VideoEngine


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    """One processed frame: its number in the file, its time (s), what was found (the image result type)
    and, for each instance in ``result.instances``, its track id (stable across frames)."""

    index: int
    time: float
    result: SegmentationResult
    track_ids: tuple[int, ...]
    image: npt.NDArray[np.uint8] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.track_ids) != len(self.result.instances):
            raise ValueError("one track id per instance is needed")

    def tracks(self) -> Iterator[tuple[int, Instance]]:
        """(track id, instance) pairs."""
        return zip(self.track_ids, self.result.instances, strict=True)

    def _key(self) -> tuple[object, ...]:
        """What equality compares: the frame, its tracks and what was found (not timings or the image)."""
        r = self.result
        return (self.index, self.time, self.track_ids, r.instances, r.width, r.height)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrackedFrame):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]


class VideoResult:
    """The frames of one clip, processed lazily: iterate to get each :class:`TrackedFrame` as it is done
    (once), or call :meth:`run`; then :meth:`to_tracks`, :meth:`write_tracks`, :meth:`write_overlay`.

    Only the compact tracks (RLE per frame) are kept; frames and full masks are not, so memory stays flat.
    """

    def __init__(
        self,
        frames: Iterator[TrackedFrame],
        *,
        name: str,
        source: Path | None,
        prompts: tuple[str, ...],
        fps: float,
        every: int,
        selection: tuple[Position | None, Position | None],
        model: str | None,
        max_pixels: int = 0,
        max_seconds: float = 0.0,
        expected_frames: int | None = None,
    ) -> None:
        # what the clip is
        self.name = name
        self.expected_frames = expected_frames  # frames that will be processed, as the header tells (or None)
        self.source = source
        self.prompts = prompts
        self.size: tuple[int, int] | None = None  # (width, height) once a frame is processed
        self.fps = fps
        # how it is processed
        self.every = every
        self.model = model
        self._frames = frames
        self._selection = selection
        self._limits = (max_pixels, max_seconds)
        self._done = False
        self._started = False
        self.frame_indices: list[int] = []
        self.timestamps: list[float] = []
        self._tracks: dict[int, _Track] = {}

    def __iter__(self) -> Iterator[TrackedFrame]:
        if self._started:
            raise UsageError("a video result can be iterated once", hint="keep the frames you need as they come")
        self._started = True
        for frame in self._frames:
            self._add(frame)
            yield frame
        self._done = True

    def run(self) -> VideoResult:
        """Process every frame (when not iterated already) and return self."""
        if not self._started:
            for _ in self:
                pass
        return self

    def _add(self, frame: TrackedFrame) -> None:
        position = len(self.frame_indices)
        self.size = (frame.result.width, frame.result.height)
        self.frame_indices.append(frame.index)
        self.timestamps.append(frame.time)
        for track_id, inst in frame.tracks():
            track = self._tracks.setdefault(track_id, _Track(track_id, self.prompts.index(inst.prompt) + 1, inst.score))
            rle, area = _rle.encode(inst.mask)
            x0, y0, x1, y1 = inst.box
            track.frames[position] = (rle, [x0, y0, x1 - x0, y1 - y0], area)

    def to_tracks(self) -> dict[str, Any]:
        """The YouTube-VIS–style tracks document (see the module docstring)."""
        self._require_done()
        width, height = self.size or (0, 0)
        n = len(self.frame_indices)
        annotations = []
        for k, track in enumerate(sorted(self._tracks.values(), key=lambda t: t.track_id)):
            segs: list[Any] = [None] * n
            boxes: list[Any] = [None] * n
            areas: list[Any] = [None] * n
            for position, (rle, box, area) in track.frames.items():
                segs[position], boxes[position], areas[position] = rle, box, area
            annotations.append(
                {
                    "id": k + 1,
                    "video_id": 1,
                    "track_id": track.track_id,
                    "category_id": track.category_id,
                    "score": track.score,
                    "segmentations": segs,
                    "bboxes": boxes,
                    "areas": areas,
                }
            )
        return {
            "videos": [
                {
                    "id": 1,
                    "name": self.name,
                    "width": width,
                    "height": height,
                    "length": n,
                    "fps": self.fps / self.every,
                    "source_fps": self.fps,
                    "every": self.every,
                    "frame_indices": list(self.frame_indices),
                    "timestamps": [round(t, 6) for t in self.timestamps],
                }
            ],
            "categories": [{"id": i + 1, "name": p} for i, p in enumerate(self.prompts)],
            "annotations": annotations,
            "s3seg": {"model": self.model},
        }

    def write_tracks(self, path: str | Path) -> Path:
        """Write :meth:`to_tracks` as JSON, atomically (a temporary file renamed into place)."""
        path = Path(path)
        _atomic_write(path, (json.dumps(self.to_tracks()) + "\n").encode())
        return path

    def mot_lines(self) -> list[str]:
        """MOT-challenge lines ``frame,id,x,y,w,h,conf,-1,-1,-1`` (frame = the 1-based processed frame number)."""
        return mot_lines(self.to_tracks())

    def write_overlay(self, path: str | Path, *, poster: str | Path | None = None) -> Path:
        """The clip with coloured masks and track ids as H.264 MP4 at ``fps / every`` (one frame per processed
        frame). The video is decoded a second time for it; written atomically. With ``poster``, one of its
        frames is also written there as a JPEG at most :data:`POSTER_WIDTH` wide (the first frame with tracks,
        else the first frame): what a gallery shows until the clip is played."""
        from s3seg import _videoio

        self._require_done()
        if self.source is None:
            raise UsageError("this result has no source video to draw on")
        frames = read_tracks(self.to_tracks())
        start, end = self._selection
        max_pixels, max_seconds = self._limits
        _, decoded = _videoio.read(
            self.source, max_pixels=max_pixels, max_seconds=max_seconds, start=start, end=end, every=self.every
        )
        width, height = self.size or (0, 0)
        fps = Fraction(self.fps / self.every).limit_denominator(1001) if self.fps > 0 else Fraction(25)
        path = Path(path)
        still: npt.NDArray[np.uint8] | None = None
        tracked = False  # still is a frame with tracks: kept
        with _videoio.VideoWriter(path, width, height, fps) as writer:
            for frame, image in zip(frames, decoded, strict=False):
                drawn = overlay_frame(image.array, frame)
                writer.write(drawn)
                if not tracked and (still is None or frame.track_ids):
                    still, tracked = drawn, bool(frame.track_ids)
        if poster is not None and still is not None:
            _atomic_write(Path(poster), poster_jpeg(still))
        return path

    def _require_done(self) -> None:
        if not self._done:
            if self._started:
                raise UsageError("the video is still being processed", hint="iterate to the end first, or call run()")
            self.run()


@dataclass
class _Track:
    track_id: int
    category_id: int
    score: float
    frames: dict[int, tuple[dict[str, Any], list[float], int]] = field(default_factory=dict)


def mot_lines(doc: Mapping[str, Any]) -> list[str]:
    """A tracks document's MOT-challenge lines ``frame,id,x,y,w,h,conf,-1,-1,-1`` (frame = the 1-based processed
    frame number; tracks in id order within a frame)."""
    annotations = sorted(doc["annotations"], key=lambda a: a["track_id"])
    lines = []
    for position in range(int(doc["videos"][0]["length"])):
        for a in annotations:
            box = a["bboxes"][position]
            if a["segmentations"][position] is not None and box is not None:
                x, y, w, h = box
                lines.append(f"{position + 1},{a['track_id']},{x:g},{y:g},{w:g},{h:g},{a['score']:.4f},-1,-1,-1")
    return lines


def read_tracks(doc: Mapping[str, Any] | str | Path) -> list[TrackedFrame]:
    """A tracks document (dict, JSON text or a path to one) → its frames, as they were produced."""
    if isinstance(doc, Path) or (isinstance(doc, str) and not doc.lstrip().startswith("{")):
        try:
            doc = json.loads(Path(doc).read_text())
        except (OSError, ValueError) as e:
            raise ResultFormatError(f"cannot read tracks JSON {doc}: {e}") from e
    elif isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError as e:
            raise ResultFormatError(f"not JSON: {e}") from e
    if not isinstance(doc, Mapping):
        raise ResultFormatError("a tracks document is a JSON object")
    try:
        video = doc["videos"][0]
        width, height = int(video["width"]), int(video["height"])
        indices = [int(i) for i in video["frame_indices"]]
        times = [float(t) for t in video["timestamps"]]
        prompts = tuple(c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"]))
        names = {int(c["id"]): c["name"] for c in doc["categories"]}
        per_frame: list[list[tuple[int, Instance]]] = [[] for _ in indices]
        for ann in doc["annotations"]:
            for position, rle in enumerate(ann["segmentations"]):
                if rle is None:
                    continue
                x, y, w, h = (float(v) for v in ann["bboxes"][position])
                inst = Instance(
                    prompt=names[int(ann["category_id"])],
                    score=float(ann["score"]),
                    box=(x, y, x + w, y + h),
                    mask=_rle.decode(rle, height, width),
                )
                per_frame[position].append((int(ann["track_id"]), inst))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ResultFormatError(f"not an s3seg tracks document: {type(e).__name__} {e}") from e
    frames = []
    for index, time, found in zip(indices, times, per_frame, strict=True):
        found.sort(key=lambda pair: (prompts.index(pair[1].prompt), pair[0]))
        result = SegmentationResult(
            width=width, height=height, prompts=prompts, instances=tuple(i for _, i in found), model=None
        )
        frames.append(TrackedFrame(index, time, result, tuple(t for t, _ in found)))
    return frames


def overlay_frame(image: npt.NDArray[np.uint8], frame: TrackedFrame, *, alpha: float = 0.5) -> npt.NDArray[np.uint8]:
    """The frame with each track's mask blended in the colour of its track id, outlined, and labelled
    ``#id prompt``."""
    from PIL import Image, ImageDraw

    from s3seg import render

    canvas = image.astype(np.float32)
    labels = np.zeros(image.shape[:2], dtype=np.uint16)  # k = the frame's k-th track (masks do not overlap)
    lut = np.zeros((len(frame.track_ids) + 1, 3), dtype=np.uint8)
    for k, (track_id, inst) in enumerate(frame.tracks(), start=1):
        labels[inst.mask] = k
        lut[k] = render.color(track_id + 1)
    for k in range(1, len(lut)):
        where = labels == k
        canvas[where] = canvas[where] * (1 - alpha) + lut[k].astype(np.float32) * alpha
    edges = render._edges(labels)
    out = canvas.round().clip(0, 255).astype(np.uint8)
    out[edges] = lut[labels[edges]]
    picture = Image.fromarray(out)
    draw = ImageDraw.Draw(picture)
    _, font_size = render._sizes(*picture.size)
    font = render._font(font_size)
    for track_id, inst in frame.tracks():
        text = f"#{track_id} {inst.prompt}"[:40]
        rgb = render.color(track_id + 1)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = int(min(max(0.0, inst.box[0]), max(0, picture.width - (right - left) - 2)))
        y = int(min(max(0.0, inst.box[1]), max(0, picture.height - (bottom - top) - 2)))
        draw.rectangle((x, y, x + right - left + 1, y + bottom - top + 1), fill=rgb)
        draw.text((x + 1 - left, y + 1 - top), text, fill=render._text_color(rgb), font=font)
    return np.asarray(picture)


POSTER_WIDTH = 480  # px: a video's poster (see VideoResult.write_overlay) is at most this wide


def poster_jpeg(image: npt.NDArray[np.uint8]) -> bytes:
    """A drawn frame as a poster JPEG: scaled down to at most :data:`POSTER_WIDTH` wide, aspect kept."""
    from PIL import Image

    from s3seg import render

    picture = Image.fromarray(image)
    if picture.width > POSTER_WIDTH:
        height = max(1, round(picture.height * POSTER_WIDTH / picture.width))
        picture = picture.resize((POSTER_WIDTH, height), Image.Resampling.LANCZOS)
    return render.encode_jpeg(picture, quality=85)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_video(
    path: str | Path,
    prompts: str | Sequence[str],
    engine: Sam3VideoEngine,
    settings: Settings,
    *,
    start: str | float | None = None,
    end: str | float | None = None,
    every: int = 1,
    threshold: float | None = None,
    max_objects: int | None = None,
    keep_images: bool = False,
    on_frame: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> VideoResult:
    """Open ``path`` (header checks happen here) and return the lazily processed :class:`VideoResult`.
    ``on_frame(n)``: called once the model has taken in its n-th frame (the tracker yields frames some
    frames later, all at the end for a short clip, so this is the progress to show).

    At most ``settings.max_video_frames`` frames are processed (:class:`VideoTooLarge` beyond); once
    ``cancel`` is set, the next frame raises :class:`Cancelled` (a server whose client went away)."""
    from s3seg import _videoio

    texts = normalize_prompts(prompts)
    if not texts:
        raise UsageError("no prompt given", hint='give a text prompt such as "person"')
    source = Path(path)
    first = _position(start)
    last = _position(end)
    info, decoded = _videoio.read(
        source,
        max_pixels=settings.max_video_pixels,
        max_seconds=settings.max_video_seconds,
        start=first,
        end=last,
        every=every,
    )
    expected = _expected(info, every)
    if first is None and last is None and expected is not None and info.exact:
        _check_frames(expected, settings.max_video_frames, source.name)
    decoded = _guarded(decoded, settings.max_video_frames, source.name, cancel)
    if on_frame is not None:
        decoded = _counted(decoded, on_frame)
    frames = engine.track(
        decoded,
        texts,
        threshold=settings.threshold if threshold is None else threshold,
        max_objects=(settings.max_objects if max_objects is None else max_objects),
        expected_frames=expected,
        keep_images=keep_images,
    )
    return VideoResult(
        frames,
        name=source.name,
        source=source,
        prompts=texts,
        fps=info.fps,
        every=every,
        selection=(first, last),
        model=engine.source,
        max_pixels=settings.max_video_pixels,
        max_seconds=settings.max_video_seconds,
        expected_frames=expected,
    )


def _counted(frames: Iterator[DecodedFrame], on_frame: Callable[[int], None]) -> Iterator[DecodedFrame]:
    for n, frame in enumerate(frames, start=1):
        yield frame
        on_frame(n)  # the model asks for the next frame: it has taken this one in


def _check_frames(n: int, limit: int, name: str) -> None:
    if n > limit:
        raise VideoTooLarge(
            f"{name}: {n} frames to process, over the limit of {limit}",
            hint="choose fewer with --start/--end or --every, or raise S3SEG_MAX_VIDEO_FRAMES",
        )


def _guarded(
    frames: Iterator[DecodedFrame], limit: int, name: str, cancel: threading.Event | None
) -> Iterator[DecodedFrame]:
    """``frames``, stopped by ``cancel`` and by the frame limit (headers can lie: frames are counted)."""
    for n, frame in enumerate(frames, start=1):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"{name}: stopped after {n - 1} frame(s): nobody waits for the result")
        _check_frames(n, limit, name)
        yield frame


def _position(value: str | float | None) -> Position | None:
    from s3seg._videoio import Position

    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise UsageError(f"a time must not be negative, got {value}")
        return Position(float(value))
    return Position.parse(value)


def _expected(info: VideoInfo, every: int) -> int | None:
    return -(-info.frames // every) if info.frames else None


class VideoOptions(TypedDict, total=False):
    """What one video call sets (see :func:`segment_video`)."""

    start: str | float | None
    end: str | float | None
    every: int
    threshold: float | None
    max_objects: int | None
    on_frame: Callable[[int], None] | None  # progress: the model has taken in its n-th frame (n = 1, 2, …)


def segment_video(
    path: str | Path,
    prompts: str | Sequence[str],
    *,
    model: str | None = None,
    device: str | None = None,
    start: str | float | None = None,
    end: str | float | None = None,
    every: int = 1,
    threshold: float | None = None,
    max_objects: int | None = None,
) -> VideoResult:
    """Track every instance of each prompt through the video at ``path``; see :class:`VideoResult`.

    ``start``/``end``: seconds (``2.5``) or frame numbers (``"75f"``), end exclusive; ``every``: process
    every Nth frame; ``max_objects``: live tracks at most. The model is loaded once per process.
    """
    from s3seg.client import shared_client

    return shared_client(model, device).segment_video(
        path, prompts, start=start, end=end, every=every, threshold=threshold, max_objects=max_objects
    )
