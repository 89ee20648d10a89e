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
from typing import TYPE_CHECKING, Any

import httpx

from s3seg._http import HTTP, Hints, Waits, in_flight
from s3seg.errors import ServerError, UsageError
from s3seg.images import LoadedImage
from s3seg.models import Task
from s3seg.types import SegmentationResult, SegmentRequest, from_coco

if TYPE_CHECKING:
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

    def wait(self, task_id: str) -> Task:
        """Wait for a task to end (done or error), within the client's time limit."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            task = self.task(task_id, wait_s=min(_WAIT_S, max(0.0, deadline - time.monotonic())))
            if task.status in ("done", "error"):
                return task
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"task {task_id} is still {task.status}", hint=f"follow it with: s3seg tasks {task_id} --watch"
                )

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


def _json(data: bytes) -> Any:
    import json

    try:
        return json.loads(data)
    except ValueError as e:
        raise ServerError("the API sent a result that is not JSON") from e
