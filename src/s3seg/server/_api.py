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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from s3seg._videoio import HEAD_BYTES, head_is_video
from s3seg.config import Settings
from s3seg.errors import FileTooLarge, ImageError, NotFound, UploadNotFound, UsageError, VideoError
from s3seg.images import check_image
from s3seg.records import result_files
from s3seg.server._auth import User
from s3seg.server._body import json_body, read_form, read_model, single
from s3seg.server._deps import ApiDep, CurrentUser, PublicAPI
from s3seg.server._schemas import Envelope, MeOut, ResultsOut, SegmentIn, TaskOut, UploadOut, refusals
from s3seg.server._tasks import task_metadata
from s3seg.server._video_tasks import (
    VIDEO_ID,
    put_beside,
    read_beside,
    receive_video,
    store_video,
    upload_name,
    video_limit_mb,
    video_task,
)
from s3seg.storage import guess_content_type
from s3seg.store import Status
from s3seg.types import Limits, SegmentOptions, SegmentRequest, safe_file_name

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
_MAX_WAIT_S = 60.0
_POLL_S = 1.0  # how often a long-poll re-reads the store (tasks run by another process)

# Each route declares the refusals it answers: 401 sign-in, 402 credits, 403 no profile, 404 no such task or
# upload, 413/415 the body or image, 422 invalid request, 429 rate limit, 503 busy, starting, store or storage
router = APIRouter(prefix="/api/v1", tags=["public API"])

__all__ = ["router"]


@router.get("/me", responses=refusals(401, 403, 503))
def me(user: CurrentUser, api: ApiDep) -> Envelope[MeOut]:
    """The signed-in user: id, tier, credits left and the rate limit."""
    account = api.store.for_user(user.id).account()
    return Envelope(
        data=MeOut(
            user_id=user.id,
            email=user.email,
            tier=user.tier,
            credits=account.credits,
            rate_limit_per_minute=api.limiter.limit(user.tier),
        )
    )


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the image or video"},
                        "kind": {
                            "type": "string",
                            "enum": ["image", "video"],
                            "description": "unset: told by the content (an animated GIF/WebP is an image); "
                            "video: an animated GIF/WebP is stored as a video",
                        },
                    },
                }
            }
        },
    }
}


@router.post("/upload", status_code=201, openapi_extra=_UPLOAD_BODY, responses=refusals(401, 413, 415, 422, 429, 503))
async def upload(request: Request, user: CurrentUser, api: ApiDep) -> Envelope[UploadOut]:
    """Store an image or a video (multipart field ``file``; which one is told by its content, and ``kind=video``
    makes an animated GIF/WebP a video); answers its ``image_id`` (a video's also as ``video_id``) for /segment."""
    settings = api.settings
    api.limiter.hit(user.id, user.tier)
    limit = int(settings.max_upload_mb * 1024 * 1024)
    async with read_form(request, max_files=2, max_fields=10) as form:
        file = single(form, "file") or single(form, "image")
        if not isinstance(file, UploadFile):
            raise UsageError("multipart body needs the image in a `file` field", hint="curl -F file=@photo.jpg")
        given = safe_file_name(file.filename)  # the user's name for it: kept with it, shown for its tasks
        name = given or "upload"
        if _as_video(single(form, "kind"), await file.read(HEAD_BYTES), name):
            return Envelope(data=await run_in_threadpool(_store_video, file, name, user, api))
        await file.seek(0)
        data = await file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(
            f"{name} is larger than {settings.max_upload_mb:g} MB", hint="resize or recompress the image"
        )
    async with api.budget.hold([data], max_pixels=settings.max_pixels, check_only=True):
        width, height = await run_in_threadpool(check_image, data, max_pixels=settings.max_pixels, name=name)
    image_id = uuid.uuid4().hex + _extension(data)
    key = _upload_key(user.id, image_id)
    await run_in_threadpool(api.storage.put, key, data, guess_content_type(image_id))
    if given is not None:
        await run_in_threadpool(put_beside, api.storage, key, {"file_name": given})
    return Envelope(
        data=UploadOut(
            image_id=image_id,
            image_url=api.storage.url(key, settings.url_expires_s),
            expires_in=settings.url_expires_s,
            width=width,
            height=height,
            bytes=len(data),
            content_type=guess_content_type(image_id),
            file_name=name,
        )
    )


