"""The records s3seg keeps and hands out: a :class:`Task` (one row of ``segmentation_results``) and an
:class:`Account` (a user's tier and credits).

Neutral ground: the stores (``s3seg.store``) write and read them, the public API's client
(``s3seg._public``) builds them from the server's answers, and the server serialises them; none of
those imports another for these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Status = Literal["pending", "processing", "done", "error"]
STATUSES: tuple[Status, ...] = ("pending", "processing", "done", "error")


@dataclass(frozen=True)
class Task:
    """One row of ``segmentation_results``: one image (or video) segmented with one set of prompts.
    ``frames_done``/``frames_total``: a running task's progress (a video's frames; an image is one step);
    ``frames_total`` 0 while unknown."""

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
    frames_done: int = 0
    frames_total: int = 0

    @property
    def prompts(self) -> list[str]:
        return list(self.metadata.get("prompts") or [p for p in self.text_prompt.split(", ") if p])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        """The inverse of :meth:`to_dict`; also reads the public API's task objects and database rows
        (ids as uuids, times as datetimes or ISO strings)."""
        return cls(
            id=str(d.get("id") or d["task_id"]),
            status=d["status"],
            text_prompt=d.get("text_prompt") or "",
            created_at=_time(d["created_at"]),
            updated_at=_time(d["updated_at"]),
            user_id=_str(d.get("user_id")),
            project_id=_str(d.get("project_id")),
            project=d.get("project"),
            source_image_url=d.get("source_image_url"),
            mask_image_url=d.get("mask_image_url"),
            overlay_image_url=d.get("overlay_image_url"),
            labels=d.get("labels") or [],
            metadata=d.get("metadata") or {},
            error=d.get("error"),
            frames_done=int(d.get("frames_done") or 0),
            frames_total=int(d.get("frames_total") or 0),
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
            "frames_done": self.frames_done,
            "frames_total": self.frames_total,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class Account:
    """A user's profile as the server sees it. ``credits`` is None where they are not counted."""

    user_id: str
    tier: str
    credits: int | None


__all__ = ["STATUSES", "Account", "Status", "Task"]
