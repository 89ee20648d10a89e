"""The public API (the seed's "edge" layer): signed-in users upload images, start segmentation tasks,
wait for them and read their results.

Who is calling: ``Authorization: Bearer <Supabase access token>`` when the server knows a Supabase
project (JWT secret or JWKS); otherwise (local mode) the server's API key stands for one local user.
Work requests (upload, segment) count against the user's tier rate limit; a segmentation reserves its
credits when the task is created (402 when there are too few) and is charged when it succeeds.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from s3seg.config import Settings
from s3seg.errors import AuthError, FileTooLarge, ImageError, NotFound, UploadNotFound, UsageError
from s3seg.images import load_image
from s3seg.records import result_files
from s3seg.server._auth import TokenVerifier, User, bearer_token
from s3seg.server._ratelimit import RateLimiter
from s3seg.server._schemas import RequestIn
from s3seg.server._tasks import TaskRunner, task_metadata
from s3seg.storage import Storage, guess_content_type
from s3seg.store import Status, Store, Task
from s3seg.types import Limits, SegmentOptions, SegmentRequest

_IMAGE_ID = re.compile(r"^[0-9a-f]{32}\.(jpg|png|webp|bmp|tif|gif)$")
_EXTENSIONS = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "GIF": ".gif",
}
_URLS = {"source": "source_image_url", "mask": "mask_image_url", "overlay": "overlay_image_url", "result": "result_url"}
_MAX_WAIT_S = 60.0
_POLL_S = 1.0  # how often a long-poll re-reads the store (tasks run by another process)


class SegmentIn(RequestIn):
    """What to segment: an uploaded image (``image_id``) or an http(s) ``image_url``, and the prompts."""

    image_id: str | None = Field(default=None, description="from POST /api/v1/upload")
    image_url: str | None = Field(default=None, description="http(s) URL of an image (public hosts)")
    text_prompt: str | None = Field(default=None, description='one noun phrase, e.g. "dog"')
    text_prompts: list[str] = Field(default_factory=list, description="several noun phrases")
    project: str | None = Field(default=None, max_length=200, description="project name (created if new)")
    project_id: str | None = Field(default=None, description="id of one of the user's projects")


@dataclass
class PublicAPI:
    """What the routes need; built once by create_app."""

    settings: Settings
    store: Store
    storage: Storage
    runner: TaskRunner
    verifier: TokenVerifier | None
    limiter: RateLimiter
    check_key: Callable[[str | None], None]

    def out(self, task: Task) -> dict[str, Any]:
        return _task_out(task, self.storage, self.settings.url_expires_s)

    def user(self, request: Request) -> User:
        """Who is calling: the Supabase access token's user, or (local mode, no verifier) the local user
        once the API key (if the server has one) checks out."""
        if self.verifier is None:
            self.check_key(request.headers.get("x-api-key"))
            return User(
                id=self.store.user_id or self.settings.user_id or "local", tier="enterprise", email=None, role="service"
            )
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise AuthError(
                "sign in first: send Authorization: Bearer <access token>",
                hint="s3seg login, then use the CLI or SDK; or pass a Supabase access token",
            )
        return self.verifier.verify(token)


def public_router(api: Callable[[], PublicAPI]) -> APIRouter:
    """Routes under /api/v1; ``api`` gives the parts once the server has started."""
    router = APIRouter(prefix="/api/v1", tags=["public API"])

    def current_user(request: Request) -> User:
        return api().user(request)

    @router.get("/me")
    def me(user: User = Depends(current_user)) -> dict[str, Any]:
        """The signed-in user: id, tier, credits left and the rate limit."""
        parts = api()
        account = parts.store.for_user(user.id).account()
        return _ok(
            {
                "user_id": user.id,
                "email": user.email,
                "tier": user.tier,
                "credits": account.credits,
                "rate_limit_per_minute": parts.limiter.limit(user.tier),
            }
        )

    @router.post("/upload", status_code=201)
    async def upload(request: Request, user: User = Depends(current_user)) -> JSONResponse:
        """Store an image (multipart field ``file``); answers its ``image_id`` for /segment."""
        parts = api()
        parts.limiter.hit(user.id, user.tier)
        limit = int(parts.settings.max_upload_mb * 1024 * 1024)
        async with request.form(max_files=2, max_fields=10) as form:
            file = form.get("file") or form.get("image")
            if not isinstance(file, UploadFile):
                raise UsageError("multipart body needs the image in a `file` field", hint="curl -F file=@photo.jpg")
            data = await file.read(limit + 1)
            name = file.filename or "upload"
        if len(data) > limit:
            raise FileTooLarge(
                f"{name} is larger than {parts.settings.max_upload_mb:g} MB", hint="resize or recompress the image"
            )
        image = await run_in_threadpool(load_image, data, max_pixels=parts.settings.max_pixels, name=name)
        image_id = uuid.uuid4().hex + _extension(data)
        key = _upload_key(user.id, image_id)
        await run_in_threadpool(parts.storage.put, key, data, guess_content_type(image_id))
        height, width = image.array.shape[:2]
        return JSONResponse(
            _ok(
                {
                    "image_id": image_id,
                    "image_url": parts.storage.url(key, parts.settings.url_expires_s),
                    "expires_in": parts.settings.url_expires_s,
                    "width": width,
                    "height": height,
                    "bytes": len(data),
                    "content_type": guess_content_type(image_id),
                    "file_name": name,
                }
            ),
            status_code=201,
        )

    @router.post("/segment", status_code=202)
    async def segment(body: SegmentIn, user: User = Depends(current_user)) -> JSONResponse:
        """Start segmenting an image; answers the task at once (``pending``). Wait with GET /tasks/{id}?wait=30."""
        parts = api()
        request, metadata = _task_input(body, user, parts.settings)
        if body.image_id is not None and not await run_in_threadpool(parts.storage.exists, metadata["image_key"]):
            raise UploadNotFound(f"no uploaded image {body.image_id}", hint="upload it first: POST /api/v1/upload")
        parts.limiter.hit(user.id, user.tier)
        store = parts.store.for_user(user.id)
        task = await run_in_threadpool(
            lambda: store.create_task(
                list(request.prompts),
                project=body.project,
                project_id=body.project_id,
                metadata={**metadata, **task_metadata(request)},
                cost=parts.settings.segment_cost,
                queue=True,
            )
        )
        parts.runner.submit(task)
        return JSONResponse(_ok(parts.out(task)), status_code=202)

    @router.get("/tasks/{task_id}")
    async def task(
        task_id: str,
        wait: float = Query(
            0, ge=0, le=_MAX_WAIT_S, description="long-poll: wait up to this many seconds for the task to finish"
        ),
        user: User = Depends(current_user),
    ) -> dict[str, Any]:
        """A task's status; with ``wait`` the answer comes when the task ends (or the wait is over)."""
        parts = api()
        store = parts.store.for_user(user.id)
        found = await run_in_threadpool(store.get, task_id)
        deadline = time.monotonic() + wait
        while found.status in ("pending", "processing") and (left := deadline - time.monotonic()) > 0:
            await parts.runner.wait(task_id, min(left, _POLL_S))
            found = await run_in_threadpool(store.get, task_id)
        return _ok(parts.out(found))

    @router.get("/results")
    async def results(
        limit: int = Query(20, ge=1, le=100),
        offset: int = Query(0, ge=0),
        status: Literal["pending", "processing", "done", "error"] | None = None,
        project: str | None = None,
        user: User = Depends(current_user),
    ) -> dict[str, Any]:
        """The user's results, newest first (``limit``/``offset`` pages; filter by ``status`` and ``project``)."""
        parts = api()
        store = parts.store.for_user(user.id)
        wanted: Status | None = status
        rows = await run_in_threadpool(lambda: store.list(project=project, status=wanted, limit=limit, offset=offset))
        return _ok(
            {
                "items": [parts.out(t) for t in rows],
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if len(rows) == limit else None,
            }
        )

    @router.get("/results/{task_id}")
    async def result(task_id: str, user: User = Depends(current_user)) -> dict[str, Any]:
        """One result with time-limited URLs of its source image, mask, overlay and COCO JSON."""
        parts = api()
        found = await run_in_threadpool(parts.store.for_user(user.id).get, task_id)
        return _ok(parts.out(found))

    @router.get(
        "/results/{task_id}/files/{name}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "application/json": {}}}},
    )
    async def result_file(
        task_id: str, name: Literal["source", "mask", "overlay", "result"], user: User = Depends(current_user)
    ) -> Response:
        """Download one of a result's files through the API (works with every storage backend)."""
        parts = api()
        found = await run_in_threadpool(parts.store.for_user(user.id).get, task_id)
        key = result_files(found).get(name)
        if key is None:
            raise NotFound(
                f"task {task_id} has no {name} file (status {found.status})",
                hint="wait for it: GET /api/v1/tasks/{id}?wait=30",
            )
        data = await run_in_threadpool(parts.storage.get, key)
        return Response(data, media_type=guess_content_type(key))

    return router


