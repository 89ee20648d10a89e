"""Results in Supabase (``segmentation_results`` and ``projects``, see supabase/migrations) via supabase-py.

Two ways in: the anon key plus a signed-in user's access token (row-level security applies, the user
is the token's ``sub``), or the service key on a server (RLS bypassed; the user id must be given).
PostgREST and network errors become :class:`StoreError`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from s3seg.errors import DependencyError, UsageError
from s3seg.store import STATUSES, Status, StoreError, Task, TaskNotFound

if TYPE_CHECKING:
    import httpx

    from s3seg.config import Settings

Rows = list[dict[str, Any]]  # (a method named `list` below shadows the builtin inside the class)
_TABLE = "segmentation_results"
_COLUMNS = "*, projects(name)"
_PREVIOUS: dict[Status, list[str]] = {"processing": ["pending"], "done": ["processing"],
                                      "error": ["pending", "processing"]}


class SupabaseStore:
    name = "supabase"

    def __init__(self, url: str, key: str, *, access_token: str | None = None, user_id: str | None = None,
                 http: httpx.Client | None = None) -> None:
        try:
            from supabase import ClientOptions, create_client
        except ImportError as e:
            raise DependencyError("the Supabase store needs supabase-py", hint="pip install 's3seg[cloud]'") from e
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        self.user_id = user_id or (_token_subject(access_token) if access_token else None)
        if self.user_id is None:
            raise UsageError("the Supabase store needs a user", hint="sign in (an access token) or set S3SEG_USER_ID "
                             "together with the service key")
        try:
            self._client = create_client(url, key, options=ClientOptions(headers=headers, httpx_client=http,
                                                                         auto_refresh_token=False,
                                                                         persist_session=False))
        except Exception as e:  # supabase-py validates the URL and key format here
            raise StoreError(f"cannot use Supabase at {url}: {e}", hint="check SUPABASE_URL and the key") from e

    @classmethod
    def from_settings(cls, s: Settings) -> SupabaseStore:
        token = s.supabase_access_token.get_secret_value() if s.supabase_access_token else None
        if token and s.supabase_anon_key:  # a user: RLS applies
            return cls(s.supabase_url or "", s.supabase_anon_key.get_secret_value(), access_token=token)
        if s.supabase_service_key:
            return cls(s.supabase_url or "", s.supabase_service_key.get_secret_value(), user_id=s.user_id)
        raise UsageError("Supabase needs the service key, or the anon key and a signed-in user",
                         hint="set SUPABASE_SERVICE_KEY (servers) or SUPABASE_ANON_KEY + S3SEG_SUPABASE_ACCESS_TOKEN")

    # ------------------------------------------------------------------------------------- operations
    def create_task(self, prompts: list[str], *, project: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Task:
        row: dict[str, Any] = {"user_id": self.user_id, "text_prompt": ", ".join(prompts), "status": "pending",
                               "metadata": {"prompts": prompts, **(metadata or {})}}
        if project:
            row["project_id"] = self._project_id(project)
        created = self._rows(lambda: self._client.table(_TABLE).insert(row).execute())
        return self.get(str(created[0]["id"]))

    def start(self, task_id: str) -> Task:
        return self._move(task_id, "processing", {})

    def finish(self, task_id: str, *, source: str, mask: str, overlay: str, labels: list[Any],
               metadata: dict[str, Any]) -> Task:
        old = self.get(task_id)
        return self._move(task_id, "done", {"source_image_url": source, "mask_image_url": mask,
                                            "overlay_image_url": overlay, "labels": labels,
                                            "metadata": {**old.metadata, **metadata}})

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", {"error": error or "unknown error"})

    def get(self, task_id: str) -> Task:
        found = self._rows(lambda: self._client.table(_TABLE).select(_COLUMNS).eq("id", task_id).limit(1).execute())
        if not found:
            raise TaskNotFound(f"no task {task_id}", hint="list tasks with: s3seg tasks")
        return _task(found[0])

    def list(self, *, project: str | None = None, status: Status | None = None, limit: int = 20,
             offset: int = 0) -> list[Task]:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        columns = "*, projects!inner(name)" if project else _COLUMNS
        query = self._client.table(_TABLE).select(columns).eq("user_id", self.user_id or "")
        if project:
            query = query.eq("projects.name", project)
        if status:
            query = query.eq("status", status)
        query = query.order("created_at", desc=True).range(offset, offset + limit - 1)
        return [_task(r) for r in self._rows(query.execute)]

    # -------------------------------------------------------------------------------------- internals
    def _move(self, task_id: str, status: Status, values: dict[str, Any]) -> Task:
        changed = self._rows(lambda: self._client.table(_TABLE).update({**values, "status": status})
                             .eq("id", task_id).in_("status", _PREVIOUS[status]).execute())
        if not changed:
            current = self.get(task_id)  # raises TaskNotFound when there is no such task
            raise StoreError(f"task {task_id} is {current.status}; it cannot become {status}")
        return self.get(task_id)  # with the project name joined in

    def _project_id(self, name: str) -> str:
        found = self._rows(lambda: self._client.table("projects").select("id").eq("user_id", self.user_id or "")
                           .eq("name", name).limit(1).execute())
        if found:
            return str(found[0]["id"])
        created = self._rows(lambda: self._client.table("projects")
                             .insert({"user_id": self.user_id, "name": name}).execute())
        return str(created[0]["id"])

    def _rows(self, call: Callable[[], Any]) -> Rows:
        """Run one PostgREST request; its rows."""
        import httpx
        from postgrest.exceptions import APIError

        try:
            return list(call().data or [])
        except APIError as e:
            hint = "row-level security refused it: is this your task?" if e.code == "42501" else None
            raise StoreError(f"Supabase refused the request: {e.message} ({e.code})", hint=hint) from e
        except httpx.HTTPError as e:
            raise StoreError(f"cannot reach Supabase: {type(e).__name__}", hint="check SUPABASE_URL") from e


def _task(row: dict[str, Any]) -> Task:
    project = row.get("projects")
    return Task(
        id=str(row["id"]), status=row["status"], text_prompt=row.get("text_prompt") or "",
        created_at=_time(row["created_at"]), updated_at=_time(row["updated_at"]), user_id=row.get("user_id"),
        project_id=row.get("project_id"), project=project.get("name") if isinstance(project, dict) else None,
        source_image_url=row.get("source_image_url"), mask_image_url=row.get("mask_image_url"),
        overlay_image_url=row.get("overlay_image_url"), labels=row.get("labels") or [],
        metadata=row.get("metadata") or {}, error=row.get("error"),
    )


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _token_subject(token: str) -> str:
    """The ``sub`` of a JWT, read without verifying (Supabase verifies it on every request)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError) as e:
        raise UsageError("the Supabase access token is not a JWT with a subject", hint="sign in again") from e
