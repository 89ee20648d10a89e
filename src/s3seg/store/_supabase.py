"""Results in Supabase (``segmentation_results`` and ``projects``, see supabase/migrations) via supabase-py.

Two ways in:

* the service key, on a server: RLS is bypassed, so this store filters every per-user request by
  ``user_id`` itself. A server's store starts unbound (``user_id=None``; ``runnable`` and
  ``requeue_stale`` work across users) and ``for_user`` binds it per request, sharing one client.
* the anon key plus a signed-in user's access token: row-level security applies and the user is the
  token's ``sub``.

Tasks for the server's workers (``create_task(queue=True)``, ``queued`` rows) are created and finished
through ``create_segmentation_task`` / ``finish_segmentation_task``
(supabase/migrations/20261122010000_segmentation_tasks.sql), which reserve and charge credits; only they
are ``runnable`` and requeued. Those functions are service_role only, and a signed-in user may neither set
``queued`` nor change a queued row, so only the service key handles them. Other tasks (``queue=False``,
e.g. results the CLI computed itself) are plain rows written directly, costing nothing.

PostgREST and network errors become :class:`StoreError`; ``PT402`` becomes :class:`CreditsError`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx

from s3seg.errors import AccountNotFound, DependencyError, S3SegError, StoreError, UsageError
from s3seg.models import Account, Status, Task
from s3seg.store._base import (
    PREVIOUS,
    PROFILE_HINT,
    NewTask,
    Store,
    TaskResult,
    Tasks,
    attempts,
    cannot_become,
    finished_metadata,
    function_error,
    gave_up,
    new_metadata,
    no_profile,
    progress_columns,
    project_not_found,
    project_uuid,
    task_not_found,
    task_uuid,
    uuid_user,
)

if TYPE_CHECKING:
    from postgrest.exceptions import APIError

    from s3seg.config import Settings

Rows = list[dict[str, Any]]  # (a method named `list` below shadows the builtin inside the class)
_TABLE = "segmentation_results"
_COLUMNS = "*, projects(name)"
# A pending task changed by someone else between reading and starting it (still pending): read it again.
_START_TRIES = 3
_STALE_BATCH = 500
_TIMEOUT_S = 30.0


class SupabaseStore(Store):
    name = "supabase"
    unbound_hint = "a server binds it per request (for_user); the CLI needs S3SEG_USER_ID (service key) or a sign-in"

    def __init__(
        self,
        url: str,
        key: str,
        *,
        access_token: str | None = None,
        user_id: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        try:
            from supabase import ClientOptions, create_client
        except ImportError as e:
            raise DependencyError("the Supabase store needs supabase-py", hint="pip install 's3seg[cloud]'") from e
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
        # The signed-in user (RLS applies as them), or None with the service key.
        self._token_user = _token_subject(access_token) if access_token else None
        # None: not bound to a user yet (a server's store); per-user operations refuse until ``for_user``.
        self.user_id: str | None = self._valid_user(user_id) if user_id else self._token_user
        # One HTTP client for every request (PostgREST's and Auth's), closed by ``close`` unless the caller
        # passed it in (then it is the caller's).
        self._http = http or httpx.Client(timeout=_TIMEOUT_S)
        self._owner = http is None
        try:
            self._client = create_client(
                url,
                key,
                options=ClientOptions(
                    headers=headers, httpx_client=self._http, auto_refresh_token=False, persist_session=False
                ),
            )
        except Exception as e:  # supabase-py validates the URL and key format here
            self.close()
            raise StoreError(f"cannot use Supabase at {url}: {e}", hint="check SUPABASE_URL and the key") from e

    @classmethod
    def from_settings(cls, s: Settings) -> SupabaseStore:
        token = s.supabase_access_token.get_secret_value() if s.supabase_access_token else None
        if token and s.supabase_anon_key:  # a user: RLS applies
            return cls(s.supabase_url or "", s.supabase_anon_key.get_secret_value(), access_token=token)
        if s.supabase_service_key:
            return cls(s.supabase_url or "", s.supabase_service_key.get_secret_value(), user_id=s.user_id)
        raise UsageError(
            "Supabase needs the service key, or the anon key and a signed-in user",
            hint="set SUPABASE_SERVICE_KEY (servers) or SUPABASE_ANON_KEY + S3SEG_SUPABASE_ACCESS_TOKEN",
        )

    def _valid_user(self, user_id: str) -> str:
        user_id = uuid_user(user_id)
        if self._token_user is not None and user_id != self._token_user:
            raise UsageError(
                f"signed in as {self._token_user}, this store cannot act for user {user_id}",
                hint="a server acting for several users needs the service key",
            )
        return user_id

    def _release(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------------------- operations
    def account(self) -> Account:
        user = self._bound_user()
        found = self._rows(
            self._client.table("users_profile").select("id, tier, credits").eq("id", user).limit(1).execute
        )
        if not found:
            raise no_profile(user)
        row = found[0]
        credits = row.get("credits")
        return Account(str(row["id"]), tier=str(row["tier"]), credits=None if credits is None else int(credits))

    def _create(self, new: NewTask) -> Task:
        """``queue=True`` (service key only): a task for the server's workers, reserving ``cost`` credits
        atomically (CreditsError when the user's credits minus what their unfinished tasks reserve do not
        cover it). Otherwise a plain row that costs nothing. ``project_id`` must be one of the user's
        projects: it is looked up (by id and user) first, ProjectNotFound when it is not; the composite
        foreign key (project_id, user_id) refuses the insert should it vanish meanwhile."""
        if new.queue and self._token_user is not None:
            raise UsageError(
                "queued tasks need the service key (create_segmentation_task is service_role only)",
                hint="send the image to an s3seg server, or record the result as a plain task",
            )
        project_id = new.project_id
        if project_id is not None:
            project_id = self._own_project(new.user, project_id)
        elif new.project:
            project_id = self._project_id(new.user, new.project)
        if not new.queue:  # a plain row (``queued`` keeps its default, false: a signed-in user may not set it)
            row = {
                "user_id": new.user,
                "text_prompt": new.text_prompt,
                "status": "pending",
                "metadata": new_metadata(new),
                **({"project_id": project_id} if project_id else {}),
                # (a signed-in user may not write the progress columns: sent only when there is one)
                **({"frames_total": new.frames_total} if new.frames_total else {}),
            }
            created = self._rows(self._client.table(_TABLE).insert(row).execute)
            return self._get(str(created[0]["id"]), new.user)
        args = {
            "p_user_id": new.user,
            "p_text_prompt": new.text_prompt,
            "p_project_id": project_id,
            "p_metadata": new.metadata,  # the function adds cost and attempts, and reserves the credits
            "p_cost": new.cost,
        }
        task_id = self._call(self._client.rpc("create_segmentation_task", args).execute)
        if new.frames_total:  # a second request (PostgREST): pending until then, frames_total 0 = unknown
            self._rows(
                self._client.table(_TABLE).update({"frames_total": new.frames_total}).eq("id", str(task_id)).execute
            )
        return self._get(str(task_id), new.user)

    def start(self, task_id: str) -> Task:
        """``pending → processing`` with ``attempts + 1``. PostgREST cannot update inside a jsonb value, so
        the row is read and written back only if it is still the row that was read (same status and
        ``updated_at``, which the table's trigger changes on every update): of two workers starting a task
        at once exactly one succeeds, and no concurrent change to the metadata is overwritten."""
        user = self._bound_user()
        for _ in range(_START_TRIES):
            row = self._row(task_id, user, "status, queued, metadata, updated_at")
            if row["status"] != "pending":
                raise cannot_become(task_id, row["status"], "processing")
            self._check_writable(task_id, row)
            meta = row.get("metadata") or {}
            values: dict[str, Any] = {"status": "processing", "metadata": {**meta, "attempts": attempts(meta) + 1}}
            if row.get("queued"):  # a server task runs (again) from its start; users cannot write the column
                values["frames_done"] = 0
            changed = self._update_if(task_id, user, "pending", values, updated_at=row["updated_at"])
            if changed:
                return self._get(task_id, user)  # with the project name joined in
        raise StoreError(f"task {task_id} kept changing while it was being started; it was not started")

    def _finish(self, task_id: str, r: TaskResult) -> Task:
        """A queued task's cost is charged (and logged) in the same transaction as ``processing → done``."""
        user = self._bound_user()
        # One of this user's tasks: finish_segmentation_task does not know the caller, so check first.
        old = self._row(task_id, user, "status, queued, metadata")
        if not old.get("queued"):  # a plain row: nothing reserved, nothing to charge
            return self._move(
                task_id,
                "done",
                {
                    "source_image_url": r.source,
                    "mask_image_url": r.mask,
                    "overlay_image_url": r.overlay,
                    "labels": r.labels,
                    "metadata": finished_metadata(old.get("metadata") or {}, r.metadata),
                },
            )
        self._check_writable(task_id, old)
        meta = old.get("metadata") or {}
        lowered = finished_metadata(meta, {}, r.cost)
        if lowered.get("cost") != meta.get("cost"):  # a second request (PostgREST): lowers, never raises
            self._update_if(task_id, user, "processing", {"metadata": lowered})
        self._call(
            self._client.rpc(
                "finish_segmentation_task",
                {
                    "p_task_id": task_id,
                    "p_source": r.source,
                    "p_mask": r.mask,
                    "p_overlay": r.overlay,
                    "p_labels": r.labels,
                    "p_metadata": finished_metadata({}, r.metadata),
                },
            ).execute
        )
        return self._get(task_id, user)

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", {"error": error or "unknown error"})

    def heartbeat(self, task_id: str, *, done: int | None = None, total: int | None = None) -> bool:
        """The table's trigger sets ``updated_at`` on every update; with no progress, ``status`` is written
        back unchanged so that there is an update."""
        user = self._bound_user()
        task_uuid(task_id)
        values: dict[str, Any] = {**progress_columns(done, total)} or {"status": "processing"}
        return bool(self._update_if(task_id, user, "processing", values))

    def _update_if(
        self, task_id: str, user: str, status: Status, values: dict[str, Any], updated_at: str | None = None
    ) -> Rows:
        """Update the user's task if it is ``status`` (and was last updated at ``updated_at``, when given)."""
        query = self._client.table(_TABLE).update(values).eq("id", task_id).eq("user_id", user).eq("status", status)
        if updated_at is not None:
            query = query.eq("updated_at", updated_at)
        return self._rows(query.execute)

    def get(self, task_id: str) -> Task:
        return self._get(task_id, self._bound_user())

    def _list(self, user: str, project: str | None, status: Status | None, limit: int, offset: int) -> Tasks:
        columns = "*, projects!inner(name)" if project else _COLUMNS
        query = self._client.table(_TABLE).select(columns).eq("user_id", user)
        if project:
            query = query.eq("projects.name", project)
        if status:
            query = query.eq("status", status)
        query = query.order("created_at", desc=True).range(offset, offset + limit - 1)
        return [_task(r) for r in self._rows(query.execute)]

    # --- the server's background work, across all users ------------------------------------------
    def runnable(self, limit: int = 100) -> Tasks:
        """Queued ``pending`` tasks of every user (with the service key; the user's own under RLS), oldest
        first."""
        query = (
            self._client.table(_TABLE)
            .select(_COLUMNS)
            .eq("status", "pending")
            .eq("queued", "true")
            .order("created_at")
            .limit(limit)
        )
        return [_task(r) for r in self._rows(query.execute)]

    def requeue_stale(self, *, older_than_s: float, max_attempts: int) -> Tasks:
        """Queued tasks ``processing`` with ``updated_at`` older than ``older_than_s`` (by this machine's clock; the
        database sets ``updated_at``, so keep clocks in sync): back to ``pending`` while ``attempts <
        max_attempts``, else ``error``. Each row is updated only if it is still the row that was read
        (status and ``updated_at``), so of several servers sweeping at once exactly one requeues a task.
        Returns the tasks this call requeued, oldest first."""
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=older_than_s)).isoformat()
        stale = self._rows(
            self._client.table(_TABLE)
            .select("id, metadata, updated_at")
            .eq("status", "processing")
            .eq("queued", "true")
            .lt("updated_at", cutoff)
            .order("updated_at")
            .limit(_STALE_BATCH)
            .execute
        )
        requeued: list[str] = []
        for row in stale:
            tries = attempts(row.get("metadata") or {})
            values = (
                {"status": "pending"}
                if tries < max_attempts
                else {"status": "error", "error": gave_up(tries, max_attempts)}
            )
            changed = self._rows(
                self._client.table(_TABLE)
                .update(values)
                .eq("id", row["id"])
                .eq("status", "processing")
                .eq("updated_at", row["updated_at"])
                .execute
            )
            if changed and values["status"] == "pending":
                requeued.append(str(row["id"]))
        if not requeued:
            return []
        rows = self._rows(self._client.table(_TABLE).select(_COLUMNS).in_("id", requeued).order("created_at").execute)
        return [_task(r) for r in rows]

    # -------------------------------------------------------------------------------------- internals
    def _get(self, task_id: str, user: str) -> Task:
        return _task(self._row(task_id, user, _COLUMNS))  # with the project name joined in

    def _row(self, task_id: str, user: str, columns: str) -> dict[str, Any]:
        task_uuid(task_id)  # a malformed id names no task (PostgREST would answer 400)
        found = self._rows(
            self._client.table(_TABLE).select(columns).eq("id", task_id).eq("user_id", user).limit(1).execute
        )
        if not found:
            raise task_not_found(task_id)
        return found[0]

    def _move(self, task_id: str, status: Status, values: dict[str, Any]) -> Task:
        user = self._bound_user()
        task_uuid(task_id)
        changed = self._rows(
            self._client.table(_TABLE)
            .update({**values, "status": status})
            .eq("id", task_id)
            .eq("user_id", user)
            .in_("status", list(PREVIOUS[status]))
            .execute
        )
        if not changed:
            current = self._row(task_id, user, "status, queued")  # TaskNotFound when the user has no such task
            if current["status"] in PREVIOUS[status]:
                self._check_writable(task_id, current)  # RLS hid the row from the update
            raise cannot_become(task_id, current["status"], status)
        return self._get(task_id, user)  # with the project name joined in

    def _check_writable(self, task_id: str, row: dict[str, Any]) -> None:
        """A signed-in user may not change a server task (RLS), nor call the credit functions."""
        if row.get("queued") and self._token_user is not None:
            raise StoreError(
                f"task {task_id} is a server task; only the server can change it",
                hint="it runs on the s3seg server that queued it",
            )

    def _own_project(self, user: str, project_id: str) -> str:
        """``project_id`` as stored, if it is one of the bound user's projects; else ProjectNotFound."""
        project_uuid(project_id)  # a uuid column: PostgREST would refuse anything else with a 400
        found = self._rows(
            self._client.table("projects").select("id").eq("id", project_id).eq("user_id", user).limit(1).execute
        )
        if not found:
            raise project_not_found(project_id)
        return str(found[0]["id"])

    def _project_id(self, user: str, name: str) -> str:
        found = self._rows(
            self._client.table("projects").select("id").eq("user_id", user).eq("name", name).limit(1).execute
        )
        if found:
            return str(found[0]["id"])
        created = self._rows(self._client.table("projects").insert({"user_id": user, "name": name}).execute)
        return str(created[0]["id"])

    def _rows(self, call: Callable[[], Any]) -> Rows:
        """Run one PostgREST request; its rows."""
        return list(self._call(call) or [])

    def _call(self, call: Callable[[], Any]) -> Any:
        """Run one PostgREST request; its data (rows, or what a function returned)."""
        from postgrest.exceptions import APIError

        try:
            return call().data
        except APIError as e:
            raise _error(e) from e
        except httpx.HTTPError as e:
            raise StoreError(f"cannot reach Supabase: {type(e).__name__}", hint="check SUPABASE_URL") from e


def _error(e: APIError) -> S3SegError:
    """Our SQL functions' errors (``function_error``), a plain row for a user without a profile, or a
    refusal as PostgREST words it."""
    detail = e.details if isinstance(e.details, str) and e.details else None
    known = function_error(e.code or "", e.message or "", detail)
    if known is not None:
        return known
    if e.code == "23503" and detail and "users_profile" in detail:  # a plain row for a user without a profile
        return AccountNotFound(f"no profile for the user ({detail})", hint=PROFILE_HINT)
    hint = "row-level security refused it: is this your task?" if e.code == "42501" else None
    return StoreError(f"Supabase refused the request: {e.message} ({e.code})", hint=hint)


def _task(row: dict[str, Any]) -> Task:
    project = row.get("projects")
    return Task.from_dict({**row, "project": project.get("name") if isinstance(project, dict) else None})


def _token_subject(token: str) -> str:
    """The ``sub`` of a JWT, read without verifying (Supabase verifies it on every request)."""
    from s3seg._jwt import unverified_claims

    sub = unverified_claims(token).get("sub")
    if not isinstance(sub, str) or not sub:
        raise UsageError("the Supabase access token is not a JWT with a subject", hint="sign in again")
    return sub