def _as_video(kind: str | UploadFile | None, head: bytes, name: str) -> bool:
    """Whether an upload is a video: a video container by its first bytes, unless ``kind=image``; with
    ``kind=video`` an animated GIF/WebP too (left to itself, a GIF or WebP is an image)."""
    if kind not in (None, "", "image", "video"):
        raise UsageError("multipart field `kind` must be image or video", hint="leave it out: the content tells")
    if kind == "video":
        if not head_is_video(head, animated=True):
            raise VideoError(
                f"{name} is not a video", hint="send MP4, WebM/MKV, AVI, Ogg, MPEG-TS, or an animated GIF/WebP"
            )
        return True
    return kind != "image" and head_is_video(head)


def _store_video(file: UploadFile, name: str, user: User, api: PublicAPI) -> UploadOut:
    settings = api.settings
    with tempfile.TemporaryDirectory(prefix="s3seg-upload-") as folder:
        limit_mb = video_limit_mb(settings, user.tier)
        path = receive_video(file.file, name, Path(folder), limit_mb=limit_mb, tier=user.tier)
        video, key = store_video(api.storage, path, lambda video_id: _upload_key(user.id, video_id), name, settings)
    return UploadOut(
        kind="video",
        image_id=video.video_id,
        video_id=video.video_id,
        image_url=api.storage.url(key, settings.url_expires_s),
        expires_in=settings.url_expires_s,
        width=video.width,
        height=video.height,
        bytes=video.bytes,
        content_type=guess_content_type(video.video_id),
        file_name=name,
        frames=video.frames,
        fps=video.fps,
        duration_s=video.duration_s,
    )


@router.post(
    "/segment",
    status_code=202,
    openapi_extra=json_body(SegmentIn),
    responses=refusals(401, 402, 403, 404, 413, 422, 429, 503),
)
async def segment(http: Request, user: CurrentUser, api: ApiDep) -> Envelope[TaskOut]:
    """Start segmenting an image or tracking through a video; answers the task at once (``pending``). Wait
    with GET /tasks/{id}?wait=30, or follow GET /tasks/{id}/events."""
    body = await read_model(http, SegmentIn)  # after CurrentUser: who is asking is checked before the body
    request, metadata = _task_input(body, user, api.settings)
    cost, frames_total = api.settings.segment_cost, 1  # an image is one step: progress 0/1, then 1/1
    if "video" in metadata:
        video = await run_in_threadpool(
            video_task,
            metadata["video"],
            _upload_key(user.id, metadata["video"]),
            api.storage,
            api.settings,
            every=body.every,
            max_objects=body.max_objects,
            start=body.start,
            end=body.end,
        )
        metadata, cost, frames_total = video.metadata, video.cost, video.frames_total
    elif any(v is not None for v in (body.every, body.max_objects, body.start, body.end)):
        raise UsageError("every, max_objects, start and end are for videos", hint="give a video_id, or leave them out")
    elif "image_key" in metadata:
        if not await run_in_threadpool(api.storage.exists, metadata["image_key"]):
            raise UploadNotFound(f"no uploaded image {body.image_id}", hint="upload it first: POST /api/v1/upload")
        metadata.update(upload_name(await run_in_threadpool(read_beside, api.storage, metadata["image_key"])))
    api.limiter.hit(user.id, user.tier)
    store = api.store.for_user(user.id)
    task = await run_in_threadpool(
        lambda: store.create_task(
            list(request.prompts),
            project=body.project,
            project_id=body.project_id,
            metadata={**metadata, **task_metadata(request)},
            cost=cost,
            queue=True,
            frames_total=frames_total,
        )
    )
    api.runner.submit(task)
    return Envelope(data=api.out(task))


@router.get("/tasks/{task_id}", responses=refusals(401, 404, 422, 503))
async def task(
    task_id: str,
    user: CurrentUser,
    api: ApiDep,
    wait: Annotated[
        float, Query(ge=0, le=_MAX_WAIT_S, description="long-poll: wait up to this many seconds for the task to finish")
    ] = 0,
) -> Envelope[TaskOut]:
    """A task's status; with ``wait`` the answer comes when the task ends (or the wait is over)."""
    store = api.store.for_user(user.id)
    found = await run_in_threadpool(store.get, task_id)
    deadline = time.monotonic() + wait
    while found.status in ("pending", "processing") and (left := deadline - time.monotonic()) > 0:
        await api.runner.wait(task_id, min(left, _POLL_S))
        found = await run_in_threadpool(store.get, task_id)
    return Envelope(data=api.out(found))


