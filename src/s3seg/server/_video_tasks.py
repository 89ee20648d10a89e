"""Video on the public API: a clip uploaded with ``POST /api/v1/upload`` (recognised by its first bytes,
not its name) and the task that tracks the prompts through it (``POST /api/v1/segment`` with ``video_id``).

Upload: the file goes to a temporary file (never whole in memory), up to the user's tier limit
(``S3SEG_MAX_VIDEO_UPLOAD_MB``); its header is checked and its first frame decoded, its frames counted, and
only then is it stored (``uploads/<user>/<video_id>``) with a small JSON of what was found next to it
(``<video_id>.json``: frames, fps, size), which the segment route reads to price the task. Anything refused
leaves nothing stored.

Task: ``frames_total`` is the frames it will process (the upload's frames, those ``start``/``end`` choose,
every ``every``-th; seconds are turned into frames with the upload's fps, exact for a constant frame rate, an
estimate for a variable one); its price,
``ceil(frames_total × S3SEG_VIDEO_FRAME_COST)`` credits, is reserved when it is created and charged when it
is done (never when it fails), for the frames it did process: less when the clip had fewer than counted (a
damaged end), never more than the reservation. The worker (:class:`VideoRunner`, in a thread) reports each
processed frame as progress, then stores the tracks JSON, the overlay MP4 and a poster JPEG (one of the
overlay's frames, at most 480 px wide: what the web gallery shows) under ``results/<task>/`` and marks the
task done; the upload stays its ``source``. A task whose server died runs again from the first
frame.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from s3seg import _videoio
from s3seg.config import Settings
from s3seg.errors import FileTooLarge, UploadNotFound, UsageError, VideoError
from s3seg.server._memory import video_need
from s3seg.server._schemas import public_model
from s3seg.storage import Storage, guess_content_type
from s3seg.store import Store, Task
from s3seg.types import safe_file_name

if TYPE_CHECKING:
    from s3seg.engine._video import Sam3VideoEngine
    from s3seg.server._gateway import WorkerPool
    from s3seg.video import VideoOptions, VideoResult

# An animated GIF/WebP stored as a video is ``<hex>.anim.gif`` (``.anim.webp``): its id tells it from the same
# file uploaded as an image (``<hex>.gif``), so an id alone says which of the two /segment is given.
VIDEO_ID = re.compile(r"^[0-9a-f]{32}\.(mp4|mkv|avi|ogv|ts|mpg|anim\.gif|anim\.webp)$")
# FFmpeg's container names (``webp``: Pillow's, see _videoio) → the extension the upload is stored with (its
# Content-Type follows).
_FORMATS = (
    ("mp4", ".mp4"),
    ("matroska", ".mkv"),
    ("avi", ".avi"),
    ("ogg", ".ogv"),
    ("mpegts", ".ts"),
    ("mpeg", ".mpg"),
    ("gif", ".anim.gif"),
    ("webp", ".anim.webp"),
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class VideoUpload:
    """What an upload's checks found (kept next to it as ``<video_id>.json``)."""

    video_id: str
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float | None
    bytes: int
    file_name: str


def video_limit_mb(settings: Settings, tier: str) -> float:
    """The largest video a user of ``tier`` may upload (an unknown tier gets the free tier's limit)."""
    limits = settings.max_video_upload_mb
    return limits.get(tier, limits.get("free", min(limits.values(), default=settings.max_upload_mb)))


def receive_video(source: BinaryIO, name: str, folder: Path, *, limit_mb: float, tier: str) -> Path:
    """Copy an uploaded file to ``folder`` chunk by chunk, refusing it past ``limit_mb``."""
    limit = int(limit_mb * 1024 * 1024)
    path = folder / "upload"
    size = 0
    source.seek(0)
    with path.open("wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise FileTooLarge(
                    f"{name} is larger than {limit_mb:g} MB, the {tier} tier's limit for videos",
                    hint="cut or recompress the clip (fewer pixels, a lower bitrate)",
                )
            out.write(chunk)
    return path


