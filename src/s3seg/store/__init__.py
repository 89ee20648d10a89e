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

from typing import TYPE_CHECKING

from s3seg.errors import CreditsError, StoreError, TaskNotFound
from s3seg.models import STATUSES, Account, Status, Task
from s3seg.store._base import Store

if TYPE_CHECKING:
    from s3seg.config import Settings


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
