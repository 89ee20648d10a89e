"""The :class:`Store` every results store is, and what they share: argument checks, the allowed status moves,
the attempt count and the reason a task is given up, the errors stores raise, and the mapping of our SQL
functions' error contract (supabase/migrations) to s3seg errors.

A store subclasses :class:`Store` and writes only what talks to its database: ``_create`` (after the
arguments are checked), ``_list`` (after the status is), the abstract methods, and ``_release`` when it
holds connections. ``for_user`` copies the store (sharing its connections) and ``close`` releases them
once, from the store that made them.
"""

from __future__ import annotations

import copy
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from s3seg.errors import (
    AccountNotFound,
    CreditsError,
    ProjectNotFound,
    S3SegError,
    StoreError,
    TaskNotFound,
    UsageError,
)
from s3seg.models import STATUSES, Account, Status, Task

Tasks = list[Task]  # (a method named `list` shadows the builtin inside the store classes)
S = TypeVar("S", bound="Store")

# Where a task may come from, for each status it can be moved to by start/finish/fail. Anything else is a
# bug in the caller (or another worker's move) and is refused. ``requeue_stale`` alone also moves a task
# back, ``processing → pending``.
PREVIOUS: dict[Status, tuple[Status, ...]] = {
    "processing": ("pending",),
    "done": ("processing",),
    "error": ("pending", "processing"),
}
# Kept by the store in every task's metadata; a caller's metadata does not overwrite them.
OWN_KEYS = ("cost", "attempts")
TASKS_HINT = "list tasks with: s3seg tasks"
PROJECT_HINT = "list your projects, or pass a project name"
PROFILE_HINT = "a profile is created when the user signs up (Supabase Auth)"
CREDITS_HINT = "add credits, or wait until your unfinished tasks are done"
# The columns a task is read with (SQLite and PostgreSQL; ``r`` the results, ``p`` the project), in the
# order :func:`task_from_row` expects.
COLUMNS = (
    "r.id, r.status, r.text_prompt, r.created_at, r.updated_at, r.user_id, r.project_id, p.name, "
    "r.source_image_url, r.mask_image_url, r.overlay_image_url, r.labels, r.metadata, r.error, "
    "r.frames_done, r.frames_total"
)
_FIELDS = (
    *("id", "status", "text_prompt", "created_at", "updated_at", "user_id", "project_id", "project"),
    *("source_image_url", "mask_image_url", "overlay_image_url", "labels", "metadata", "error"),
    *("frames_done", "frames_total"),
)


@dataclass(frozen=True)
class NewTask:
    """A task to insert, its arguments checked: ``metadata`` holds the prompts and the caller's keys (the
    store adds its own, see :func:`new_metadata`)."""

    user: str
    prompts: list[str]
    project: str | None
    project_id: str | None
    metadata: dict[str, Any]
    cost: int
    queue: bool
    frames_total: int = 0

    @property
    def text_prompt(self) -> str:
        return ", ".join(self.prompts)


@dataclass(frozen=True)
class TaskResult:
    """What a finished task keeps (see :meth:`Store.finish`): its files' keys, labels, metadata to merge,
    and the cost when the work cost less than was reserved."""

    source: str
    mask: str | None
    overlay: str
    labels: list[Any]
    metadata: dict[str, Any]
    cost: int | None = None


