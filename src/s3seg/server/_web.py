"""The web app: the page at ``/`` and its files (``src/s3seg/web``, package data) under ``/app/``.

The page is plain HTML, CSS and ES modules; it talks to the same routes as every other client (the
public API with ``X-API-Key`` in local mode, with a Supabase access token otherwise). Page paths
(``/``, ``/segment``, ``/gallery``, ``/profile``, ``/results/<id>``) all answer ``index.html``; the
page's router picks the view. The files are mounted under ``/app/`` rather than at ``/`` so that API
paths keep their own answers (a catch-all mount would turn ``405`` into ``404``).

Every answer from here carries a Content-Security-Policy: scripts and styles from this origin only
(no inline script or style), images also from ``blob:``/``data:`` (decoded results), videos also from
``blob:`` (a clip's preview, an overlay MP4 fetched with the page's credentials), connections to
this origin and, with Supabase, to its Auth server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGES = ("/", "/segment", "/gallery", "/profile", "/results/{task_id}")


@dataclass(frozen=True)
class WebConfig:
    """What the page is told at ``/app/config.json``: how users sign in (``auth``: ``supabase``,
    ``api-key`` or ``none``) and, with Supabase, its URL (the page signs in there directly) and anon key
    (public by design: Supabase's browser key)."""

    auth: str
    supabase_url: str | None = None
    supabase_anon_key: str | None = None


def security_headers(supabase_url: str | None = None) -> dict[str, str]:
    connect = "'self'" + (f" {supabase_url}" if supabase_url else "")
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' blob: data:",
            "media-src 'self' blob:",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


class _Files(StaticFiles):
    """StaticFiles that adds the security headers (and asks browsers to revalidate: no build step,
    no hashed names)."""

    def __init__(self, headers: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = {**headers, "Cache-Control": "no-cache"}

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers.update(self.extra)
        return response


def mount_web(app: FastAPI, config: WebConfig) -> None:
    """Serve the page; call after every API route is added."""
    headers = security_headers(config.supabase_url)
    index = WEB_DIR / "index.html"

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={**headers, "Cache-Control": "no-cache"})

    async def web_config() -> JSONResponse:
        return JSONResponse(asdict(config), headers={**headers, "Cache-Control": "no-store"})

    app.add_api_route("/app/config.json", web_config, methods=["GET"], include_in_schema=False)
    for path in PAGES:
        app.add_api_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/app", _Files(headers, directory=WEB_DIR), name="web")
