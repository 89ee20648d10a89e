"""The one settings object, and the only place that reads the environment.

Order of precedence: explicit arguments (``Settings(model=...)`` or CLI options), then environment
variables (``S3SEG_*``; a few standard names such as ``HF_TOKEN`` and the seed's ``SAM3_WEIGHTS_PATH``
are read too), then a ``.env`` file in the working directory. Nothing is created at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from s3seg.errors import UsageError

DEFAULT_MODEL = "facebook/sam3"

Device = str  # "auto", "cpu", "cuda", "cuda:1", "mps"
DType = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class EngineConfig:
    """What loading the engine reads from the settings (``Sam3Engine.from_config``)."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None
    token: str | None = None
    offline: bool = False
    compile: bool = False
    max_batch: int = 8
    batch_heads: bool = True


def _env(field: str, *names: str) -> AliasChoices:
    """Where a setting is read from: its name, ``S3SEG_<FIELD>``, then the standard variables ``names``
    (by default ``<FIELD>`` unprefixed: R2, Supabase, Ray and PostgreSQL name their own variables so)."""
    return AliasChoices(field, f"S3SEG_{field.upper()}", *(names or (field.upper(),)))


class Settings(BaseSettings):
    """Every knob s3seg has. Environment variables are ``S3SEG_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(
        env_prefix="S3SEG_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    model: str = Field(
        default=DEFAULT_MODEL,
        validation_alias=_env("model", "SAM3_WEIGHTS_PATH"),
        description="Hub id, local save_pretrained directory, or official sam3.pt file.",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    device: Device = Field(
        default="auto",
        validation_alias=_env("device", "SAM3_DEVICE"),
        description="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
    )
    dtype: DType = Field(default="auto", description="auto = bfloat16 on CUDA, float32 elsewhere.")
    compile: bool = Field(default=False, description="torch.compile the model (GPU; slow first call).")
    hf_token: SecretStr | None = Field(
        default=None,
        validation_alias=_env("hf_token", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
    )
    offline: bool = Field(
        default=False,
        validation_alias=_env("offline", "HF_HUB_OFFLINE"),
        description="Never contact the Hub; use the local cache or a local path.",
    )
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="Minimum instance score.")
    mask_threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="Mask probability cut-off.")
    max_instances: int | None = Field(default=None, ge=1, description="Keep at most this many per prompt.")
    nms_iou: float | None = Field(default=None, gt=0.0, le=1.0, description="Mask-IoU NMS threshold per prompt.")
    max_pixels: int = Field(default=100_000_000, ge=1, description="Refuse larger images (decompression bombs).")
    max_batch: int = Field(default=8, ge=1, description="Most images sent through the backbone at once.")
    batch_heads: bool = Field(
        default=True,
        description="All image–prompt pairs through the heads at once; off: one at a time, bit-identical per prompt.",
    )
    max_objects: int = Field(default=16, ge=1, description="Video: most objects tracked at once.")
    max_video_pixels: int = Field(default=3840 * 2160, ge=1, description="Video: refuse larger frames.")
    max_video_seconds: float = Field(default=3600.0, gt=0, description="Video: refuse longer clips.")
    max_video_frames: int = Field(default=108_000, ge=1, description="Video: most frames processed in one clip.")

    # --- s3seg serve ---------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the server listens on.")
    port: int = Field(default=8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("api_key", "API_SECRET_KEY"),
        description="Required X-API-Key (server); sent (client). The seed's API_SECRET_KEY is read too.",
    )
    allow_no_key: bool = Field(default=False, description="Allow a non-loopback server without an API key.")
    max_body_mb: float = Field(default=20.0, gt=0, description="Largest request body the server reads.")
    max_video_mb: float = Field(default=500.0, gt=0, description="Largest video upload to /api/v1/predict/video.")
    max_videos: int = Field(default=4, ge=1, description="Videos tracked at once by /api/v1/predict/video.")
    max_prompts: int = Field(default=16, ge=1, description="Most prompts per image in one request.")
    max_prompt_chars: int = Field(default=200, ge=1, description="Longest prompt accepted.")
    max_boxes: int = Field(default=16, ge=0, description="Most exemplar boxes per request.")
    max_images: int = Field(default=16, ge=1, description="Most images in one batch request.")
    batch_wait_ms: float = Field(default=0.0, ge=0, description="Wait this long for more requests to batch.")
    max_queue: int = Field(default=64, ge=1, description="Queued images before the server answers 503.")
    url_timeout_s: float = Field(default=10.0, gt=0, description="Time limit for fetching an image URL.")
    allow_private_urls: bool = Field(default=False, description="Let image URLs reach private/loopback hosts.")
    memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="Memory for decoding the images in flight (server); unset: a quarter of the machine's "
        "memory, at least 1024. Beyond it requests wait memory_wait_s, then 503 BUSY.",
    )
    memory_wait_s: float = Field(
        default=2.0, ge=0, description="How long a request waits for room in the memory budget before 503 BUSY."
    )

    # --- storage and results (local by default; R2/S3 and Supabase when configured) --------------
    data_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "s3seg",
        description="Local storage and the SQLite results database when R2/Supabase are not configured.",
    )
    r2_endpoint: str | None = Field(default=None, validation_alias=_env("r2_endpoint"))
    r2_access_key_id: str | None = Field(default=None, validation_alias=_env("r2_access_key_id"))
    r2_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("r2_secret_access_key"),
    )
    r2_bucket: str | None = Field(default=None, validation_alias=_env("r2_bucket"))
    r2_region: str = Field(default="auto", description="R2 uses 'auto'; S3 needs the bucket's region.")
    r2_path_style: bool = Field(default=True, description="Path-style addressing (R2 and most S3 servers).")
    r2_prefix: str = Field(default="", description="Key prefix inside the bucket, e.g. 'prod/'.")
    supabase_url: str | None = Field(default=None, validation_alias=_env("supabase_url"))
    supabase_anon_key: SecretStr | None = Field(default=None, validation_alias=_env("supabase_anon_key"))
    supabase_service_key: SecretStr | None = Field(
        default=None,
        validation_alias=_env("supabase_service_key"),
    )
    supabase_access_token: SecretStr | None = Field(
        default=None, description="A signed-in user's access token (RLS applies as that user)."
    )
    user_id: str | None = Field(default=None, description="The user whose rows the service key writes.")

    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=_env("database_url"),
        description="PostgreSQL with supabase/migrations applied (e.g. Supabase's direct connection string): "
        "the results store of a multi-user server, used before the Supabase REST API.",
    )

    # --- the public API (s3seg serve in front of users) -----------------------------------------
    supabase_jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias=_env("supabase_jwt_secret"),
        description="Legacy HS256 secret of the Supabase project (JWKS keys are used when it is not set).",
    )
    jwks_url: str | None = Field(
        default=None, description="JWKS of the token issuer; default <SUPABASE_URL>/auth/v1/.well-known/jwks.json."
    )
    jwt_issuer: str | None = Field(default=None, description="Expected `iss`; default <SUPABASE_URL>/auth/v1.")
    jwt_audience: str = Field(default="authenticated", description="Expected `aud` of access tokens.")
    rate_limits: dict[str, int] = Field(
        default_factory=lambda: {"free": 10, "pro": 100, "enterprise": 1000},
        description='Work requests (upload, segment) per user per minute, by tier; JSON, e.g. {"free": 10}.',
    )
    segment_cost: int = Field(default=1, ge=0, description="Credits one successful segmentation costs.")
    max_upload_mb: float = Field(default=10.0, gt=0, description="Largest image accepted by /api/v1/upload.")
    max_video_upload_mb: dict[str, float] = Field(
        default_factory=lambda: {"free": 50.0, "pro": 500.0, "enterprise": 2000.0},
        description='Largest video accepted by /api/v1/upload, MB by tier; JSON, e.g. {"free": 50}.',
    )
    video_frame_cost: float = Field(
        default=0.1, ge=0, description="Credits per processed video frame (a video task: frames × this, rounded up)."
    )
    task_timeout_s: float = Field(
        default=600.0, gt=0, description="A task processing longer than this is presumed lost (crash)."
    )
    task_attempts: int = Field(default=2, ge=1, description="Tries per task before it is marked error.")
    task_workers: int = Field(default=2, ge=1, description="Tasks run at once by one server.")
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Gateway: GPU worker URLs (s3seg serve) to run inference on, "
        "instead of a model in this process; JSON list or comma-separated.",
    )
    worker_api_key: SecretStr | None = Field(
        default=None, description="X-API-Key for the workers (default: the server's own api_key)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description='Browser origins allowed to call the API ("*" for any).'
    )
    url_expires_s: int = Field(default=3600, ge=1, description="Lifetime of result URLs handed to clients.")

    # --- s3seg batch (Ray Data) -------------------------------------------------------------------
    ray_address: str | None = Field(
        default=None,
        validation_alias=_env("ray_address"),
        description="A Ray cluster for s3seg batch (ray://head:10001); unset: Ray starts on this machine.",
    )

    # --- client of a remote server -------------------------------------------------------------
    server_url: str | None = Field(default=None, description="Segment on this s3seg server instead of locally.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Client time limit per request.")
    api_url: str | None = Field(
        default=None, description="A public s3seg API (signed-in user): upload/segment/tasks/results go there."
    )
    config_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "s3seg",
        description="Where `s3seg login` keeps the session (private file permissions).",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        v = v.strip().lower()
        base = v.split(":", 1)[0]
        if base not in {"auto", "cpu", "cuda", "mps"}:
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {v!r}")
        return v

    @field_validator("workers", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str):  # a JSON list, or comma-separated
            return json.loads(v) if v.strip().startswith("[") else [p.strip() for p in v.split(",") if p.strip()]
        return v

    def token(self) -> str | None:
        return self.hf_token.get_secret_value() if self.hf_token else None

    def memory_budget_bytes(self) -> int:
        """``memory_budget_mb`` in bytes; unset: a quarter of the machine's memory, at least 1 GiB."""
        if self.memory_budget_mb is not None:
            return int(self.memory_budget_mb * 1024 * 1024)
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not POSIX: the floor
            total = 0
        return max(1 << 30, total // 4)

    def engine_config(self) -> EngineConfig:
        """The part of the settings the engine reads."""
        return EngineConfig(
            self.model,
            self.device,
            self.dtype,
            self.revision,
            self.token(),
            self.offline,
            self.compile,
            self.max_batch,
            self.batch_heads,
        )


def debug_enabled() -> bool:
    """``S3SEG_DEBUG``: show tracebacks. Read on its own, before the other settings, since it decides how
    an invalid setting is reported."""
    return os.environ.get("S3SEG_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def load_settings(base: Settings | None = None, /, **overrides: Any) -> Settings:
    """Settings from the given values (``None`` = not given) over ``base`` (default: the environment); a
    bad value is a one-line :class:`UsageError` naming the setting and where it can come from."""
    given = base.model_dump() if base is not None else {}
    given.update((k, v) for k, v in overrides.items() if v is not None)
    try:
        return Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        raise UsageError(
            f"invalid {name}: {first['msg']}",
            hint=f"check --{name.replace('_', '-')} or the environment variable S3SEG_{name.upper()}",
        ) from e