class Store(ABC):
    """A results store bound to one user (``for_user``), whose task operations see only that user's rows;
    ``runnable`` and ``requeue_stale`` are the server's background work, across all users."""

    name: str
    user_id: str | None  # None: not bound to a user yet (a server's store before ``for_user``)
    unbound_hint = "set S3SEG_USER_ID"
    _owner = True  # this object made the connections (not a ``for_user`` copy): ``close`` releases them

    # --- binding and closing ----------------------------------------------------------------------
    def for_user(self: S, user_id: str) -> S:
        """This store bound to ``user_id``, sharing its connections."""
        bound = copy.copy(self)
        bound.user_id = self._valid_user(user_id)
        bound._owner = False
        return bound

    def close(self) -> None:
        """Release the store's connections (a bound copy leaves the ones it shares open). Idempotent."""
        if self._owner:
            self._owner = False  # once
            self._release()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _valid_user(self, user_id: str) -> str:
        if not user_id:
            raise UsageError("a store needs a user id")
        return user_id

    def _release(self) -> None:  # noqa: B027 (a hook; most stores hold no connections)
        """Close what ``close`` should (nothing by default)."""

    def _bound_user(self) -> str:
        if self.user_id is None:
            raise UsageError(f"the {self.name} store is not bound to a user", hint=self.unbound_hint)
        return self.user_id

    # --- checked entry points ---------------------------------------------------------------------
    def create_task(
        self,
        prompts: list[str],
        *,
        project: str | None = None,
        project_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        cost: int = 0,
        queue: bool = False,
        frames_total: int = 0,
    ) -> Task:
        """A ``pending`` task; ``metadata`` keeps ``prompts``, ``cost`` and ``attempts`` (0) as well.
        ``queue=True``: a task for the server's workers (``runnable``/``requeue_stale`` see only these;
        ``cost`` credits are reserved now and charged by ``finish``). ``frames_total``: the steps the task
        will report (a video's frames to process), 0 when unknown.

        The task's project: ``project`` by name (created if the user has none of that name), or
        ``project_id``, the id of one of the bound user's projects — checked in the same transaction as
        the insert; an unknown or malformed id, or another user's project, raises :class:`ProjectNotFound`
        and creates nothing. Giving both is a :class:`UsageError`. The arguments are checked here, before
        the store asks its database anything."""
        if project is not None and project_id is not None:
            raise UsageError("give a project name or a project id, not both")
        user = self._bound_user()
        if cost < 0:
            raise UsageError(f"a task's cost must be >= 0, got {cost}")
        if cost and not queue:
            raise UsageError(
                "credits are only reserved for queued tasks",
                hint=f"create the task with queue=True, or with cost=0 (got cost={cost})",
            )
        if frames_total < 0:
            raise UsageError(f"frames_total must be >= 0, got {frames_total}")
        meta = {"prompts": prompts, **(metadata or {})}
        return self._create(NewTask(user, prompts, project, project_id, meta, cost, queue, frames_total))

    @abstractmethod
    def _create(self, new: NewTask) -> Task: ...

    @abstractmethod
    def account(self) -> Account:
        """The bound user's tier and credits (:class:`AccountNotFound` when there is no profile)."""

    @abstractmethod
    def start(self, task_id: str) -> Task:
        """``pending → processing``, ``attempts + 1`` and ``frames_done`` back to 0 (a task runs again from
        its start); StoreError when the task is not pending (another worker took it)."""

    @abstractmethod
    def heartbeat(self, task_id: str, *, done: int | None = None, total: int | None = None) -> bool:
        """A running task's worker is alive: ``updated_at`` becomes now (so ``requeue_stale`` leaves the task
        alone), with its progress (``frames_done``/``frames_total``) when given. False when the task is no
        longer ``processing`` (ended, or requeued after all): its worker should stop."""

    def finish(
        self,
        task_id: str,
        *,
        source: str,
        mask: str | None,
        overlay: str,
        labels: list[Any],
        metadata: dict[str, Any],
        cost: int | None = None,
    ) -> Task:
        """``processing → done`` with the result's keys, labels and ``metadata`` (merged; cost and attempts
        stay the store's); a queued task's cost is charged in the same transaction. ``cost``: what the work
        turned out to cost when that is less than was reserved (a video with fewer frames than counted):
        charged instead; never more than the reservation."""
        if cost is not None and cost < 0:
            raise UsageError(f"a task's cost must be >= 0, got {cost}")
        return self._finish(task_id, TaskResult(source, mask, overlay, labels, metadata, cost))

    @abstractmethod
    def _finish(self, task_id: str, result: TaskResult) -> Task: ...

    @abstractmethod
    def fail(self, task_id: str, error: str) -> Task:
        """``pending | processing → error`` with the reason."""

    @abstractmethod
    def get(self, task_id: str) -> Task: ...

    @abstractmethod
    def runnable(self, limit: int = 100) -> Tasks:
        """Queued ``pending`` tasks of every user, oldest first."""

    @abstractmethod
    def requeue_stale(self, *, older_than_s: float, max_attempts: int) -> Tasks:
        """Queued tasks ``processing`` without an update for ``older_than_s`` (their worker died): back to
        ``pending`` while ``attempts < max_attempts``, else ``error`` with the reason. Returns the
        requeued ones, oldest first."""

    @abstractmethod
    def _list(self, user: str, project: str | None, status: Status | None, limit: int, offset: int) -> Tasks: ...

    def list(
        self, *, project: str | None = None, status: Status | None = None, limit: int = 20, offset: int = 0
    ) -> Tasks:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
        return self._list(self._bound_user(), project, status, limit, offset)


# --- what the stores compute the same way ----------------------------------------------------------
def new_metadata(new: NewTask) -> dict[str, Any]:
    """A new task's metadata: the caller's, then the store's own keys (cost, no attempts yet)."""
    return {**new.metadata, "cost": new.cost, "attempts": 0}


def finished_metadata(old: dict[str, Any], new: dict[str, Any], cost: int | None = None) -> dict[str, Any]:
    """``new`` merged into a finished task's metadata; its cost and attempts stay the store's (the cost
    lowered to ``cost`` when that is less, see :meth:`Store.finish`)."""
    merged = {**old, **{k: v for k, v in new.items() if k not in OWN_KEYS}}
    if cost is not None:
        reserved = old.get("cost")
        merged["cost"] = min(cost, reserved) if isinstance(reserved, int) and not isinstance(reserved, bool) else 0
    return merged


