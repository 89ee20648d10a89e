"""``s3seg serve``: the SAM3 inference server (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
from importlib.util import find_spec
from typing import Optional

import typer


def serve_command(
    host: Optional[str] = typer.Option(  # noqa: UP045
        None, "--host", help="Address to listen on (env S3SEG_HOST; default 127.0.0.1).", show_default=False
    ),
    port: Optional[int] = typer.Option(  # noqa: UP045
        None, "--port", "-p", help="Port (env S3SEG_PORT; default 8000).", show_default=False
    ),
    model: Optional[str] = typer.Option(  # noqa: UP045
        None, "--model", "-m", help="Hub id, save_pretrained folder or sam3.pt (env S3SEG_MODEL).", show_default=False
    ),
    device: Optional[str] = typer.Option(  # noqa: UP045
        None, "--device", "-d", help="auto, cpu, cuda, cuda:N or mps (env S3SEG_DEVICE).", show_default=False
    ),
    api_key: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--api-key",
        help="Require this X-API-Key on /api/v1 (env S3SEG_API_KEY; prefer the env var).",
        show_default=False,
    ),
    allow_no_key: bool = typer.Option(
        False, "--allow-no-key", help="Serve on a non-loopback address without an API key (not recommended)."
    ),
    max_batch: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-batch", min=1, help="Most images per device batch (default 8).", show_default=False
    ),
    batch_wait_ms: Optional[float] = typer.Option(  # noqa: UP045
        None,
        "--batch-wait-ms",
        min=0,
        help="Wait up to this long to fill a batch (default 0: batches form "
        "from requests that queue while the device is busy).",
        show_default=False,
    ),
    max_queue: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-queue", min=1, help="Queued images before answering 503 (default 64).", show_default=False
    ),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls", help="Let image_url reach loopback and private networks."
    ),
    worker: Optional[list[str]] = typer.Option(  # noqa: UP045
        None,
        "--worker",
        metavar="URL",
        show_default=False,
        help="Gateway: a GPU worker URL (repeatable; env S3SEG_WORKERS); no model loads here.",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
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
        host=host,
        port=port,
        model=model,
        device=device,
        api_key=api_key,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_queue=max_queue,
        allow_no_key=allow_no_key or None,
        allow_private_urls=allow_private_urls or None,
        workers=worker or None,
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
