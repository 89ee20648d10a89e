"""The server: FastAPI app factory, the inference routes (the seed's GPU backend), errors and limits; the
public API's routes live in _api.py, its background tasks in _tasks.py.

Every response is one envelope: ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {"code": "...", "message": "...", "hint": "..."}}`` with a stable ``code``.
Results are COCO documents (masks as compressed RLE, or PNG on request), the same format the CLI
writes, so ``s3seg.from_coco`` reads them back into the same result objects.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from s3seg import _rle
from s3seg.config import Settings
from s3seg.engine import Request as EngineRequest
from s3seg.engine import Sam3Engine, SegmentOptions
from s3seg.errors import AuthError, PayloadTooLarge, S3SegError, Unauthorized, UsageError
from s3seg.images import LoadedImage, load_image
from s3seg.server._api import PublicAPI, public_router
from s3seg.server._auth import TokenVerifier
from s3seg.server._batcher import Batcher
from s3seg.server._events import events_router
from s3seg.server._fetch import fetch
from s3seg.server._gateway import WorkerPool
from s3seg.server._ratelimit import RateLimiter
from s3seg.server._schemas import RequestIn
from s3seg.server._tasks import Infer, TaskLimits, TaskRunner
from s3seg.server._web import mount_web
from s3seg.storage import Storage
from s3seg.store import Store
from s3seg.types import Limits, SegmentationResult, SegmentRequest, box_from_string, to_coco

API_KEY_HEADER = Unauthorized.auth_scheme  # "X-API-Key"
_BODY_HINT = "resize or recompress the image, or raise the server's S3SEG_MAX_BODY_MB"
# Declared as a security scheme so that /docs offers "Authorize"; checked in require_key (constant time).
_API_KEY = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")


# ------------------------------------------------------------------------------------------ schemas
class PredictIn(RequestIn):
    """One image (``image`` base64 or ``image_url``) and what to look for in it."""

    image: str | None = Field(default=None, description="the encoded image file, base64")
    image_url: str | None = Field(default=None, description="http(s) URL of the image (public hosts only)")
    name: str | None = Field(default=None, description="a name echoed back as images[0].file_name")
    prompts: list[str] = Field(default_factory=list, description="text prompts (noun phrases)")
    mask_format: Literal["rle", "png"] = "rle"


class BatchIn(BaseModel):
    items: list[PredictIn] = Field(description="images, each with its own prompts and options")


class ErrorOut(BaseModel):
    code: str
    message: str
    hint: str | None = None


class Envelope(BaseModel):
    ok: bool
    data: Any | None = None
    error: ErrorOut | None = None


_MULTIPART_FIELDS = {
    "prompts": {"type": "array", "items": {"type": "string"}},
    "boxes": {"type": "array", "items": {"type": "string"}, "description": "x0,y0,x1,y1 (prefix neg: for negative)"},
    "threshold": {"type": "number"},
    "mask_threshold": {"type": "number"},
    "max_instances": {"type": "integer"},
    "nms_iou": {"type": "number"},
    "mask_format": {"type": "string", "enum": ["rle", "png"]},
}


def _body_doc(json_model: type[BaseModel], file_field: str, many: bool) -> dict[str, Any]:
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    if many:
        file_schema = {"type": "array", "items": file_schema}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [file_field],
                        "properties": {file_field: file_schema, **_MULTIPART_FIELDS},
                    }
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


# ------------------------------------------------------------------------------------------- errors
def _error(
    status: int, code: str, message: str, hint: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"ok": False, "error": {"code": code, "message": message, **({"hint": hint} if hint else {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def _s3seg_error(_: Request, exc: Exception) -> JSONResponse:
    """Every s3seg error answers its own status and code (see the table in s3seg.errors)."""
    assert isinstance(exc, S3SegError)
    headers: dict[str, str] = {}
    if isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = exc.auth_scheme
    if exc.http_status in (429, 503):
        headers["Retry-After"] = str(exc.retry_after_s or 1)
    return _error(exc.http_status, exc.code, exc.message, exc.hint, headers or None)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return _error(422, "VALIDATION_ERROR", f"{where or 'request'}: {first.get('msg', 'invalid')}")


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
    return _error(exc.status_code, code, str(exc.detail))


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return _error(500, "INTERNAL_ERROR", f"unexpected {type(exc).__name__}", "see the server log")


class _BodyLimit:
    """Refuse bodies over ``max_bytes``: by Content-Length at once, and while streaming otherwise."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            too_large = PayloadTooLarge(self._message(int(declared)), hint=_BODY_HINT)
            response = _error(too_large.http_status, too_large.code, too_large.message, too_large.hint)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._message(seen), hint=_BODY_HINT)
            return message

        await self.app(scope, limited, send)

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes"


