"""Results in PostgreSQL with supabase/migrations applied (``S3SEG_DATABASE_URL``, e.g. Supabase's direct
connection string) via psycopg 3 and a connection pool shared by every user's store (``for_user``).

It connects as the migration owner (or another role that bypasses row-level security), so every task
query filters by the bound user itself: another user's task is simply not found. Tasks for the server's
workers (``create_task(queue=True)``, ``queued`` rows) reserve credits in ``public.create_segmentation_task``
and are charged by ``public.finish_segmentation_task`` (see the migration), each in one transaction; only
they are ``runnable`` and requeued. Other tasks (``queue=False``, e.g. results computed elsewhere) are plain
rows that cost nothing. psycopg and pool errors become :class:`StoreError` in ``_tx``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from s3seg.errors import DependencyError, S3SegError, StoreError
from s3seg.models import Account, Status, Task
from s3seg.store._base import (
    COLUMNS,
    PREVIOUS,
    NewTask,
    Store,
    TaskResult,
    Tasks,
    cannot_become,
    function_error,
    list_query,
    new_metadata,
    no_profile,
    progress_columns,
    project_not_found,
    project_uuid,
    task_from_row,
    task_not_found,
    task_uuid,
    uuid_user,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Conn = psycopg.Connection[tuple[Any, ...]]

_HINT_URL = "check S3SEG_DATABASE_URL"
_JOIN = " r left join public.projects p on p.id = r.project_id"
_SELECT = f"select {COLUMNS} from public.segmentation_results" + _JOIN
_ATTEMPTS = (
    "coalesce(case when jsonb_typeof(r.metadata -> 'attempts') = 'number' "
    "then (r.metadata ->> 'attempts')::numeric::int end, 0)"
)
_STALE = (
    f"select r.id, {_ATTEMPTS} as attempts from public.segmentation_results r where r.status = 'processing' "
    "and r.queued and r.updated_at < now() - make_interval(secs => %(age)s) and {cond} "
    "for update of r skip locked"
)


class PostgresStore(Store):
    name = "postgres"
    unbound_hint = "set S3SEG_USER_ID to the user's Supabase auth id"

    def __init__(self, dsn: str, *, user_id: str | None = None, min_size: int = 1, max_size: int = 8) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as e:
            raise DependencyError(
                "the PostgreSQL store needs psycopg and psycopg-pool", hint="pip install 's3seg[cloud]'"
            ) from e
        self.user_id = uuid_user(user_id) if user_id is not None else None
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error:
            raise StoreError("the database URL is not a valid PostgreSQL connection string", hint=_HINT_URL) from None
        self._secrets = tuple(s for s in (dsn, str(params.get("password") or "")) if s)
        kwargs: dict[str, Any] = {"prepare_threshold": None}  # no server-side statements: poolers (Supavisor)
        if "connect_timeout" not in params:
            kwargs["connect_timeout"] = 10
        try:  # fail now, with the reason (refused, wrong password…), rather than at the first query
            psycopg.connect(dsn, **kwargs).close()
        except psycopg.Error as e:
            raise self._error(e) from None
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=kwargs,
            timeout=15,
            name="s3seg",
            check=ConnectionPool.check_connection,
            open=True,
        )

    def _valid_user(self, user_id: str) -> str:
        return uuid_user(user_id)

    def _release(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------------------------- operations
    def account(self) -> Account:
        uid = self._uid()
        with self._tx() as conn:
            row = conn.execute("select tier, credits from public.users_profile where id = %s", (uid,)).fetchone()
        if row is None:
            raise no_profile(uid)
        return Account(user_id=str(uid), tier=str(row[0]), credits=int(row[1]))

    def _create(self, new: NewTask) -> Task:
        """``project_id`` must be one of the bound user's projects, checked in the transaction that creates
        the task (ProjectNotFound otherwise, nothing created)."""
        from psycopg.types.json import Jsonb

        uid = uuid.UUID(new.user)
        wanted = project_uuid(new.project_id) if new.project_id is not None else None
        with self._tx() as conn:
            pid: uuid.UUID | None = None
            if wanted is not None:
                pid = self._own_project(conn, uid, wanted)
                if pid is None:
                    raise project_not_found(new.project_id)
            elif new.project:
                pid = self._project_id(conn, uid, new.project)
            if new.queue:  # the function adds cost and attempts, and reserves the credits
                row = conn.execute(
                    "select public.create_segmentation_task(%s, %s, %s, %s, %s::int)",
                    (uid, new.text_prompt, pid, Jsonb(new.metadata), new.cost),
                ).fetchone()
                if row is not None and new.frames_total:  # the same transaction: the task never lacks it
                    conn.execute(
                        "update public.segmentation_results set frames_total = %s where id = %s",
                        (new.frames_total, row[0]),
                    )
            else:
                if (
                    pid is None
                    and conn.execute("select 1 from public.users_profile where id = %s", (uid,)).fetchone() is None
                ):
                    raise no_profile(uid)
                row = conn.execute(
                    "insert into public.segmentation_results (user_id, project_id, text_prompt, metadata, status, "
                    "queued, frames_total) values (%s, %s, %s, %s, 'pending', false, %s) returning id",
                    (uid, pid, new.text_prompt, Jsonb(new_metadata(new)), new.frames_total),
                ).fetchone()
            assert row is not None
            return self._get(conn, row[0], uid)

    def start(self, task_id: str) -> Task:
        return self._move(
            task_id,
            "processing",
            f"metadata = jsonb_set(r.metadata, '{{attempts}}', to_jsonb({_ATTEMPTS} + 1)), frames_done = 0",
            (),
        )

    def heartbeat(self, task_id: str, *, done: int | None = None, total: int | None = None) -> bool:
        columns = progress_columns(done, total)
        tid, uid = task_uuid(task_id), self._uid()
        # updated_at: the table's trigger sets it on every update (now(), the transaction's time)
        assignments = ", ".join([*(f"{c} = %s" for c in columns), "updated_at = now()"])
        with self._tx() as conn:
            moved = conn.execute(
                f"update public.segmentation_results set {assignments} "
                "where id = %s and user_id = %s and status = 'processing'",
                (*columns.values(), tid, uid),
            ).rowcount
        return moved > 0

    def _finish(self, task_id: str, r: TaskResult) -> Task:
        from psycopg.types.json import Jsonb

        tid, uid = task_uuid(task_id), self._uid()
        with self._tx() as conn:
            found = conn.execute(
                "select queued, status from public.segmentation_results where id = %s and user_id = %s for update",
                (tid, uid),
            ).fetchone()
            if found is None:
                raise task_not_found(task_id)
            if found[0]:  # a server task: done and charged in one transaction
                if r.cost is not None:  # the price is lowered (never raised) before the function charges it
                    conn.execute(
                        "update public.segmentation_results set metadata = jsonb_set(metadata, '{cost}', "
                        "to_jsonb(least(public.segmentation_task_cost(metadata), %s::int))) "
                        "where id = %s and status = 'processing'",
                        (r.cost, tid),
                    )
                conn.execute(
                    "select public.finish_segmentation_task(%s, %s, %s, %s, %s, %s)",
                    (tid, r.source, r.mask, r.overlay, Jsonb(r.labels), Jsonb(r.metadata)),
                )
            elif found[1] != "processing":
                raise cannot_become(task_id, found[1], "done")
            else:  # not queued: nothing reserved, nothing charged; price and attempts stay the task's own
                conn.execute(
                    "update public.segmentation_results set status = 'done', source_image_url = %s, "
                    "mask_image_url = %s, overlay_image_url = %s, labels = %s, "
                    "metadata = metadata || (%s::jsonb - 'cost' - 'attempts') "
                    "where id = %s and status = 'processing' and not queued",
                    (r.source, r.mask, r.overlay, Jsonb(r.labels), Jsonb(r.metadata), tid),
                )
            return self._get(conn, tid, uid)

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", "error = %s", (error or "unknown error",))

    def get(self, task_id: str) -> Task:
        tid, uid = task_uuid(task_id), self._uid()
        with self._tx() as conn:
            return self._get(conn, tid, uid)

    def _list(self, user: str, project: str | None, status: Status | None, limit: int, offset: int) -> Tasks:
        sql, args = list_query(_SELECT, "%s", "r.id", uuid.UUID(user), project, status, (limit, offset))
        with self._tx() as conn:
            return [task_from_row(r) for r in conn.execute(sql, args).fetchall()]

    # --- the server's background work, across all users -----------------------------------------
    def runnable(self, limit: int = 100) -> Tasks:
        with self._tx() as conn:
            rows = conn.execute(
                _SELECT + " where r.status = 'pending' and r.queued order by r.created_at, r.id limit %s", (limit,)
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def requeue_stale(self, *, older_than_s: float, max_attempts: int) -> Tasks:
        # Rows another sweep holds are skipped, and a row it has just moved no longer matches when re-read:
        # two servers sweeping at once move each task once.
        args = {"age": float(older_than_s), "max": int(max_attempts)}
        with self._tx() as conn:
            conn.execute(
                f"with stale as ({_STALE.format(cond=_ATTEMPTS + ' >= %(max)s')}) "
                "update public.segmentation_results r set status = 'error', error = format("
                "'the worker running this task stopped responding (attempt %%s of %%s)', stale.attempts, %(max)s) "
                "from stale where r.id = stale.id",
                args,
            )
            rows = conn.execute(
                f"with stale as ({_STALE.format(cond=_ATTEMPTS + ' < %(max)s')}), moved as ("
                "update public.segmentation_results r set status = 'pending' from stale where r.id = stale.id "
                f"returning r.*) select {COLUMNS} from moved{_JOIN} order by r.created_at, r.id",
                args,
            ).fetchall()
        return [task_from_row(r) for r in rows]

    # ------------------------------------------------------------------------------------- internals
    def _move(self, task_id: str, status: Status, assignment: str, args: tuple[Any, ...]) -> Task:
        tid, uid = task_uuid(task_id), self._uid()
        with self._tx() as conn:
            row = conn.execute(
                f"with moved as (update public.segmentation_results r set status = %s, {assignment} "
                f"where r.id = %s and r.user_id = %s and r.status = any(%s) returning r.*) "
                f"select {COLUMNS} from moved{_JOIN}",
                (status, *args, tid, uid, list(PREVIOUS[status])),
            ).fetchone()
            if row is not None:
                return task_from_row(row)
            now = conn.execute(
                "select status from public.segmentation_results where id = %s and user_id = %s", (tid, uid)
            ).fetchone()
        if now is None:
            raise task_not_found(task_id)
        raise cannot_become(task_id, now[0], status)

    def _get(self, conn: Conn, tid: uuid.UUID, uid: uuid.UUID) -> Task:
        row = conn.execute(_SELECT + " where r.id = %s and r.user_id = %s", (tid, uid)).fetchone()
        if row is None:
            raise task_not_found(tid)
        return task_from_row(row)

    def _own_project(self, conn: Conn, uid: uuid.UUID, project_id: uuid.UUID) -> uuid.UUID | None:
        """``project_id`` if it is one of the user's projects (locked against deletion until the task is
        inserted), else None."""
        self._lock_profile(conn, uid)
        row = conn.execute(
            "select id from public.projects where id = %s and user_id = %s for key share", (project_id, uid)
        ).fetchone()
        return None if row is None else row[0]

    def _lock_profile(self, conn: Conn, uid: uuid.UUID) -> None:
        # The profile first, as create_segmentation_task locks it: two new projects of one user cannot
        # deadlock on the key-share locks their foreign keys take.
        if conn.execute("select 1 from public.users_profile where id = %s for update", (uid,)).fetchone() is None:
            raise no_profile(uid)

    def _project_id(self, conn: Conn, uid: uuid.UUID, name: str) -> uuid.UUID:
        self._lock_profile(conn, uid)
        row = conn.execute(
            "insert into public.projects (user_id, name) values (%s, %s) "
            "on conflict (user_id, name) do nothing returning id",
            (uid, name),
        ).fetchone()
        if row is None:  # it exists (or a concurrent call has just created it)
            row = conn.execute(
                "select id from public.projects where user_id = %s and name = %s", (uid, name)
            ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def _uid(self) -> uuid.UUID:
        return uuid.UUID(self._bound_user())

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One pooled connection and transaction: committed when the block ends, rolled back on an error."""
        import psycopg

        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as e:
            raise self._error(e) from e

    def _error(self, e: psycopg.Error) -> S3SegError:
        import psycopg

        detail = self._scrub(e.diag.message_detail or e.diag.message_primary or "")
        known = function_error(e.sqlstate or "", e.diag.message_primary or "", detail)
        if known is not None:
            return known
        message = self._scrub(" ".join(str(e).split()))
        state = e.sqlstate or ""
        if isinstance(e, psycopg.OperationalError) and (not state or state.startswith("08")):
            return StoreError(f"cannot reach the database: {message}", hint=_HINT_URL)
        return StoreError(f"database error: {message}")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
