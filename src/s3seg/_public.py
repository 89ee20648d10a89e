"""Talking to a public s3seg API (``s3seg serve`` in front of users) as a signed-in user.

Each image is uploaded, segmented as a task, waited for (long-poll, no busy polling) and its COCO
result read back, so the SDK and CLI get the same result objects as local inference, and the results
stay on the server (``s3seg results``). Who is calling: the ``s3seg login`` session (renewed when it
expires) or ``S3SEG_SUPABASE_ACCESS_TOKEN``; a server in local mode takes the API key instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import httpx

from s3seg._http import HTTP, Hints, Waits, in_flight
from s3seg.errors import S3SegError, ServerError, UsageError
from s3seg.images import LoadedImage
from s3seg.models import Task
from s3seg.types import SegmentationResult, SegmentRequest, from_coco

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from s3seg.config import Settings

_WAIT_S = 30.0  # one long-poll
# 429 (rate limit) and 503 (busy) are waited out for as long as the client's time limit allows, so a folder
# of images on a free tier just goes slower.
_LIMITED = Waits(statuses=(429, 503), retries=None, max_wait_s=60.0)
_HINTS = Hints(timeout="raise S3SEG_REQUEST_TIMEOUT_S", unreachable="check --api / S3SEG_API_URL")


class PublicClient:
    """The public API's routes, and a :class:`s3seg.client.Backend` that keeps every image as a task."""

    keeps_results = True

    def __init__(
        self,
        url: str,
        headers: Callable[[], Mapping[str, str]],
        *,
        timeout_s: float,
        http: httpx.Client | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"API URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = HTTP(
            self.url,
            where=f"the s3seg API at {self.url}",
            hints=_HINTS,
            timeout_s=timeout_s,
            headers=headers,
            waits=_LIMITED,
            http=http,
            read_timeout_s=timeout_s + _WAIT_S,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> PublicClient:
        def headers() -> dict[str, str]:
            if settings.supabase_url or settings.supabase_access_token:
                from s3seg._session import access_token

                return {"Authorization": f"Bearer {access_token(settings)}"}
            key = settings.api_key.get_secret_value() if settings.api_key else None
            return {"X-API-Key": key} if key else {}

        return cls(settings.api_url or "", headers, timeout_s=settings.request_timeout_s)

    def close(self) -> None:
        self.http.close()

    # --- the routes ----------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """The signed-in user (proves the URL and the sign-in work)."""
        data: dict[str, Any] = self.http.call("GET", "/api/v1/me")
        return data

    def upload(self, data: bytes, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.http.call("POST", "/api/v1/upload", files={"file": (name, data)})
        return info

    def upload_file(self, path: Path, *, kind: Literal["image", "video"] | None = None) -> dict[str, Any]:
        """Upload a file from disk, streamed (a video: its ``video_id`` and frame count come back). The server
        tells images from videos by content; ``kind="video"`` makes an animated GIF/WebP a video."""
        data = {"kind": kind} if kind else None
        with path.open("rb") as f:
            info: dict[str, Any] = self.http.call("POST", "/api/v1/upload", files={"file": (path.name, f)}, data=data)
        return info

    def start_video(self, video_id: str, prompts: Sequence[str], **options: Unpack[VideoTaskOptions]) -> Task:
        """A task tracking ``prompts`` through an uploaded video (options left out or None: the server's
        defaults); ``start``/``end``: seconds or frame numbers (``"75f"``), as ``s3seg segment --start/--end``."""
        body = {
            "video_id": video_id,
            "text_prompts": list(prompts),
            **{k: v for k, v in options.items() if v is not None},
        }
        return Task.from_dict(self.http.call("POST", "/api/v1/segment", json=body))

    def start(self, image_id: str, request: SegmentRequest, project: str | None = None) -> Task:
        body = {
            "image_id": image_id,
            "text_prompts": list(request.prompts),
            "project": project,
            "boxes": [b.to_dict() for b in request.boxes],
            **request.chosen_options(),  # the server's defaults apply to the others
        }
        return Task.from_dict(self.http.call("POST", "/api/v1/segment", json=body))

    def task(self, task_id: str, wait_s: float = 0) -> Task:
        return Task.from_dict(self.http.call("GET", f"/api/v1/tasks/{task_id}", params={"wait": wait_s}))

    def wait(self, task_id: str, on_progress: OnProgress | None = None) -> Task:
        """Wait for a task to end (done or error), following its live events (Server-Sent Events) and, should
        those fail (a proxy that buffers them, an older server), long-polling. ``on_progress(status, done,
        total)`` hears every change. The client's time limit counts from the last sign of progress, so a
        long video that keeps moving is waited for."""
        watch = _Watch(task_id, self.timeout_s, on_progress)
        try:
            return self._follow(watch)
        except _NoStream:
            pass
        while True:
            task = self.task(task_id, wait_s=min(_WAIT_S, watch.left()))
            watch.seen(task.status, task.frames_done, task.frames_total)
            if task.status in ("done", "error"):
                return task

    def _follow(self, watch: _Watch) -> Task:
        """The task's events until its final one; a dropped stream is resumed with ``Last-Event-ID``.
        Raises _NoStream when the events cannot be had at all (the caller long-polls instead)."""
        from s3seg import _sse

        last_id: str | None = None
        drops = 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                with self.http.stream("GET", f"/api/v1/tasks/{watch.task_id}/events", headers=headers) as response:
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        raise _NoStream
                    for event in _sse.events(response.iter_lines(), on_line=watch.left):
                        last_id = event.id or last_id
                        data = event.json()
                        if event.event == "status":
                            watch.seen(data["status"], *watch.steps)
                        elif event.event == "progress":
                            watch.seen("processing", int(data["done"]), int(data["total"]))
                        elif event.event == "done":
                            task = Task.from_dict(data)
                            watch.seen(task.status, task.frames_done, task.frames_total)
                            return task
                        elif event.event == "error":
                            return self.task(watch.task_id)
            except S3SegError as e:  # (a 404 may be a server without the route: the long-poll tells)
                if watch.expired() or e.http_status in (401, 402, 403):
                    raise  # out of time, or refused: the long-poll would say the same
                if last_id is None:
                    raise _NoStream from e
            except (httpx.HTTPError, ValueError, KeyError) as e:  # broken mid-stream, or not our events
                if last_id is None:
                    raise _NoStream from e
            drops += 1  # the stream ended without a final event, or broke: resume where it was
            if drops > _MAX_DROPS:
                raise _NoStream
            time.sleep(min(1.0, watch.left()))

    def results(
        self, *, limit: int = 20, offset: int = 0, status: str | None = None, project: str | None = None
    ) -> list[Task]:
        params = {
            k: v
            for k, v in {"limit": limit, "offset": offset, "status": status, "project": project}.items()
            if v is not None
        }
        return [Task.from_dict(row) for row in self.http.call("GET", "/api/v1/results", params=params)["items"]]

    def result(self, task_id: str) -> tuple[Task, dict[str, str]]:
        """A result and the time-limited URLs of its files."""
        row = self.http.call("GET", f"/api/v1/results/{task_id}")
        urls = {
            name: row[column]
            for name, column in (
                ("source", "source_image_url"),
                ("mask", "mask_image_url"),
                ("overlay", "overlay_image_url"),
                ("result", "result_url"),
                ("poster", "poster_url"),
            )
            if row.get(column)
        }
        return Task.from_dict(row), urls

    def file(self, task_id: str, name: str) -> bytes:
        response = self.http.send("GET", f"/api/v1/results/{task_id}/files/{name}")
        if response.status_code != 200:
            self.http.data(response)
        return response.content

    # --- segmentation, as a backend of s3seg.Client --------------------------------------------
    def segment(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[tuple[SegmentationResult, str | None]]:
        """Each image uploaded and segmented as a task (filed under ``project``); the results and task ids."""

        def one(image: LoadedImage) -> tuple[SegmentationResult, str | None]:
            name = image.name or "image.png"
            uploaded = self.upload(image.file_bytes(), name.rsplit("/", 1)[-1])
            task = self.wait(self.start(uploaded["image_id"], request, project).id)
            if task.status == "error":
                raise ServerError(f"the server could not segment {name}: {task.error}", status=422, code="TASK_ERROR")
            [result] = from_coco(_json(self.file(task.id, "result")))
            return dataclasses.replace(result, image=image.name), task.id

        return in_flight(one, images)


class VideoTaskOptions(TypedDict, total=False):
    """What a video task may set (see :meth:`PublicClient.start_video`)."""

    every: int | None
    max_objects: int | None
    threshold: float | None
    project: str | None
    start: str | None
    end: str | None


OnProgress = Callable[[str, int, int], None]
_MAX_DROPS = 20


class _NoStream(Exception):
    """The task's events cannot be followed (no such route, not a stream, a broken connection): long-poll."""


class _Watch:
    """One wait for a task: what it last reported, and the time limit that each change restarts."""

    def __init__(self, task_id: str, timeout_s: float, on_progress: OnProgress | None) -> None:
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.state: tuple[str, int, int] | None = None
        self.steps = (0, 0)
        self.deadline = time.monotonic() + timeout_s

    def seen(self, status: str, done: int, total: int) -> None:
        if (status, done, total) == self.state:
            return
        self.state, self.steps = (status, done, total), (done, total)
        self.deadline = time.monotonic() + self.timeout_s
        if self.on_progress is not None:
            self.on_progress(status, done, total)

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def left(self) -> float:
        """Seconds left; ServerError once the task has not moved for the client's time limit."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            status = self.state[0] if self.state else "running"
            raise ServerError(
                f"task {self.task_id} is still {status} (no progress for {self.timeout_s:g} s)",
                hint=f"follow it with: s3seg tasks {self.task_id} --watch",
            )
        return left


def _json(data: bytes) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError as e:
        raise ServerError("the API sent a result that is not JSON") from e