# ---------------------------------------------------------------------------------------------- app
def create_app(
    engine: Sam3Engine | None,
    settings: Settings | None = None,
    *,
    storage: Storage | None = None,
    store: Store | None = None,
    verifier: TokenVerifier | None = None,
    workers: WorkerPool | None = None,
) -> FastAPI:
    """The server: inference routes around an already loaded ``engine`` (none in gateway mode, where
    ``workers`` run the model), and the public API for users. Storage, store and token verifier come
    from the settings unless given."""
    settings = settings or Settings()
    if engine is None and workers is None:
        raise UsageError("the server needs a model or GPU workers", hint="set S3SEG_MODEL or S3SEG_WORKERS")
    max_bytes = int(settings.max_body_mb * 1024 * 1024)
    verifier = verifier or TokenVerifier.from_settings(settings)
    engine_device = str(engine.device) if engine is not None else None
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        from s3seg.storage import storage_from_settings
        from s3seg.store import store_from_settings

        parts_storage = storage if storage is not None else await run_in_threadpool(storage_from_settings, settings)
        parts_store = store if store is not None else await run_in_threadpool(store_from_settings, settings)
        if engine is not None:
            state["batcher"] = Batcher(
                engine, max_batch=settings.max_batch, max_queue=settings.max_queue, wait_s=settings.batch_wait_ms / 1000
            )
        runner = TaskRunner(
            parts_store,
            parts_storage,
            workers or _in_process(state["batcher"]),
            _task_limits(settings),
            workers=settings.task_workers,
        )
        state["api"] = PublicAPI(
            settings, parts_store, parts_storage, runner, verifier, RateLimiter(settings.rate_limits), check_key
        )
        await runner.start()
        logging.getLogger("uvicorn.error").info(
            "s3seg: %s; users: %s; results: %s; files: %s",
            f"gateway to {len(workers.urls)} GPU worker(s)" if workers is not None else f"model on {engine_device}",
            "Supabase access tokens"
            if verifier is not None
            else "the API key (local mode)"
            if settings.api_key
            else "anyone (local mode, no API key)",
            parts_store.name,
            parts_storage.name,
        )
        try:
            yield
        finally:
            await runner.stop()  # a task cut short stays processing and is requeued after a restart
            if "batcher" in state:
                await run_in_threadpool(state["batcher"].close)  # finishes in-flight work
            # The server owns its backends, given or built: it closes them (each close is idempotent).
            for part in (verifier, workers, parts_store, parts_storage):
                if part is not None:
                    part.close()

    app = FastAPI(
        title="s3seg",
        version=_version(),
        lifespan=lifespan,
        description="SAM3 text-prompted segmentation. Inference routes need `X-API-Key` when the server "
        "has a key; the public API needs `Authorization: Bearer <Supabase access token>` "
        "(or the API key in local mode).",
        responses={401: {"model": Envelope}, 422: {"model": Envelope}, 503: {"model": Envelope}},
    )
    app.add_exception_handler(S3SegError, _s3seg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", API_KEY_HEADER],
            expose_headers=["Retry-After"],
            max_age=600,
        )

    key = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def check_key(given_key: str | None) -> None:
        if key is None:
            return
        given = (given_key or "").encode()
        if not hmac.compare_digest(given, key):
            raise Unauthorized(
                "missing or wrong API key" if given else "this server needs an API key",
                hint=f"send the {API_KEY_HEADER} header (s3seg: --api-key or S3SEG_API_KEY)",
            )

    def require_key(given_key: str | None = Security(_API_KEY)) -> None:
        check_key(given_key)

    @app.get("/health", response_model=Envelope, tags=["server"])
    def health() -> dict[str, Any]:
        """Liveness, the device, GPU memory and queue statistics (or the GPU workers). Needs no key."""
        batcher = state.get("batcher")
        return {
            "ok": True,
            "data": {
                "status": "ok",
                "model_loaded": engine is not None,
                "device": str(engine.device) if engine is not None else None,
                "gpu_memory": _gpu_memory(engine) if engine is not None else None,
                "queue": vars(batcher.stats) if batcher else None,
                "workers": len(workers.urls) if workers is not None else None,
                "auth": "supabase" if verifier is not None else "api-key",
            },
        }

    app.include_router(public_router(lambda: state["api"]))
    app.include_router(events_router(lambda: state["api"]))
    if engine is not None:
        app.include_router(_inference_router(engine, settings, state, require_key))
    mount_web(app, settings, supabase=verifier is not None)  # last: API routes keep priority
    return app


