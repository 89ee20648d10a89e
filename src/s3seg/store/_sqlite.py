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

import copy
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from s3seg.errors import UsageError
from s3seg.store import STATUSES, Account, Status, StoreError, Task, TaskNotFound

LOCAL_USER = "local"
Tasks = list[Task]  # (a method named `list` below shadows the builtin inside the class)
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
    check ((status = 'error') = (error is not null))
);
create index if not exists results_by_time on segmentation_results (user_id, created_at desc);
create index if not exists results_by_project on segmentation_results (project_id);
"""
# Files written before tasks were queued lack the column (their rows are plain, not the server's).
_QUEUED = "alter table segmentation_results add column queued integer not null default 0"
_QUEUED_INDEX = (
    "create index if not exists results_queued on segmentation_results (status, created_at) where queued = 1"
)
# Allowed moves of the public methods (``_move``); anything else is a bug in the caller and is refused.
# ``requeue_stale`` alone also moves a task back, ``processing → pending``, with its own guarded update.
_NEXT: dict[str, tuple[Status, ...]] = {"pending": ("processing", "error"), "processing": ("done", "error")}
# Kept by the store in every task's metadata; a caller's metadata does not overwrite them.
_OWN_KEYS = ("cost", "attempts")
_PROJECT_HINT = "list your projects, or pass a project name"


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path, *, user_id: str = LOCAL_USER) -> None:
        self.path = Path(path)
        self.user_id: str | None = user_id  # always set here; typed as the Store protocol's attribute
        self._user = user_id
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            try:
                db.execute("pragma journal_mode=wal")  # persistent: readers never wait for writers
                db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
                if "queued" not in {c[1] for c in db.execute("pragma table_info(segmentation_results)")}:
                    try:
                        db.execute(_QUEUED)
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

    def for_user(self, user_id: str) -> SQLiteStore:
        """The same database file, bound to ``user_id``."""
        if not user_id:
            raise UsageError("a store needs a user id")
        bound = copy.copy(self)  # nothing to share but the path: every operation opens its own connection
        bound.user_id = bound._user = user_id
        return bound

    def account(self) -> Account:
        """Credits are not counted locally: every user is ``enterprise`` with ``credits=None`` (unlimited)."""
        return Account(self._user, tier="enterprise", credits=None)

    def create_task(
        self,
        prompts: list[str],
        *,
        project: str | None = None,
        project_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        cost: int = 0,
        queue: bool = False,
    ) -> Task:
        """A pending task; ``queue=True``: one for a server's workers (``runnable``). A queued task's
        ``cost`` is recorded in its metadata but not reserved (no credits here). ``project_id`` must be one
        of the user's projects (checked in the insert's transaction; TaskNotFound otherwise)."""
        if project is not None and project_id is not None:
            raise UsageError("give a project name or a project id, not both")
        if cost < 0:
            raise UsageError(f"a task's cost must be >= 0, got {cost}")
        if cost and not queue:
            raise UsageError(
                "credits are only reserved for queued tasks",
                hint=f"create the task with queue=True, or with cost=0 (got cost={cost})",
            )
        now = _now()
        task_id = str(uuid.uuid4())
        with self._tx() as db:
            if project_id is not None:
                project_id = self._own_project(db, project_id)
            elif project:
                project_id = self._project_id(db, project, now)
            db.execute(
                "insert into segmentation_results (id, project_id, user_id, text_prompt, metadata, status, "
                "created_at, updated_at, queued) values (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                (
                    task_id,
                    project_id,
                    self._user,
                    ", ".join(prompts),
                    json.dumps({"prompts": prompts, **(metadata or {}), "cost": cost, "attempts": 0}),
                    now,
                    now,
                    int(queue),
                ),
            )
        return self.get(task_id)

    def start(self, task_id: str) -> Task:
        def attempt(meta: dict[str, Any]) -> dict[str, Any]:
            return {"metadata": json.dumps({**meta, "attempts": _attempts(meta) + 1})}

        return self._move(task_id, "processing", attempt)

    def finish(
        self, task_id: str, *, source: str, mask: str, overlay: str, labels: list[Any], metadata: dict[str, Any]
    ) -> Task:
        def done(meta: dict[str, Any]) -> dict[str, Any]:
            new = {k: v for k, v in metadata.items() if k not in _OWN_KEYS}  # as finish_segmentation_task
            return {
                "source_image_url": source,
                "mask_image_url": mask,
                "overlay_image_url": overlay,
                "labels": json.dumps(labels),
                "metadata": json.dumps({**meta, **new}),
            }

        return self._move(task_id, "done", done)

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", lambda _: {"error": error or "unknown error"})

    def _move(self, task_id: str, status: Status, values: Callable[[dict[str, Any]], dict[str, Any]]) -> Task:
        """Move one of the user's tasks along ``_NEXT``; ``values`` gives the other columns to write from
        the task's current metadata (read in the same transaction)."""
        with self._tx() as db:
            row = db.execute(
                "select status, metadata from segmentation_results where id = ? and user_id = ?", (task_id, self._user)
            ).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id}", hint="list tasks with: s3seg tasks")
            if status not in _NEXT.get(row[0], ()):
                raise StoreError(f"task {task_id} is {row[0]}; it cannot become {status}")
            _update(db, task_id, {**values(json.loads(row[1])), "status": status})
        return self.get(task_id)

    def get(self, task_id: str) -> Task:
        with self._tx() as db:
            row = db.execute(_SELECT + " where r.id = ? and r.user_id = ?", (task_id, self._user)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id}", hint="list tasks with: s3seg tasks")
        return _task(row)

    def list(
        self, *, project: str | None = None, status: Status | None = None, limit: int = 20, offset: int = 0
    ) -> list[Task]:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        where, args = ["r.user_id = ?"], [self._user]
        if project is not None:
            where.append("p.name = ?")
            args.append(project)
        if status is not None:
            where.append("r.status = ?")
            args.append(status)
        sql = _SELECT + f" where {' and '.join(where)} order by r.created_at desc, r.rowid desc limit ? offset ?"
        with self._tx() as db:
            rows = db.execute(sql, (*args, limit, offset)).fetchall()
        return [_task(r) for r in rows]

    # --- the server's background work, across all users ------------------------------------------
    def runnable(self, limit: int = 100) -> Tasks:
        """Queued ``pending`` tasks of every user, oldest first."""
        with self._tx() as db:
            rows = db.execute(
                _SELECT + " where r.status = 'pending' and r.queued = 1 order by r.created_at, r.rowid limit ?",
                (limit,),
            ).fetchall()
        return [_task(r) for r in rows]

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
                attempts = _attempts(json.loads(meta))
                if attempts < max_attempts:
                    _update(db, task_id, {"status": "pending"})
                    requeued.append(task_id)
                else:
                    _update(db, task_id, {"status": "error", "error": _gave_up(attempts, max_attempts)})
            rows = [db.execute(_SELECT + " where r.id = ?", (i,)).fetchone() for i in requeued]
        return [_task(r) for r in rows]

    def _own_project(self, db: sqlite3.Connection, project_id: str) -> str:
        row = db.execute("select id from projects where id = ? and user_id = ?", (project_id, self._user)).fetchone()
        if row is None:
            raise TaskNotFound(f"no project {project_id}", hint=_PROJECT_HINT)
        return str(row[0])

    def _project_id(self, db: sqlite3.Connection, name: str, now: str) -> str:
        row = db.execute("select id from projects where user_id = ? and name = ?", (self._user, name)).fetchone()
        if row is not None:
            return str(row[0])
        project_id = str(uuid.uuid4())
        db.execute(
            "insert into projects (id, user_id, name, created_at, updated_at) values (?, ?, ?, ?, ?)",
            (project_id, self._user, name, now, now),
        )
        return project_id


