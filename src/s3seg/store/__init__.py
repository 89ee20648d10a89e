"""Task and result metadata: SQLite on this machine (default) or Supabase (``segmentation_results``).

A task is one image segmented with one set of prompts. Its status moves
``pending → processing → done | error``; an error keeps its reason. Object URLs are storage keys
(resolved to time-limited URLs when read), so private R2 buckets work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from s3seg.errors import StoreError, TaskNotFound

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "text_prompt": self.text_prompt, "project": self.project,
            "project_id": self.project_id, "user_id": self.user_id,
            "source_image_url": self.source_image_url, "mask_image_url": self.mask_image_url,
            "overlay_image_url": self.overlay_image_url, "labels": self.labels, "metadata": self.metadata,
            "error": self.error, "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
        }


class Store(Protocol):
    name: str

    def create_task(self, prompts: list[str], *, project: str | None = None,
                    metadata: dict[str, Any] | None = None) -> Task: ...

    def start(self, task_id: str) -> Task: ...

    def finish(self, task_id: str, *, source: str, mask: str, overlay: str, labels: list[Any],
               metadata: dict[str, Any]) -> Task: ...

    def fail(self, task_id: str, error: str) -> Task: ...

    def get(self, task_id: str) -> Task: ...

    def list(self, *, project: str | None = None, status: Status | None = None, limit: int = 20,
             offset: int = 0) -> list[Task]: ...


def store_from_settings(settings: Settings) -> Store:
    """Supabase when its URL and a key are set, else SQLite under the data dir."""
    if settings.supabase_url and (settings.supabase_service_key or settings.supabase_anon_key):
        from s3seg.store._supabase import SupabaseStore

        return SupabaseStore.from_settings(settings)
    from s3seg.store._sqlite import SQLiteStore

    return SQLiteStore(settings.data_dir / "s3seg.db")


__all__ = ["STATUSES", "Status", "Store", "StoreError", "Task", "TaskNotFound", "store_from_settings"]