@router.get("/results", responses=refusals(401, 422, 503))
async def results(
    user: CurrentUser,
    api: ApiDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Literal["pending", "processing", "done", "error"] | None = None,
    project: str | None = None,
) -> Envelope[ResultsOut]:
    """The user's results, newest first (``limit``/``offset`` pages; filter by ``status`` and ``project``)."""
    store = api.store.for_user(user.id)
    wanted: Status | None = status
    rows = await run_in_threadpool(lambda: store.list(project=project, status=wanted, limit=limit, offset=offset))
    next_offset = offset + limit if len(rows) == limit else None
    return Envelope(
        data=ResultsOut(items=[api.out(t) for t in rows], limit=limit, offset=offset, next_offset=next_offset)
    )


@router.get("/results/{task_id}", responses=refusals(401, 404, 503))
async def result(task_id: str, user: CurrentUser, api: ApiDep) -> Envelope[TaskOut]:
    """One result with time-limited URLs of its source image, mask, overlay and COCO JSON."""
    found = await run_in_threadpool(api.store.for_user(user.id).get, task_id)
    return Envelope(data=api.out(found))


_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get(
    "/results/{task_id}/files/{name}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": _BINARY, "image/jpeg": _BINARY, "application/json": _BINARY}},
        **refusals(401, 404, 422, 503),
    },
)
async def result_file(
    task_id: str, name: Literal["source", "mask", "overlay", "result", "poster"], user: CurrentUser, api: ApiDep
) -> Response:
    """Download one of a result's files through the API (works with every storage backend)."""
    found = await run_in_threadpool(api.store.for_user(user.id).get, task_id)
    key = result_files(found).get(name)
    if key is None:
        raise NotFound(
            f"task {task_id} has no {name} file (status {found.status})",
            hint="wait for it: GET /api/v1/tasks/{id}?wait=30",
        )
    data = await run_in_threadpool(api.storage.get, key)
    return Response(data, media_type=guess_content_type(key))


# ------------------------------------------------------------------------------------------ helpers
def _upload_key(user_id: str, image_id: str) -> str:
    return f"uploads/{user_id}/{image_id}"


def _extension(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except Exception as e:  # check_image already accepted it; be safe anyway
        raise ImageError("cannot tell the image format") from e
    if fmt not in _EXTENSIONS:
        raise ImageError(f"{fmt} images are not accepted for upload", hint="send JPEG, PNG or WebP")
    return _EXTENSIONS[fmt]


def _task_input(body: SegmentIn, user: User, settings: Settings) -> tuple[SegmentRequest, dict[str, Any]]:
    """The validated request, and the task metadata that says where the image is (a video: ``video``, its id)."""
    if sum(v is not None for v in (body.image_id, body.image_url, body.video_id)) != 1:
        raise UsageError("give exactly one of image_id, video_id (from /api/v1/upload) and image_url")
    prompts = ([body.text_prompt] if body.text_prompt else []) + body.text_prompts
    request = body.segment_request(prompts, SegmentOptions.from_settings(settings), Limits.from_settings(settings))
    metadata: dict[str, Any] = {}
    video_id = body.video_id or (body.image_id if body.image_id and VIDEO_ID.match(body.image_id) else None)
    if video_id is not None:  # (an upload's id names a video as well as its video_id does)
        if request.boxes:
            raise UsageError("exemplar boxes are for images", hint="leave boxes out for a video")
        metadata.update(video=video_id)
    elif body.image_id is not None:
        if not _IMAGE_ID.match(body.image_id):
            raise UsageError(f"{body.image_id!r} is not an image id", hint="use the image_id /api/v1/upload answered")
        metadata.update(image=body.image_id, image_key=_upload_key(user.id, body.image_id))
    else:
        url = body.image_url or ""
        if not url.startswith(("http://", "https://")):
            raise UsageError("image_url must be an http(s) URL", hint="or upload the file: POST /api/v1/upload")
        last = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
        metadata.update(image=last or "image", image_url=url, **upload_name({"file_name": unquote(last)}))
    return request, metadata