def check_video(path: Path, name: str, settings: Settings) -> tuple[_videoio.VideoInfo, int, str]:
    """The header (size and length limits), the frame count and the extension to store it with; the first
    frame is decoded, so a file whose data is not a playable video is refused here, not in the task."""
    try:
        info = _videoio.probe(path, max_pixels=settings.max_video_pixels, max_seconds=settings.max_video_seconds)
        formats = _videoio.container_format(path)
        extension = next((ext for key, ext in _FORMATS if key in formats.split(",")), None)
        if extension is None:
            raise VideoError(
                f"{formats} videos are not accepted for upload", hint="send MP4, WebM/MKV, AVI or an animated GIF/WebP"
            )
        frames = info.frames if info.exact and info.frames else _videoio.count_frames(path)
        _, decoded = _videoio.read(path, max_pixels=settings.max_video_pixels, max_seconds=settings.max_video_seconds)
        try:
            next(decoded)
        finally:
            getattr(decoded, "close", lambda: None)()  # a generator: closes the file
    except VideoError as e:
        e.message = e.message.replace(path.name, name, 1)  # the user's name for it, not the temporary one
        raise
    if frames < 1:
        raise VideoError(f"{name}: the video has no frames", hint="check the file")
    return info, frames, extension


def store_video(
    storage: Storage, path: Path, key_of: Callable[[str], str], name: str, settings: Settings
) -> tuple[VideoUpload, str]:
    """Check the received file and store it with its ``.json``; the upload and its storage key."""
    info, frames, extension = check_video(path, name, settings)
    video_id = uuid.uuid4().hex + extension
    upload = VideoUpload(video_id, frames, info.fps, info.width, info.height, info.duration, path.stat().st_size, name)
    key = key_of(video_id)
    storage.put_file(key, path, guess_content_type(video_id))
    put_beside(storage, key, asdict(upload))
    return upload, key


def put_beside(storage: Storage, key: str, found: dict[str, Any]) -> None:
    """Store what an upload's checks found as ``<key>.json``; when that fails, the upload is removed too."""
    try:
        storage.put(f"{key}.json", json.dumps(found).encode(), "application/json")
    except Exception:
        with contextlib.suppress(Exception):
            storage.delete(key)
        raise


def upload_name(found: dict[str, Any] | None) -> dict[str, str]:
    """The task metadata naming an upload by its user's file name (``file_name``), from its ``.json``; none
    for an upload stored without one."""
    name = safe_file_name(str((found or {}).get("file_name") or ""))
    return {"file_name": name} if name else {}


def read_beside(storage: Storage, key: str) -> dict[str, Any] | None:
    """An upload's ``<key>.json``, or None when it has none (or it is not a JSON object)."""
    try:
        found = json.loads(storage.get(f"{key}.json"))
    except Exception:
        return None
    return found if isinstance(found, dict) else None


@dataclass(frozen=True)
class VideoTask:
    """What a new video task is made of: its metadata, the frames it will process and its price."""

    metadata: dict[str, Any]
    frames_total: int
    cost: int


def video_task(
    video_id: str,
    key: str,
    storage: Storage,
    settings: Settings,
    *,
    every: int | None,
    max_objects: int | None,
    start: str | None = None,
    end: str | None = None,
) -> VideoTask:
    """The task for an uploaded video (``key`` its storage key); UploadNotFound when there is none. ``start``/
    ``end`` (seconds or ``NNf``, as the CLI's) choose the frames; checked against the upload's ``.json``."""
    if not VIDEO_ID.match(video_id):
        raise UsageError(f"{video_id!r} is not a video id", hint="use the video_id /api/v1/upload answered")
    first, last = _videoio.parse_selection(start, end)
    found = read_beside(storage, key)
    if found is None or not storage.exists(key):
        raise UploadNotFound(f"no uploaded video {video_id}", hint="upload it first: POST /api/v1/upload")
    step = every or 1
    name = upload_name(found).get("file_name", video_id)
    chosen = _videoio.selected_frames(first, last, int(found["frames"]), float(found["fps"]), name)
    frames_total = len(chosen[::step])
    objects = max_objects or settings.max_objects
    size = [int(found["width"]), int(found["height"])]
    # refused now (413) when tracking it could never fit in the memory budget; the runner reserves it
    video_need(size[0], size[1], objects, name=name, capacity=settings.memory_budget_bytes())
    options = {"every": step, "max_objects": objects, "size": size}
    options |= {k: v for k, v in (("start", start), ("end", end)) if v is not None}  # (as given: the worker's)
    metadata = {"kind": "video", "video": video_id, "video_key": key, "video_options": options, **upload_name(found)}
    return VideoTask(metadata, frames_total, video_cost(frames_total, settings.video_frame_cost))