# ------------------------------------------------------------------------------------------ helpers
def _ok(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}


def _upload_key(user_id: str, image_id: str) -> str:
    return f"uploads/{user_id}/{image_id}"


def _extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except Exception as e:  # load_image already accepted it; be safe anyway
        raise ImageError("cannot tell the image format") from e
    if fmt not in _EXTENSIONS:
        raise ImageError(f"{fmt} images are not accepted for upload", hint="send JPEG, PNG or WebP")
    return _EXTENSIONS[fmt]


def _task_input(body: SegmentIn, user: User, settings: Settings) -> tuple[SegmentRequest, dict[str, Any]]:
    """The validated request, and the task metadata that says where the image is."""
    if (body.image_id is None) == (body.image_url is None):
        raise UsageError("give exactly one of image_id (from /api/v1/upload) and image_url")
    prompts = ([body.text_prompt] if body.text_prompt else []) + body.text_prompts
    request = body.segment_request(prompts, SegmentOptions.from_settings(settings), Limits.from_settings(settings))
    metadata: dict[str, Any] = {}
    if body.image_id is not None:
        if not _IMAGE_ID.match(body.image_id):
            raise UsageError(f"{body.image_id!r} is not an image id", hint="use the image_id /api/v1/upload answered")
        metadata.update(image=body.image_id, image_key=_upload_key(user.id, body.image_id))
    else:
        url = body.image_url or ""
        if not url.startswith(("http://", "https://")):
            raise UsageError("image_url must be an http(s) URL", hint="or upload the file: POST /api/v1/upload")
        metadata.update(image=url.split("?", 1)[0].rsplit("/", 1)[-1] or "image", image_url=url)
    return request, metadata


def _task_out(task: Task, storage: Storage, expires_s: int) -> dict[str, Any]:
    """A task as clients see it: the stored keys become time-limited URLs (``*_image_url``, ``result_url``),
    and ``files`` gives download paths through this API, which work with every storage backend."""
    out = task.to_dict()
    out["task_id"] = task.id
    out["metadata"] = {k: v for k, v in task.metadata.items() if k not in ("image_key", "image_url", "coco")}
    keys = result_files(task) if task.status == "done" else {}
    for name, column in _URLS.items():
        out[column] = storage.url(keys[name], expires_s) if name in keys else None
    out["files"] = {name: f"/api/v1/results/{task.id}/files/{name}" for name in keys}
    return out