_SELECT = (
    "select r.id, r.status, r.text_prompt, r.created_at, r.updated_at, r.user_id, r.project_id, p.name, "
    "r.source_image_url, r.mask_image_url, r.overlay_image_url, r.labels, r.metadata, r.error "
    "from segmentation_results r left join projects p on p.id = r.project_id"
)


def _task(row: tuple[Any, ...]) -> Task:
    (
        id_,
        status,
        prompt,
        created,
        updated,
        user,
        project_id,
        project,
        source,
        mask,
        overlay,
        labels,
        metadata,
        error,
    ) = row
    return Task(
        id=id_,
        status=status,
        text_prompt=prompt,
        created_at=datetime.fromisoformat(created),
        updated_at=datetime.fromisoformat(updated),
        user_id=user,
        project_id=project_id,
        project=project,
        source_image_url=source,
        mask_image_url=mask,
        overlay_image_url=overlay,
        labels=json.loads(labels),
        metadata=json.loads(metadata),
        error=error,
    )


def _update(db: sqlite3.Connection, task_id: str, values: dict[str, Any]) -> None:
    columns = {**values, "updated_at": _now()}
    assignments = ", ".join(f"{c} = ?" for c in columns)
    db.execute(f"update segmentation_results set {assignments} where id = ?", (*columns.values(), task_id))


def _gave_up(attempts: int, max_attempts: int) -> str:
    return f"the worker running this task stopped responding (attempt {attempts} of {max_attempts})"


def _attempts(metadata: dict[str, Any]) -> int:
    """How often a worker started the task (0 for rows written before attempts were counted)."""
    value = metadata.get("attempts")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
