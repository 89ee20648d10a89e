"""The server: ``create_app`` builds the FastAPI app around the backends it is given (a loaded model or GPU
workers, storage, store, token verifier), keeps them on ``app.state.server`` and closes them when it
stops; errors, the body limit and ``/health`` live here. The routes: ``_predict.py`` (the GPU backend,
``X-API-Key``), ``_api.py`` (the public API for signed-in users), ``_events.py`` (live task events), and
``_web.py`` (the page); what they depend on, in ``_deps.py``; what they read and answer, in ``_schemas.py``.

Every response is one envelope: ``{"ok": true, "data": ...}`` or
``{"ok": false, "error": {"code": "...", "message": "...", "hint": "..."}}`` with a stable ``code``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from s3seg.config import Settings
from s3seg.engine import Request as EngineRequest
from s3seg.engine import Sam3Engine
from s3seg.errors import AuthError, PayloadTooLarge, S3SegError, UsageError
from s3seg.images import LoadedImage
from s3seg.server import _api, _events, _predict, _video
from s3seg.server._auth import TokenVerifier
from s3seg.server._batcher import Batcher
from s3seg.server._body import resolve_bodies
from s3seg.server._deps import API_KEY_HEADER, PublicAPI, Server, ServerDep
from s3seg.server._gateway import WorkerPool
from s3seg.server._memory import MemoryBudget
from s3seg.server._ratelimit import RateLimiter
from s3seg.server._schemas import (
    BatchIn,
    Envelope,
    ErrorEnvelope,
    GPUMemoryOut,
    HealthOut,
    PredictIn,
    QueueOut,
    SegmentIn,
    VideoLineOut,
)
from s3seg.server._tasks import Infer, TaskLimits, TaskRunner
from s3seg.server._video_tasks import VideoRunner
from s3seg.server._web import WebConfig, mount_web
from s3seg.storage import Storage
from s3seg.store import Store
from s3seg.types import SegmentationResult, SegmentRequest

if TYPE_CHECKING:
    from s3seg.engine._video import Sam3VideoEngine

__all__ = ["API_KEY_HEADER", "create_app"]
_BODY_HINT = "resize or recompress the image, or raise the server's S3SEG_MAX_BODY_MB"

health_router = APIRouter(tags=["server"])


@health_router.get("/health")
def health(server: ServerDep) -> Envelope[HealthOut]:
    """Liveness, the device, GPU memory and queue statistics (or the GPU workers). Needs no key."""
    engine, batcher = server.engine, server.batcher
    memory = _gpu_memory(engine) if engine is not None else None
    return Envelope(
        data=HealthOut(
            model_loaded=engine is not None,
            device=str(engine.device) if engine is not None else None,
            gpu_memory=GPUMemoryOut(**memory) if memory else None,
            queue=QueueOut(**vars(batcher.stats)) if batcher else None,
            workers=len(server.workers.urls) if server.workers is not None else None,
            auth="supabase" if server.verifier is not None else "api-key",
        )
    )


# ---------------------------------------------------------------------------------------------- app
def create_app(
    engine: Sam3Engine | None,
    settings: Settings | None = None,
    *,
    storage: Storage | None = None,
    store: Store | None = None,
    verifier: TokenVerifier | None = None,
    workers: WorkerPool | None = None,
    video_engine: Sam3VideoEngine | None = None,
) -> FastAPI:
    """The server: inference routes around an already loaded ``engine`` (none in gateway mode, where
    ``workers`` run the model), and the public API for users. Storage, store and token verifier come
    from the settings unless given; the server closes them all when it stops. The video model is
    ``video_engine``, or loaded from the settings by the first video request."""
    settings = settings or Settings()
    if engine is None and workers is None:
        raise UsageError("the server needs a model or GPU workers", hint="set S3SEG_MODEL or S3SEG_WORKERS")
    app = FastAPI(
        title="s3seg",
        version=_version(),
        lifespan=_lifespan,
        description="SAM3 text-prompted segmentation. Inference routes need `X-API-Key` when the server "
        "has a key; the public API needs `Authorization: Bearer <Supabase access token>` "
        "(or the API key in local mode).",
    )
    verifier = verifier or TokenVerifier.from_settings(settings)
    app.state.server = Server(settings, engine, workers, verifier, storage, store, video_engine=video_engine)
    app.add_exception_handler(S3SegError, _s3seg_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(_LastResort)  # inside CORS and the body limit: a 500 keeps their headers
    # an upload may be a video: its body may reach the largest tier's video limit (checked per user after)
    largest_video = max(settings.max_video_upload_mb.values(), default=0.0)
    upload_bytes = int((max(settings.max_body_mb, largest_video) + 1) * 1024 * 1024)
    paths = {
        "/api/v1/upload": (upload_bytes, _BODY_HINT),
        _video.PATH: (int(settings.max_video_mb * 1024 * 1024), _video.BODY_HINT),
    }
    app.add_middleware(_BodyLimit, max_bytes=int(settings.max_body_mb * 1024 * 1024), paths=paths)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", API_KEY_HEADER],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.include_router(health_router)
    app.include_router(_api.router)
    app.include_router(_events.router)
    if engine is not None:
        app.include_router(_predict.router)
        app.include_router(_video.router)
    mount_web(app, _web_config(settings, verifier))  # last: API routes keep priority
    resolve_bodies(app, [PredictIn, BatchIn, SegmentIn, ErrorEnvelope, VideoLineOut])
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Build what was not given (storage, store), the batcher and the task runner; on the way out stop
    them and close every backend, given or built (each ``close`` is idempotent)."""
    from s3seg.storage import storage_from_settings
    from s3seg.store import store_from_settings

    server: Server = app.state.server
    settings = server.settings
    built_storage, built_store = server.storage is None, server.store is None
    if server.storage is None:
        server.storage = await run_in_threadpool(storage_from_settings, settings)
    if server.store is None:
        server.store = await run_in_threadpool(store_from_settings, settings)
    storage, store = server.storage, server.store
    if server.engine is not None:
        wait_s = settings.batch_wait_ms / 1000
        server.batcher = Batcher(
            server.engine, max_batch=settings.max_batch, max_queue=settings.max_queue, wait_s=wait_s
        )
    budget = server.budget = MemoryBudget(settings.memory_budget_bytes(), wait_s=settings.memory_wait_s)
    infer = server.workers or _in_process(server.batcher)
    video = VideoRunner(server.video, storage, settings, workers=server.workers)
    runner = TaskRunner(
        store, storage, infer, _task_limits(settings), budget, workers=settings.task_workers, video=video
    )
    limiter = RateLimiter(settings.rate_limits)
    server.api = PublicAPI(settings, store, storage, runner, server.verifier, limiter, budget)
    await runner.start()
    _log_start(server)
    try:
        yield
    finally:
        await runner.stop()  # a task cut short stays processing and is requeued after a restart
        if server.batcher is not None:
            await run_in_threadpool(server.batcher.close)  # finishes in-flight work
        for part in (server.verifier, server.workers, store, storage):
            if part is not None:
                part.close()
        server.api = server.batcher = server.budget = None  # (requests after this answer 503 STARTING)
        if built_storage:  # a restart builds them afresh, as the first start did
            server.storage = None
        if built_store:
            server.store = None