def _inference_router(
    engine: Sam3Engine, settings: Settings, state: dict[str, Any], require_key: Callable[..., None]
) -> APIRouter:
    """The GPU backend's routes (X-API-Key): /model/info, /predict, /predict/batch."""
    max_bytes = int(settings.max_body_mb * 1024 * 1024)
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_key)])

    @api.get("/model/info", response_model=Envelope, tags=["model"])
    def model_info() -> dict[str, Any]:
        """The model, its device and dtype, and this server's request limits."""
        info = engine.info
        return {
            "ok": True,
            "data": {
                **vars(info),
                "limits": {
                    "max_body_bytes": max_bytes,
                    "max_prompts": settings.max_prompts,
                    "max_prompt_chars": settings.max_prompt_chars,
                    "max_boxes": settings.max_boxes,
                    "max_images": settings.max_images,
                    "max_pixels": settings.max_pixels,
                },
            },
        }

    async def segment(items: list[tuple[PredictIn, bytes]]) -> dict[str, Any]:
        requests = [await _engine_request(item, data, settings) for item, data in items]
        results = await state["batcher"].run(requests)
        # RLE encoding is CPU work: off the event loop, so other requests keep being parsed and queued
        doc = await run_in_threadpool(_coco, results, [item.mask_format for item, _ in items])
        return {"ok": True, "data": doc}

    @api.post("/predict", response_model=Envelope, tags=["model"], openapi_extra=_body_doc(PredictIn, "image", False))
    async def predict(request: Request) -> dict[str, Any]:
        """Segment one image: multipart (``image`` file + fields) or JSON (base64 ``image`` or ``image_url``)."""
        [item] = await _read_items(request, settings, batch=False)
        return await segment([item])

    @api.post(
        "/predict/batch", response_model=Envelope, tags=["model"], openapi_extra=_body_doc(BatchIn, "images", True)
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        """Segment several images in one call (multipart ``images`` files sharing the fields, or JSON items)."""
        return await segment(await _read_items(request, settings, batch=True))

    return api


def _in_process(batcher: Batcher) -> Infer:
    async def infer(image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        [result] = await batcher.run(
            [EngineRequest(image.array, request.prompts, request.boxes, image.name, request.options)]
        )
        return result

    return infer


def _task_limits(settings: Settings) -> TaskLimits:
    return TaskLimits(
        timeout_s=settings.task_timeout_s,
        attempts=settings.task_attempts,
        max_pixels=settings.max_pixels,
        max_fetch_bytes=int(settings.max_upload_mb * 1024 * 1024),
        url_timeout_s=settings.url_timeout_s,
        allow_private_urls=settings.allow_private_urls,
    )


# ------------------------------------------------------------------------------------------ helpers
async def _read_items(request: Request, settings: Settings, *, batch: bool) -> list[tuple[PredictIn, bytes]]:
    """Parse either body kind into (fields, encoded image) pairs; URLs are fetched here."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            payload = json.loads(await request.body())
        except ValueError as e:
            raise UsageError(f"body is not valid JSON: {e}") from e
        items = BatchIn.model_validate(payload).items if batch else [PredictIn.model_validate(payload)]
        _check_count(len(items), settings)
        return [(item, await _image_bytes(item, settings)) for item in items]
    if kind == "multipart/form-data":
        # one file more than allowed so that too many files get our own clear error, not the parser's
        async with request.form(max_files=settings.max_images + 1, max_fields=1000) as form:  # closes temp files
            files = [f for f in form.getlist("images" if batch else "image") if isinstance(f, UploadFile)]
            if not files:
                raise UsageError(f"multipart body needs {'image files in `images`' if batch else 'an `image` file'}")
            _check_count(len(files), settings)
            fields = _form_fields(form)
            return [(PredictIn.model_validate({**fields, "name": f.filename}), await f.read()) for f in files]
    raise UsageError("send multipart/form-data or application/json", hint="curl -F image=@photo.jpg -F prompts=dog …")


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise UsageError("the batch holds no images")
    limit = min(settings.max_images, settings.max_queue)  # more than the queue holds could never run
    if n > limit:
        raise UsageError(f"{n} images in one request; at most {limit}", hint="split the batch")


def _form_fields(form: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompts": [p for p in form.getlist("prompts") if isinstance(p, str)]}
    fields["boxes"] = [box_from_string(v).to_dict() for v in form.getlist("boxes") if isinstance(v, str)]
    for name in ("threshold", "mask_threshold", "max_instances", "nms_iou", "mask_format"):
        value = form.get(name)
        if isinstance(value, str) and value != "":
            fields[name] = value
    return fields


async def _image_bytes(item: PredictIn, settings: Settings) -> bytes:
    if (item.image is None) == (item.image_url is None):
        raise UsageError("give exactly one of `image` (base64) and `image_url`")
    if item.image_url is not None:
        return await run_in_threadpool(
            fetch,
            item.image_url,
            max_bytes=int(settings.max_body_mb * 1024 * 1024),
            timeout_s=settings.url_timeout_s,
            allow_private=settings.allow_private_urls,
        )
    try:
        return base64.b64decode(item.image or "", validate=True)
    except (binascii.Error, ValueError) as e:
        raise UsageError("`image` is not valid base64") from e


async def _engine_request(item: PredictIn, data: bytes, settings: Settings) -> EngineRequest:
    request = item.segment_request(item.prompts, SegmentOptions.from_settings(settings), Limits.from_settings(settings))
    image = await run_in_threadpool(load_image, data, max_pixels=settings.max_pixels, name=item.name or "upload")
    return EngineRequest(image.array, request.prompts, request.boxes, item.name, request.options)


def _coco(results: list[SegmentationResult], formats: list[str]) -> dict[str, Any]:
    """Results as one COCO document; images that asked for PNG masks get ``mask_png`` (base64, 1-bit)
    instead of RLE ``segmentation``."""
    doc = to_coco(results)
    annotations = iter(doc["annotations"])  # in result order, instance order
    for result, fmt in zip(results, formats, strict=True):
        for inst in result.instances:
            ann = next(annotations)
            if fmt == "png":
                del ann["segmentation"]
                ann["mask_png"] = base64.b64encode(_rle.encode_png(inst.mask)).decode("ascii")
    return doc


def _gpu_memory(engine: Sam3Engine) -> dict[str, float] | None:
    import torch

    if engine.device.type != "cuda":
        return None
    mb = 1024 * 1024
    free, total = torch.cuda.mem_get_info(engine.device)
    return {
        "allocated_mb": torch.cuda.memory_allocated(engine.device) / mb,
        "reserved_mb": torch.cuda.memory_reserved(engine.device) / mb,
        "free_mb": free / mb,
        "total_mb": total / mb,
    }


def _version() -> str:
    from s3seg import __version__

    return __version__
