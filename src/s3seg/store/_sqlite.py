"""The embedded results store: one SQLite file, safe for several processes and threads at once.

The schema mirrors Supabase's ``projects`` and ``segmentation_results``. A store is bound to one user
(``local`` unless ``for_user`` says otherwise) and sees only that user's rows. Tasks for a server's
workers (``create_task(queue=True)``, ``queued`` rows) are the only ones ``runnable`` and requeued; a
result the CLI records itself is a plain row. Credits are not counted here: every account is
``enterprise`` with unlimited credits, and a queued task's ``cost`` is recorded in its metadata but
neither reserved nor charged.

WAL mode lets readers run while a writer writes; every write is one short ``BEGIN IMMEDIATE`` transaction
(so a check and the write it guards cannot interleave with another process's), and a busy database is
waited for rather than failing.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from s3seg.errors import StoreError
from s3seg.models import Account, Status, Task
from s3seg.store._base import (
    COLUMNS,
    NewTask,
    Store,
    TaskResult,
    Tasks,
    attempts,
    check_move,
    finished_metadata,
    gave_up,
    list_query,
    new_metadata,
    progress_columns,
    project_not_found,
    task_from_row,
    task_not_found,
)

LOCAL_USER = "local"
_SCHEMA = """
create table if not exists projects (
    id text primary key,
    user_id text not null,
    name text not null,
    description text,
    created_at text not null,
    updated_at text not null,
    unique (user_id, name)
);
create table if not exists segmentation_results (
    id text primary key,
    project_id text references projects(id) on delete set null,
    user_id text not null,
    source_image_url text,
    mask_image_url text,
    overlay_image_url text,
    text_prompt text not null,
    labels text not null default '[]',
    metadata text not null default '{}',
    status text not null default 'pending' check (status in ('pending', 'processing', 'done', 'error')),
    error text,
    created_at text not null,
    updated_at text not null,
    queued integer not null default 0,
    frames_done integer not null default 0,
    frames_total integer not null default 0,
    check ((status = 'error') = (error is not null))
);
create index if not exists results_by_time on segmentation_results (user_id, created_at desc);
create index if not exists results_by_project on segmentation_results (project_id);
"""
# Files written before tasks were queued (their rows are plain, not the server's), or before tasks reported
# progress, lack these columns.
_ADDED = {
    "queued": "alter table segmentation_results add column queued integer not null default 0",
    "frames_done": "alter table segmentation_results add column frames_done integer not null default 0",
    "frames_total": "alter table segmentation_results add column frames_total integer not null default 0",
}
_QUEUED_INDEX = (
    "create index if not exists results_queued on segmentation_results (status, created_at) where queued = 1"
)


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, path: Path, *, user_id: str = LOCAL_USER) -> None:
        self.path = Path(path)
        self.user_id: str | None = user_id  # always set here; typed as the Store protocol's attribute
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            try:
                db.execute("pragma journal_mode=wal")  # persistent: readers never wait for writers
                db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
                present = {c[1] for c in db.execute("pragma table_info(segmentation_results)")}
                for column, statement in _ADDED.items():
                    if column in present:
                        continue
                    try:
                        db.execute(statement)
                    except sqlite3.OperationalError as e:  # another process has just added it
                        if "duplicate column" not in str(e):
                            raise
                db.executescript(_QUEUED_INDEX)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(
                f"cannot open the results database {self.path}: {e}", hint="check S3SEG_DATA_DIR and its permissions"
            ) from e

    # Nothing to share or close but the path: every operation opens (and closes) its own connection.
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("pragma foreign_keys=on")
            db.execute("begin immediate")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")
        except sqlite3.Error as e:
            raise StoreError(f"results database error: {e}") from e
        finally:
            db.close()

    def account(self) -> Account:
        """Credits are not counted locally: every user is ``enterprise`` with ``credits=None`` (unlimited)."""
        return Account(self._bound_user(), tier="enterprise", credits=None)

    def _create(self, new: NewTask) -> Task:
        """A queued task's ``cost`` is recorded in its metadata but not reserved (no credits here).
        ``project_id`` must be one of the user's projects (checked in the insert's transaction)."""
        now = _now()
        task_id = str(uuid.uuid4())
        with self._tx() as db:
            project_id = new.project_id
            if project_id is not None:
                project_id = self._own_project(db, new.user, project_id)
            elif new.project:
                project_id = self._project_id(db, new.user, new.project, now)
            db.execute(
                "insert into segmentation_results (id, project_id, user_id, text_prompt, metadata, status, "
                "created_at, updated_at, queued, frames_total) values (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (
                    *(task_id, project_id, new.user, new.text_prompt, json.dumps(new_metadata(new))),
                    *(now, now, new.queue, new.frames_total),
                ),
            )
        return self.get(task_id)

    def start(self, task_id: str) -> Task:
        def attempt(meta: dict[str, Any]) -> dict[str, Any]:
            return {"metadata": json.dumps({**meta, "attempts": attempts(meta) + 1}), "frames_done": 0}

        return self._move(task_id, "processing", attempt)

    def heartbeat(self, task_id: str, *, done: int | None = None, total: int | None = None) -> bool:
        columns = {**progress_columns(done, total), "updated_at": _now()}
        assignments = ", ".join(f"{c} = ?" for c in columns)
        with self._tx() as db:
            moved = db.execute(
                f"update segmentation_results set {assignments} where id = ? and user_id = ? and status = 'processing'",
                (*columns.values(), task_id, self._bound_user()),
            ).rowcount
        return bool(moved)

    def _finish(self, task_id: str, r: TaskResult) -> Task:
        def done(meta: dict[str, Any]) -> dict[str, Any]:
            return {
                "source_image_url": r.source,
                "mask_image_url": r.mask,
                "overlay_image_url": r.overlay,
                "labels": json.dumps(r.labels),
                "metadata": json.dumps(finished_metadata(meta, r.metadata, r.cost)),
            }

        return self._move(task_id, "done", done)

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", lambda _: {"error": error or "unknown error"})

    def _move(self, task_id: str, status: Status, values: Callable[[dict[str, Any]], dict[str, Any]]) -> Task:
        """Move one of the user's tasks (``PREVIOUS``); ``values`` gives the other columns to write from
        the task's current metadata (read in the same transaction)."""
        with self._tx() as db:
            row = db.execute(
                "select status, metadata from segmentation_results where id = ? and user_id = ?",
                (task_id, self._bound_user()),
            ).fetchone()
            if row is None:
                raise task_not_found(task_id)
            check_move(task_id, row[0], status)
            _update(db, task_id, {**values(json.loads(row[1])), "status": status})
        return self.get(task_id)

    def get(self, task_id: str) -> Task:
        with self._tx() as db:
            row = db.execute(_SELECT + " where r.id = ? and r.user_id = ?", (task_id, self._bound_user())).fetchone()
        if row is None:
            raise task_not_found(task_id)
        return task_from_row(row)

    def _list(self, user: str, project: str | None, status: Status | None, limit: int, offset: int) -> Tasks:
        sql, args = list_query(_SELECT, "?", "r.rowid", user, project, status, (limit, offset))
        with self._tx() as db:
            rows = db.execute(sql, args).fetchall()
        return [task_from_row(r) for r in rows]

    # --- the server's background work, across all users ------------------------------------------
    def runnable(self, limit: int = 100) -> Tasks:
        """Queued ``pending`` tasks of every user, oldest first."""
        with self._tx() as db:
            rows = db.execute(
                _SELECT + " where r.status = 'pending' and r.queued = 1 order by r.created_at, r.rowid limit ?",
                (limit,),
            ).fetchall()
        return [task_from_row(r) for r in rows]

    def requeue_stale(self, *, older_than_s: float, max_attempts: int) -> Tasks:
        """Queued tasks of every user ``processing`` without an update for ``older_than_s``: back to ``pending``
        while ``attempts < max_attempts``, else ``error``. One ``BEGIN IMMEDIATE`` transaction, so
        concurrent callers (threads, processes, servers on this file) requeue each task once. Returns the
        requeued tasks, oldest first."""
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=older_than_s)).isoformat(timespec="microseconds")
        with self._tx() as db:
            stale = db.execute(
                "select id, metadata from segmentation_results where status = 'processing' "
                "and queued = 1 and updated_at < ? order by created_at, rowid",
                (cutoff,),
            ).fetchall()
            requeued = []
            for task_id, meta in stale:
                tries = attempts(json.loads(meta))
                if tries < max_attempts:
                    _update(db, task_id, {"status": "pending"})
                    requeued.append(task_id)
                else:
                    _update(db, task_id, {"status": "error", "error": gave_up(tries, max_attempts)})
            rows = [db.execute(_SELECT + " where r.id = ?", (i,)).fetchone() for i in requeued]
        return [task_from_row(r) for r in rows]

    def _own_project(self, db: sqlite3.Connection, user: str, project_id: str) -> str:
        row = db.execute("select id from projects where id = ? and user_id = ?", (project_id, user)).fetchone()
        if row is None:
            raise project_not_found(project_id)
        return str(row[0])

    def _project_id(self, db: sqlite3.Connection, user: str, name: str, now: str) -> str:
        row = db.execute("select id from projects where user_id = ? and name = ?", (user, name)).fetchone()
        if row is not None:
            return str(row[0])
        project_id = str(uuid.uuid4())
        db.execute(
            "insert into projects (id, user_id, name, created_at, updated_at) values (?, ?, ?, ?, ?)",
            (project_id, user, name, now, now),
        )
        return project_id


_SELECT = f"select {COLUMNS} from segmentation_results r left join projects p on p.id = r.project_id"


def _update(db: sqlite3.Connection, task_id: str, values: dict[str, Any]) -> None:
    columns = {**values, "updated_at": _now()}
    assignments = ", ".join(f"{c} = ?" for c in columns)
    db.execute(f"update segmentation_results set {assignments} where id = ?", (*columns.values(), task_id))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