def _log_start(server: Server) -> None:
    workers, engine, verifier = server.workers, server.engine, server.verifier
    users = (
        "Supabase access tokens"
        if verifier is not None
        else "the API key (local mode)"
        if server.settings.api_key
        else "anyone (local mode, no API key)"
    )
    logging.getLogger("uvicorn.error").info(
        "s3seg: %s; users: %s; results: %s; files: %s",
        f"gateway to {len(workers.urls)} GPU worker(s)" if workers else f"model on {engine and engine.device}",
        users,
        server.store.name if server.store else None,
        server.storage.name if server.storage else None,
    )


def _in_process(batcher: Batcher | None) -> Infer:
    assert batcher is not None  # a server without GPU workers has a model, and so a batcher

    async def infer(image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        [result] = await batcher.run(
            [EngineRequest(image.array, request.prompts, request.boxes, image.name, request.options)]
        )
        return result

    return infer


def _web_config(settings: Settings, verifier: TokenVerifier | None) -> WebConfig:
    if verifier is None:  # local mode
        return WebConfig("api-key" if settings.api_key else "none")
    url, anon_key = settings.supabase_url, settings.supabase_anon_key
    return WebConfig("supabase", url.rstrip("/") if url else None, anon_key.get_secret_value() if anon_key else None)


def _task_limits(settings: Settings) -> TaskLimits:
    return TaskLimits(
        timeout_s=settings.task_timeout_s,
        attempts=settings.task_attempts,
        max_pixels=settings.max_pixels,
        max_fetch_bytes=int(settings.max_upload_mb * 1024 * 1024),
        url_timeout_s=settings.url_timeout_s,
        allow_private_urls=settings.allow_private_urls,
    )


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
    return _error(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _HTTPMiddleware:
    """A pure ASGI middleware for HTTP requests (anything else passes through untouched)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class _LastResort(_HTTPMiddleware):
    """Any exception no handler took becomes the 500 envelope, logged here with its traceback, and the
    connection stays usable: the exception stops here instead of reaching the server, which would close the
    socket under a keep-alive client. (Starlette's own last-resort handler answers and then re-raises.)"""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # too late for an answer: let the server end the connection
                raise
            logging.getLogger("s3seg.server").exception("unexpected error on %s %s", scope["method"], scope["path"])
            response = _error(500, "INTERNAL_ERROR", f"unexpected {type(exc).__name__}", "see the server log")
            await response(scope, receive, send)


class _BodyLimit(_HTTPMiddleware):
    """Refuse bodies over ``max_bytes`` (``paths``: another limit and hint for these paths): by
    Content-Length at once, and while streaming otherwise."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_bytes: int, paths: dict[str, tuple[int, str]] | None = None
    ) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.paths = paths or {}

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, hint = self.paths.get(scope["path"], (self.max_bytes, _BODY_HINT))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large = PayloadTooLarge(_too_large(int(declared), limit), hint=hint)
            response = _error(too_large.http_status, too_large.code, too_large.message, too_large.hint)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(_too_large(seen, limit), hint=hint)
            return message

        await self.app(scope, limited, send)


def _too_large(size: int, limit: int) -> str:
    return f"request body of {size} bytes exceeds the limit of {limit} bytes"


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
