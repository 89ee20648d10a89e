"""``s3seg serve``: the SAM3 inference server (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
from importlib.util import find_spec

from s3seg.cli import _options as opt


def serve_command(
    host: opt.Host = None,
    port: opt.Port = None,
    model: opt.Model = None,
    device: opt.Device = None,
    api_key: opt.ServeApiKey = None,
    allow_no_key: opt.AllowNoKey = False,
    max_batch: opt.MaxBatch = None,
    batch_wait_ms: opt.BatchWaitMs = None,
    max_queue: opt.MaxQueue = None,
    allow_private_urls: opt.AllowPrivateUrls = False,
    worker: opt.Workers = None,
    log_level: opt.LogLevel = "info",
) -> None:
    """Serve SAM3 over HTTP: the inference routes (/api/v1/predict, /predict/batch, /model/info) and the
    public API (/api/v1/upload, /segment, /tasks, /results), docs at /docs.

    The model loads before the server listens; with S3SEG_WORKERS set the server is a gateway and the
    workers run the model. Users sign in with Supabase when SUPABASE_URL (or SUPABASE_JWT_SECRET) is
    set, else the API key stands for the local user. Without an API key the server only listens on
    loopback unless --allow-no-key is given.
    """
    from s3seg.config import load_settings
    from s3seg.errors import DependencyError, UsageError

    settings = load_settings(
        allow_no_key=allow_no_key or None,  # an unset flag leaves the environment's value
        allow_private_urls=allow_private_urls or None,
        workers=worker or None,
        host=host,
        port=port,
        model=model,
        device=device,
        api_key=api_key,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_queue=max_queue,
    )
    gateway_for_users = bool(settings.workers) and bool(
        settings.supabase_url or settings.supabase_jwt_secret or settings.jwks_url
    )  # nothing a key would guard
    if (
        settings.api_key is None
        and not settings.allow_no_key
        and not _is_loopback(settings.host)
        and not gateway_for_users
    ):
        raise UsageError(
            f"refusing to serve on {settings.host} without an API key",
            hint="set S3SEG_API_KEY (or --api-key), or pass --allow-no-key to serve openly",
        )
    missing = [name for name in _SERVER_MODULES if find_spec(name) is None]
    if missing:
        raise DependencyError(f"the server needs {', '.join(missing)}", hint="pip install 's3seg[server]'")
    import uvicorn

    from s3seg.server import create_app

    if settings.workers:
        from s3seg.server import WorkerPool

        key = settings.worker_api_key or settings.api_key
        pool = WorkerPool(
            settings.workers, api_key=key.get_secret_value() if key else None, timeout_s=settings.request_timeout_s
        )
        app = create_app(None, settings, workers=pool)
    else:
        from s3seg.engine import Sam3Engine

        app = create_app(Sam3Engine.from_config(settings.engine_config()), settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=30)


# What `s3seg[server]` brings (module names); checked before importing so one line names them all.
_SERVER_MODULES = ("fastapi", "uvicorn", "multipart", "jwt", "torch", "transformers")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
