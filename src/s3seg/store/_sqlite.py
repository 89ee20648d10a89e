"""The embedded results store: one SQLite file, safe for several processes and threads at once.

The schema mirrors Supabase's ``projects`` and ``segmentation_results`` (one local user). WAL mode lets
readers run while a writer writes; every write is one short ``BEGIN IMMEDIATE`` transaction, and a busy
database is waited for rather than failing.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from s3seg.store import STATUSES, Status, StoreError, Task, TaskNotFound

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
    check ((status = 'error') = (error is not null))
);
create index if not exists results_by_time on segmentation_results (user_id, created_at desc);
create index if not exists results_by_project on segmentation_results (project_id);
"""
# Allowed moves; anything else is a bug in the caller and is refused.
_NEXT: dict[str, tuple[Status, ...]] = {"pending": ("processing", "error"), "processing": ("done", "error")}


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
            try:
                db.execute("pragma journal_mode=wal")  # persistent: readers never wait for writers
                db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
            finally:
                db.close()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the results database {self.path}: {e}",
                             hint="check S3SEG_DATA_DIR and its permissions") from e

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

    def create_task(self, prompts: list[str], *, project: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Task:
        now = _now()
        task_id = str(uuid.uuid4())
        with self._tx() as db:
            project_id = self._project_id(db, project, now) if project else None
            db.execute(
                "insert into segmentation_results (id, project_id, user_id, text_prompt, metadata, status, "
                "created_at, updated_at) values (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (task_id, project_id, LOCAL_USER, ", ".join(prompts),
                 json.dumps({"prompts": prompts, **(metadata or {})}), now, now),
            )
        return self.get(task_id)

    def start(self, task_id: str) -> Task:
        return self._move(task_id, "processing", {})

    def finish(self, task_id: str, *, source: str, mask: str, overlay: str, labels: list[Any],
               metadata: dict[str, Any]) -> Task:
        old = self.get(task_id)
        return self._move(task_id, "done", {
            "source_image_url": source, "mask_image_url": mask, "overlay_image_url": overlay,
            "labels": json.dumps(labels), "metadata": json.dumps({**old.metadata, **metadata}),
        })

    def fail(self, task_id: str, error: str) -> Task:
        return self._move(task_id, "error", {"error": error or "unknown error"})

    def _move(self, task_id: str, status: Status, values: dict[str, Any]) -> Task:
        with self._tx() as db:
            row = db.execute("select status from segmentation_results where id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id}", hint="list tasks with: s3seg tasks")
            if status not in _NEXT.get(row[0], ()):
                raise StoreError(f"task {task_id} is {row[0]}; it cannot become {status}")
            columns = {**values, "status": status, "updated_at": _now()}
            assignments = ", ".join(f"{c} = ?" for c in columns)
            db.execute(f"update segmentation_results set {assignments} where id = ?", (*columns.values(), task_id))
        return self.get(task_id)

    def get(self, task_id: str) -> Task:
        with self._tx() as db:
            row = db.execute(_SELECT + " where r.id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id}", hint="list tasks with: s3seg tasks")
        return _task(row)

    def list(self, *, project: str | None = None, status: Status | None = None, limit: int = 20,
             offset: int = 0) -> list[Task]:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        where, args = ["r.user_id = ?"], [LOCAL_USER]
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

    def _project_id(self, db: sqlite3.Connection, name: str, now: str) -> str:
        row = db.execute("select id from projects where user_id = ? and name = ?", (LOCAL_USER, name)).fetchone()
        if row is not None:
            return str(row[0])
        project_id = str(uuid.uuid4())
        db.execute("insert into projects (id, user_id, name, created_at, updated_at) values (?, ?, ?, ?, ?)",
                   (project_id, LOCAL_USER, name, now, now))
        return project_id


_SELECT = (
    "select r.id, r.status, r.text_prompt, r.created_at, r.updated_at, r.user_id, r.project_id, p.name, "
    "r.source_image_url, r.mask_image_url, r.overlay_image_url, r.labels, r.metadata, r.error "
    "from segmentation_results r left join projects p on p.id = r.project_id"
)


def _task(row: tuple[Any, ...]) -> Task:
    (id_, status, prompt, created, updated, user, project_id, project, source, mask, overlay, labels, metadata,
     error) = row
    return Task(id=id_, status=status, text_prompt=prompt, created_at=datetime.fromisoformat(created),
                updated_at=datetime.fromisoformat(updated), user_id=user, project_id=project_id, project=project,
                source_image_url=source, mask_image_url=mask, overlay_image_url=overlay, labels=json.loads(labels),
                metadata=json.loads(metadata), error=error)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