def progress_columns(done: int | None, total: int | None) -> dict[str, int]:
    """The progress columns a heartbeat sets (only those given), checked."""
    columns = {k: v for k, v in (("frames_done", done), ("frames_total", total)) if v is not None}
    if any(v < 0 for v in columns.values()):
        raise UsageError(f"progress must be >= 0, got {columns}")
    return columns


def attempts(metadata: dict[str, Any]) -> int:
    """How often a worker started the task (0 for rows written before attempts were counted)."""
    value = metadata.get("attempts")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def gave_up(attempts: int, max_attempts: int) -> str:
    """The error of a task whose last worker stopped responding."""
    return f"the worker running this task stopped responding (attempt {attempts} of {max_attempts})"


def check_move(task_id: str, current: str, status: Status) -> None:
    if current not in PREVIOUS[status]:
        raise cannot_become(task_id, current, status)


def cannot_become(task_id: str, current: str, status: Status) -> StoreError:
    return StoreError(f"task {task_id} is {current}; it cannot become {status}")


def task_not_found(task_id: object) -> TaskNotFound:
    return TaskNotFound(f"no task {task_id}", hint=TASKS_HINT)


def project_not_found(project_id: object) -> ProjectNotFound:
    return ProjectNotFound(f"no project {project_id}", hint=PROJECT_HINT)


def task_uuid(task_id: str) -> uuid.UUID:
    """``task_id`` as a uuid (PostgreSQL and Supabase ids; a uuid column refuses anything else), or
    TaskNotFound: a malformed id names no task."""
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        raise task_not_found(task_id) from None


def project_uuid(project_id: str) -> uuid.UUID:
    """``project_id`` as a uuid, or ProjectNotFound (see :func:`task_uuid`)."""
    try:
        return uuid.UUID(str(project_id))
    except ValueError:
        raise project_not_found(project_id) from None


def uuid_user(user_id: str) -> str:
    """A Supabase auth user id, normalised (PostgreSQL and Supabase key users by uuid)."""
    try:
        return str(uuid.UUID(str(user_id)))
    except ValueError:
        raise UsageError(f"not a user id: {user_id!r}", hint="user ids are Supabase auth uuids") from None


def no_profile(user: object) -> AccountNotFound:
    return AccountNotFound(f"no profile for user {user}", hint=PROFILE_HINT)


def list_query(
    select: str,
    mark: str,
    tiebreak: str,
    user: object,
    project: str | None,
    status: Status | None,
    page: tuple[int, int],
) -> tuple[str, list[Any]]:
    """The SQL stores' listing: ``select`` (reading :data:`COLUMNS`) filtered to the user's tasks, by project
    name and status, newest first (``tiebreak`` orders tasks created at once), one ``(limit, offset)`` page;
    ``mark`` is the driver's placeholder."""
    where, args = [f"r.user_id = {mark}"], [user]
    for condition, value in ((f"p.name = {mark}", project), (f"r.status = {mark}", status)):
        if value is not None:
            where.append(condition)
            args.append(value)
    order = f"order by r.created_at desc, {tiebreak} desc limit {mark} offset {mark}"
    return f"{select} where {' and '.join(where)} {order}", [*args, *page]


def task_from_row(row: Sequence[Any]) -> Task:
    """A task from a row read with :data:`COLUMNS` (SQLite keeps labels and metadata as JSON text)."""
    d = dict(zip(_FIELDS, row, strict=True))
    for key in ("labels", "metadata"):
        if isinstance(d[key], str):
            d[key] = json.loads(d[key])
    return Task.from_dict(d)


def function_error(code: str, reason: str, detail: str | None) -> S3SegError | None:
    """Our SQL functions' error contract (supabase/migrations): SQLSTATE PT402, PT404 or PT409, the reason
    (``TASK_NOT_FOUND``…) as the message and the explanation as DETAIL. None for any other error."""
    if code == "PT402":
        return CreditsError(f"not enough credits: {detail or reason}", hint=CREDITS_HINT)
    if code == "PT404" and reason == "TASK_NOT_FOUND":
        return TaskNotFound(detail or "no such task", hint=TASKS_HINT)
    if code == "PT404":  # USER_NOT_FOUND
        return AccountNotFound(detail or f"no profile for the user ({reason})", hint=PROFILE_HINT)
    if code == "PT409":  # TASK_NOT_PROCESSING ("task … is <status>; it cannot become done"), TASK_NOT_QUEUED
        return StoreError(detail or f"the task cannot become done ({reason})")
    return None
