"""What the routes depend on: the server's parts on ``app.state.server`` (given to ``create_app``, or built
by its lifespan), read through ``Annotated`` dependencies — ``SettingsDep``, ``ApiDep``, ``CurrentUser``,
``EngineDep``, ``BatcherDep``, ``BudgetDep`` — and the API key check (``require_key``)."""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.errors import AuthError, Busy, ServerError, Unauthorized
from s3seg.records import result_files
from s3seg.server._auth import TokenVerifier, User, bearer_token
from s3seg.server._batcher import Batcher
from s3seg.server._gateway import WorkerPool
from s3seg.server._memory import MemoryBudget
from s3seg.server._ratelimit import RateLimiter
from s3seg.server._schemas import TaskOut
from s3seg.server._tasks import TaskRunner
from s3seg.storage import Storage
from s3seg.store import Store, Task

if TYPE_CHECKING:
    from s3seg.engine._video import Sam3VideoEngine

API_KEY_HEADER = Unauthorized.auth_scheme  # "X-API-Key"
# Declared as a security scheme so that /docs offers "Authorize"; checked in require_key (constant time).
_API_KEY = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")
_URLS = {
    "source": "source_image_url",
    "mask": "mask_image_url",
    "overlay": "overlay_image_url",
    "result": "result_url",
    "poster": "poster_url",
}


@dataclass
class PublicAPI:
    """What the public API's routes need, built by the lifespan once the backends are up."""

    settings: Settings
    store: Store
    storage: Storage
    runner: TaskRunner
    verifier: TokenVerifier | None
    limiter: RateLimiter
    budget: MemoryBudget

    def out(self, task: Task) -> TaskOut:
        """A task as clients see it: the stored keys become time-limited URLs (``*_image_url``,
        ``result_url``, ``poster_url``), and ``files`` gives download paths through this API (every storage backend)."""
        keys = result_files(task) if task.status == "done" else {}
        expires = self.settings.url_expires_s
        urls = {
            column: self.storage.url(keys[name], expires) if name in keys else None for name, column in _URLS.items()
        }
        hidden = ("image_key", "image_url", "coco", "video_key", "tracks", "poster")
        return TaskOut.model_validate(
            {
                **task.to_dict(),
                **urls,
                "task_id": task.id,
                "file_name": task.metadata.get("file_name"),
                "metadata": {k: v for k, v in task.metadata.items() if k not in hidden},
                "files": {name: f"/api/v1/results/{task.id}/files/{name}" for name in keys},
            }
        )

    def user(self, request: Request) -> User:
        """Who is calling: the Supabase access token's user, or (local mode, no verifier) the local user
        once the API key (if the server has one) checks out."""
        if self.verifier is None:
            check_key(self.settings.api_key, request.headers.get(API_KEY_HEADER))
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


@dataclass
class Server:
    """The app's parts (``app.state.server``): what ``create_app`` was given, and what its lifespan builds
    (storage and store when not given, the batcher, the public API)."""

    settings: Settings
    engine: Sam3Engine | None
    workers: WorkerPool | None
    verifier: TokenVerifier | None
    storage: Storage | None = None
    store: Store | None = None
    batcher: Batcher | None = None
    budget: MemoryBudget | None = None
    api: PublicAPI | None = None
    video_engine: Sam3VideoEngine | None = None  # loaded on the first video request unless given
    _video_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    videos_running: int = 0  # requests to /predict/video under way (at most settings.max_videos)

    def video_slot(self) -> Callable[[], None]:
        """Count one more video under way, or :class:`Busy` at ``max_videos``; returns the release (idempotent)."""
        with self._video_lock:
            if self.videos_running >= self.settings.max_videos:
                raise Busy(
                    f"the server is tracking {self.videos_running} video(s), its most at once",
                    hint="retry when one is done, or raise the server's S3SEG_MAX_VIDEOS",
                )
            self.videos_running += 1
        released = threading.Event()

        def release() -> None:
            with self._video_lock:
                if not released.is_set():
                    released.set()
                    self.videos_running -= 1

        return release

    def video(self) -> Sam3VideoEngine:
        """The one video model of the server (``/predict/video`` and the public API's video tasks): the image
        model's checkpoint as SAM3's video model (detector + tracker) on the same device, loaded on first
        use, its detector the image model itself (one copy of those weights), and taking its turns on the
        device with the image batches (:class:`s3seg.server._batcher.Turns`).
        Blocks while loading: call it off the event loop."""
        _started(self.batcher, "model queue")
        engine = cast(Sam3Engine, self.engine)
        with self._video_lock:
            if self.video_engine is None:
                from s3seg.engine._video import Sam3VideoEngine

                info, s = engine.info, self.settings
                self.video_engine = Sam3VideoEngine.load(
                    info.model,
                    device=str(engine.device),
                    dtype=s.dtype,
                    revision=info.revision,
                    token=s.token(),
                    offline=s.offline,
                )
                self.video_engine.share_detector(engine)  # one copy of the detector's weights, not two
            self.video_engine.share_device(cast(Batcher, self.batcher).turns)
            return self.video_engine


def check_key(api_key: SecretStr | None, given_key: str | None) -> None:
    """``given_key`` against the server's API key, compared in constant time (no key: anyone may call)."""
    if api_key is None:
        return
    given = (given_key or "").encode()
    if not hmac.compare_digest(given, api_key.get_secret_value().encode()):
        raise Unauthorized(
            "missing or wrong API key" if given else "this server needs an API key",
            hint=f"send the {API_KEY_HEADER} header (s3seg: --api-key or S3SEG_API_KEY)",
        )


def _server(request: Request) -> Server:
    return cast(Server, request.app.state.server)


ServerDep = Annotated[Server, Depends(_server)]
_Part = TypeVar("_Part")


def _settings(server: ServerDep) -> Settings:
    return server.settings


def _started(part: _Part | None, what: str) -> _Part:
    if part is None:  # a request before the lifespan has run (or after it ended)
        raise ServerError(f"the server has no {what} (it is starting or stopping)", status=503, code="STARTING")
    return part


def _api(server: ServerDep) -> PublicAPI:
    return _started(server.api, "public API")


def _engine(server: ServerDep) -> Sam3Engine:
    return _started(server.engine, "model")


def _batcher(server: ServerDep) -> Batcher:
    return _started(server.batcher, "model queue")


def _budget(server: ServerDep) -> MemoryBudget:
    return _started(server.budget, "memory budget")


SettingsDep = Annotated[Settings, Depends(_settings)]
ApiDep = Annotated[PublicAPI, Depends(_api)]
EngineDep = Annotated[Sam3Engine, Depends(_engine)]
BatcherDep = Annotated[Batcher, Depends(_batcher)]
BudgetDep = Annotated[MemoryBudget, Depends(_budget)]


def _current_user(request: Request, api: ApiDep) -> User:
    return api.user(request)


CurrentUser = Annotated[User, Depends(_current_user)]


def require_key(settings: SettingsDep, given_key: Annotated[str | None, Security(_API_KEY)] = None) -> None:
    """The inference routes' guard: the ``X-API-Key`` header."""
    check_key(settings.api_key, given_key)