def video_cost(frames: int, rate: float) -> int:
    """Credits for ``frames`` processed frames at ``rate`` per frame, rounded up (0 frames cost nothing)."""
    return math.ceil(round(frames * rate, 9))


# ------------------------------------------------------------------------------------------ the worker
Progress = Callable[[int, int], None]


class VideoRunner:
    """Runs a video task in the calling thread (the task runner gives it one): on this server's video model
    (``load``: loaded on the first task and kept; calls are serialised by the model), or, when ``workers`` are
    given (a gateway), on a GPU worker's ``/api/v1/predict/video``. The tracks JSON and the overlay MP4 are made
    here either way."""

    def __init__(
        self,
        load: Callable[[], Sam3VideoEngine],
        storage: Storage,
        settings: Settings,
        *,
        workers: WorkerPool | None = None,
    ) -> None:
        self._load = load
        self._workers = workers
        self._engine: Sam3VideoEngine | None = None
        self._lock = threading.Lock()
        self.storage = storage
        self.settings = settings

    def engine(self) -> Sam3VideoEngine:
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            return self._engine

    def __call__(self, task: Task, store: Store, progress: Progress) -> Task:
        from s3seg.video import open_video

        meta = task.metadata
        options = meta.get("video_options") or {}
        total = task.frames_total
        chosen: VideoOptions = {
            "every": int(options.get("every", 1)),
            "threshold": (meta.get("options") or {}).get("threshold"),
            "max_objects": int(options.get("max_objects", self.settings.max_objects)),
            "start": options.get("start"),
            "end": options.get("end"),
            "on_frame": lambda n: progress(n, max(total, n)),
        }
        folder = Path(tempfile.mkdtemp(prefix="s3seg-video-"))
        try:
            source = str(meta["video_key"])
            path = self.storage.download(source, folder / f"source{Path(source).suffix}")
            progress(0, total)

            def finish(video: VideoResult) -> Task:
                return self._finish(video, task, store, source, folder)

            if self._workers is not None:
                return self._workers.track(path, task.prompts, chosen, self.settings, finish)
            return finish(open_video(path, task.prompts, self.engine(), self.settings, **chosen))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _finish(self, video: VideoResult, task: Task, store: Store, source: str, folder: Path) -> Task:
        """Track to the end, store the tracks JSON, the overlay MP4 and its poster JPEG, and mark the task done
        (charged)."""
        written: list[str] = []
        try:
            video.model = public_model(video.model)  # the tracks JSON and the metadata: no server path
            video.run()
            doc = video.to_tracks()
            prefix = f"results/{task.id}"
            tracks = video.write_tracks(folder / "tracks.json")
            overlay = video.write_overlay(folder / "overlay.mp4", poster=folder / "poster.jpg")
            for file in (tracks, overlay, folder / "poster.jpg"):
                written.append(self.storage.put_file(f"{prefix}/{file.name}", file, guess_content_type(file.name)))
            return store.finish(
                task.id,
                source=source,
                mask=None,
                overlay=written[1],
                labels=_labels(doc),
                metadata={**_metadata(doc, written[0]), "poster": written[2]},
                cost=video_cost(len(video.frame_indices), self.settings.video_frame_cost),  # ≤ the reservation
            )
        except Exception:
            for key in written:  # best effort: the task ends error either way
                with contextlib.suppress(Exception):
                    self.storage.delete(key)
            raise


def _labels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    names = {c["id"]: c["name"] for c in doc["categories"]}
    return [
        {
            "label": names[a["category_id"]],
            "track_id": a["track_id"],
            "score": round(float(a["score"]), 6),
            "frames": sum(s is not None for s in a["segmentations"]),
        }
        for a in doc["annotations"]
    ]


def _metadata(doc: dict[str, Any], tracks_key: str) -> dict[str, Any]:
    video = doc["videos"][0]
    names = {c["id"]: c["name"] for c in doc["categories"]}
    counts = {name: 0 for name in names.values()}
    for a in doc["annotations"]:
        counts[names[a["category_id"]]] += 1
    return {
        "width": video["width"],
        "height": video["height"],
        "frames": video["length"],
        "fps": video["fps"],
        "model": doc["s3seg"]["model"],
        "instances": len(doc["annotations"]),
        "counts": counts,
        "tracks": tracks_key,
    }
