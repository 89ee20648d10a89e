"""Task and result metadata: SQLite on this machine (default), PostgreSQL (``S3SEG_DATABASE_URL``, e.g.
Supabase's direct connection) or Supabase's REST API (``segmentation_results``).

A task is one image segmented with one set of prompts. Its status moves
``pending → processing → done | error``; an error keeps its reason. A task whose worker died while
``processing`` goes back to ``pending`` (or to ``error`` after its last attempt), see ``requeue_stale``.
Object URLs are storage keys (resolved to time-limited URLs when read), so private R2 buckets work.

A store is bound to one user (``for_user``): its task operations see only that user's rows. Credits
(PostgreSQL and Supabase; the local SQLite store does not count them): ``create_task(cost=n)`` reserves
``n`` credits atomically — it raises :class:`CreditsError` when the user's credits minus what their
unfinished tasks have reserved is below ``n`` — and ``finish`` deducts them (and logs the usage) in the
same transaction that marks the task done, so a success is charged exactly once and a failure never.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from s3seg.errors import CreditsError, StoreError, TaskNotFound

if TYPE_CHECKING:
    from s3seg.config import Settings

Status = Literal["pending", "processing", "done", "error"]
STATUSES: tuple[Status, ...] = ("pending", "processing", "done", "error")


@dataclass(frozen=True)
class Task:
    """One row of ``segmentation_results``."""

    id: str
    status: Status
    text_prompt: str
    created_at: datetime
    updated_at: datetime
    user_id: str | None = None
    project_id: str | None = None
    project: str | None = None
    source_image_url: str | None = None
    mask_image_url: str | None = None
    overlay_image_url: str | None = None
    labels: list[Any] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def prompts(self) -> list[str]:
        return list(self.metadata.get("prompts") or [p for p in self.text_prompt.split(", ") if p])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """The inverse of :meth:`to_dict` (also reads the public API's task objects)."""
        return cls(
            id=str(d.get("id") or d["task_id"]),
            status=d["status"],
            text_prompt=d.get("text_prompt") or "",
            created_at=_time(d["created_at"]),
            updated_at=_time(d["updated_at"]),
            user_id=d.get("user_id"),
            project_id=d.get("project_id"),
            project=d.get("project"),
            source_image_url=d.get("source_image_url"),
            mask_image_url=d.get("mask_image_url"),
            overlay_image_url=d.get("overlay_image_url"),
            labels=d.get("labels") or [],
            metadata=d.get("metadata") or {},
            error=d.get("error"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "text_prompt": self.text_prompt,
            "project": self.project,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "source_image_url": self.source_image_url,
            "mask_image_url": self.mask_image_url,
            "overlay_image_url": self.overlay_image_url,
            "labels": self.labels,
            "metadata": self.metadata,
            "error": self.error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Account:
    """A user's profile as the server sees it. ``credits`` is None where they are not counted."""

    user_id: str
    tier: str
    credits: int | None


class Store(Protocol):
    name: str
    user_id: str | None  # None: not bound to a user yet (a server's store before ``for_user``)

    def for_user(self, user_id: str) -> Store:
        """The same store (sharing connections) bound to ``user_id``."""
        ...

    def account(self) -> Account:
        """The bound user's tier and credits (:class:`AccountNotFound` when there is no profile)."""
        ...

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
        """A ``pending`` task; ``metadata`` keeps ``prompts``, ``cost`` and ``attempts`` (0) as well.
        ``queue=True``: a task for the server's workers (``runnable``/``requeue_stale`` see only these;
        ``cost`` credits are reserved now and charged by ``finish``).

        The task's project: ``project`` by name (created if the user has none of that name), or
        ``project_id``, the id of one of the bound user's projects — checked in the same transaction as
        the insert; an unknown or malformed id, or another user's project, raises :class:`TaskNotFound`
        and creates nothing. Giving both is a :class:`UsageError`."""
        ...

    def start(self, task_id: str) -> Task:
        """``pending → processing`` and ``attempts + 1``; StoreError when the task is not pending (another
        worker took it)."""
        ...

    def finish(
        self, task_id: str, *, source: str, mask: str, overlay: str, labels: list[Any], metadata: dict[str, Any]
    ) -> Task: ...

    def fail(self, task_id: str, error: str) -> Task: ...

    def get(self, task_id: str) -> Task: ...

    # --- the server's background work, across all users -----------------------------------------
    def runnable(self, limit: int = 100) -> list[Task]:
        """``pending`` tasks of every user, oldest first."""
        ...

    def requeue_stale(self, *, older_than_s: float, max_attempts: int) -> list[Task]:
        """Tasks ``processing`` without an update for ``older_than_s`` (their worker died): back to
        ``pending`` while ``attempts < max_attempts``, else ``error`` with the reason. Returns the
        requeued ones."""
        ...

    def list(
        self, *, project: str | None = None, status: Status | None = None, limit: int = 20, offset: int = 0
    ) -> list[Task]: ...


def store_from_settings(settings: Settings) -> Store:
    """PostgreSQL when a database URL is set, else Supabase when its URL and a key are set, else SQLite
    under the data dir."""
    if settings.database_url:
        from s3seg.store._postgres import PostgresStore

        return PostgresStore(settings.database_url.get_secret_value(), user_id=settings.user_id)
    if settings.supabase_url and (settings.supabase_service_key or settings.supabase_anon_key):
        from s3seg.store._supabase import SupabaseStore

        return SupabaseStore.from_settings(settings)
    from s3seg.store._sqlite import SQLiteStore

    return SQLiteStore(settings.data_dir / "s3seg.db")


__all__ = [
    "STATUSES",
    "Account",
    "CreditsError",
    "Status",
    "Store",
    "StoreError",
    "Task",
    "TaskNotFound",
    "store_from_settings",
]
