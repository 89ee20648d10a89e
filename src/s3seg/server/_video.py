"""``POST /api/v1/predict/video`` (the GPU backend, ``X-API-Key``): a clip tracked with the video options
of ``s3seg segment clip.mp4``; the answer is the tracks document (``NAME.tracks.json``), or, with
``Accept: application/x-ndjson``, one JSON line per processed frame as it is done, then a ``done`` line with
the rest of the tracks document (its per-frame fields are the frame lines'; see
:class:`~s3seg.server._schemas.VideoLineOut`).

The upload is written to a private temporary folder as it arrives (never held in memory; at most
``S3SEG_MAX_VIDEO_MB``), which is removed when the answer ends, whatever the outcome. Frames are tracked one
at a time off the event loop; each frame's model step takes its turn on the device with the image batches
(:class:`~s3seg.server._batcher.Turns`). When the client goes away the work stops at the next frame.
While it is tracked, the video holds its working set (:func:`~s3seg.server._memory.video_need`) in the
memory budget the images share: a video that finds no room is answered 503 ``BUSY``, and one that could
never fit 413 ``VIDEO_TOO_LARGE``; images that find the budget held by videos wait, then 503 ``BUSY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from s3seg import _rle
from s3seg._videoio import probe
from s3seg.config import Settings
from s3seg.errors import S3SegError, UsageError
from s3seg.server._body import read_form, single, text_fields
from s3seg.server._deps import BudgetDep, ServerDep, SettingsDep, require_key
from s3seg.server._memory import video_need
from s3seg.server._schemas import Envelope, TracksOut, VideoIn, public_model, refusals
from s3seg.video import TrackedFrame, VideoResult

PATH = "/api/v1/predict/video"
NDJSON = "application/x-ndjson"
BODY_HINT = "cut or recompress the clip, or raise the server's S3SEG_MAX_VIDEO_MB"
_log = logging.getLogger("s3seg.server")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_AHEAD = 64  # frame lines a slow client may leave unread before the worker waits for it

_FIELDS = {"video": {"type": "string", "format": "binary"}, **VideoIn.model_json_schema()["properties"]}
_FORM = {"type": "object", "required": ["video", "prompts"], "properties": _FIELDS}
_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM}}}}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the tracks document; with Accept: application/x-ndjson, one line per processed frame",
        "content": {NDJSON: {"schema": {"$ref": "#/components/schemas/VideoLineOut"}}},
    },
    **refusals(401, 413, 415, 422, 503),
}

router = APIRouter(prefix="/api/v1", tags=["model"], dependencies=[Depends(require_key)])


@router.post("/predict/video", response_model=Envelope[TracksOut], responses=_ANSWERS, openapi_extra=_BODY)
async def predict_video(request: Request, server: ServerDep, budget: BudgetDep, settings: SettingsDep) -> Response:
    """Track every instance of each prompt through a video (multipart: ``video`` file + fields)."""
    slot = server.video_slot()  # before the upload is read: a busy server refuses at once
    held: list[Callable[[], None]] = [slot]

    def release() -> None:
        for give_back in held:
            give_back()

    folder = Path(tempfile.mkdtemp(prefix="s3seg-predict-video-"))
    try:
        path, fields = await _read_upload(request, settings, folder)
        # the header first: a bad or oversized video is refused before the video model is even loaded
        info = await run_in_threadpool(
            probe, path, max_pixels=settings.max_video_pixels, max_seconds=settings.max_video_seconds
        )
        # its working set while it is tracked, from the memory budget the images share (413: never fits)
        objects = fields.max_objects or settings.max_objects
        need = video_need(info.width, info.height, objects, name=path.name, capacity=budget.capacity)
        held.append(await budget.reserve(need))
        engine = await run_in_threadpool(server.video)
        run = _Run(folder, threading.Event(), release)
        video = await run_in_threadpool(_open, path, fields, engine, settings, run)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        release()
        raise
    if NDJSON in request.headers.get("accept", ""):
        # Starlette's streaming answer listens for the client going away and then cancels the generator
        return StreamingResponse(run.stream(video), media_type=NDJSON, headers={"Cache-Control": "no-store"})
    try:
        failed: Exception | None = None  # raised after the task group (which would wrap it in a group)
        async with anyio.create_task_group() as group:
            group.start_soon(_watch, request, group.cancel_scope)
            try:
                async for _ in run.lines(video):
                    pass
            except Exception as e:
                failed = e
            group.cancel_scope.cancel()
        if failed is not None:
            raise failed
        if not run.finished:
            run.stop(video.name)
            return Response(status_code=499)  # the client is gone: nobody reads this
        doc = await run_in_threadpool(video.to_tracks)
    finally:
        run.close()
    return JSONResponse({"ok": True, "data": doc})


async def _watch(request: Request, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def _read_upload(request: Request, settings: Settings, folder: Path) -> tuple[Path, VideoIn]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise UsageError("send multipart/form-data", hint="curl -F video=@clip.mp4 -F prompts=dog …")
    async with read_form(request, max_files=2, max_fields=100, folder=folder) as form:
        upload = single(form, "video")
        if not isinstance(upload, UploadFile):
            raise UsageError("multipart body needs a `video` file")
        fields: dict[str, Any] = {"prompts": text_fields(form, "prompts")}
        for name in VideoIn.model_fields:
            value = single(form, name) if name != "prompts" else None
            if isinstance(value, str) and value != "":
                fields[name] = value
        unknown = sorted(set(form.keys()) - {"video", *VideoIn.model_fields})
        if unknown:
            raise UsageError(
                f"unknown multipart field `{unknown[0]}`", hint=f"fields: {', '.join(VideoIn.model_fields)}"
            )
        upload.file.flush()
        stored = Path(upload.file.name)
        name = _SAFE.sub("_", Path(upload.filename or "").name).strip("._")[:100] or "video"
    item = VideoIn.model_validate(fields)
    if len(item.prompts) > settings.max_prompts:
        raise UsageError(f"{len(item.prompts)} prompts; at most {settings.max_prompts} per video")
    if any(len(p) > settings.max_prompt_chars for p in item.prompts):
        raise UsageError(f"a prompt is longer than {settings.max_prompt_chars} characters")
    return stored.rename(folder / name), item


def _open(path: Path, item: VideoIn, engine: Any, settings: Settings, run: _Run) -> VideoResult:
    from s3seg.video import open_video

    video = open_video(
        path,
        item.prompts,
        engine,
        settings,
        start=item.start,
        end=item.end,
        every=item.every,
        threshold=item.threshold,
        max_objects=item.max_objects,
        on_frame=run.progress,
        cancel=run.cancel,
    )
    video.model = public_model(video.model)  # the tracks and lines name it: no server path
    return video


class _Run:
    """One video being tracked for one request, by a worker thread of its own that drives the tracker and
    hands the answer's lines to the event loop as they come: ``progress`` as each frame is taken in,
    ``frame`` as each frame is done (at most ``_AHEAD`` of them waiting for a slow client, then the worker
    waits too). The temporary folder is removed by :meth:`close`."""

    def __init__(self, folder: Path, cancel: threading.Event, release: Callable[[], None]) -> None:
        self.folder = folder
        self.cancel = cancel
        self._release = release  # the request's video slot and its memory
        self.finished = False  # every frame processed, or failed: not stopped half-way
        self.frames = 0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._room = threading.BoundedSemaphore(_AHEAD)

    def progress(self, n: int) -> None:
        """``open_video``'s ``on_frame``: the model has taken in its ``n``-th frame (worker thread)."""
        self._put(("progress", {"type": "progress", "frames_done": n}))

    async def lines(self, video: VideoResult) -> AsyncIterator[dict[str, Any]]:
        """``progress`` and ``frame`` lines as the worker makes them; ends when the video does (``finished``),
        raising what the video raised. Leaving early (the client went away) stops the worker."""
        threading.Thread(target=self._work, args=(video,), name="s3seg-video", daemon=True).start()
        try:
            while True:
                kind, value = await self._queue.get()
                if kind == "frame":
                    self._room.release()
                elif kind in ("end", "error"):
                    self.finished = True
                    if kind == "error":
                        raise value
                    return
                yield value
        finally:
            if not self.finished:
                self.stop(video.name)

    def _work(self, video: VideoResult) -> None:
        try:
            for frame in video:
                line = _frame_line(frame, self.frames)
                self.frames += 1
                while not self._room.acquire(timeout=0.5):  # the client reads slowly: wait for it
                    if self.cancel.is_set():
                        return
                self._put(("frame", line))
            self._put(("end", None))
        except BaseException as e:  # handed to the request (a Cancelled one is read by nobody)
            self._put(("error", e))

    def _put(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def stream(self, video: VideoResult) -> AsyncIterator[str]:
        """The NDJSON answer: ``start``, ``progress`` and ``frame`` lines, then ``done`` or ``error``."""
        try:
            yield _dump(_start_line(video))
            async for line in self.lines(video):
                yield _dump(line)
            doc = await run_in_threadpool(video.to_tracks)
            yield _dump({"type": "done", "tracks": tracks_summary(doc)})
        except S3SegError as e:
            yield _dump(_error_line(e.http_status, e.code, e.message, e.hint))
        except Exception as e:  # the answer has started: the error can only be its last line
            _log.exception("video %s failed", video.name)
            yield _dump(_error_line(500, "INTERNAL_ERROR", f"unexpected {type(e).__name__}", "see the server log"))
        finally:
            self.close()

    def stop(self, name: str) -> None:
        """The client is gone: the worker stops at its next frame."""
        if self.cancel.is_set():
            return
        self.cancel.set()
        _log.info("video %s: the client went away; stopped after %d frame(s)", name, self.frames)

    def close(self) -> None:
        """The answer is over: the worker stops (if it has not), the upload is removed, the slot and the memory
        freed."""
        self.cancel.set()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._release()


def _start_line(video: VideoResult) -> dict[str, Any]:
    return {
        "type": "start",
        "name": video.name,
        "prompts": list(video.prompts),
        "fps": video.fps,
        "every": video.every,
        "frames_total": video.expected_frames,
        "model": video.model,
    }


def _frame_line(frame: TrackedFrame, position: int) -> dict[str, Any]:
    instances = []
    for track_id, inst in frame.tracks():
        rle, _ = _rle.encode(inst.mask)
        instances.append(
            {
                "track_id": track_id,
                "prompt": inst.prompt,
                "score": inst.score,
                "box": list(inst.box),
                "segmentation": rle,
            }
        )
    return {
        "type": "frame",
        "frame": frame.index,
        "position": position,
        "time": frame.time,
        "width": frame.result.width,
        "height": frame.result.height,
        "instances": instances,
    }


PER_FRAME = ("segmentations", "bboxes", "areas")  # a track's fields that the frame lines already carried


def tracks_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``done`` line's ``tracks``: the tracks document without its tracks' per-frame fields (each frame
    line holds that frame's), so that the stream does not send every mask twice."""
    tracks = [{k: v for k, v in a.items() if k not in PER_FRAME} for a in doc["annotations"]]
    return {**doc, "annotations": tracks}


def _error_line(status: int, code: str, message: str, hint: str | None) -> dict[str, Any]:
    error = {"code": code, "message": message, **({"hint": hint} if hint else {})}
    return {"type": "error", "status": status, "error": error}


def _dump(line: dict[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":")) + "\n"
