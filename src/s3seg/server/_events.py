"""Live task events: ``GET /api/v1/tasks/{id}/events`` as Server-Sent Events.

A client (the web page, ``curl -N``) sees a task move without polling in a loop:

- ``status`` while it is ``pending`` or ``processing`` (data: ``{"task_id", "status"}``);
- ``progress`` when the task reports steps done (data: ``{"task_id", "done", "total"}``, from the task's
  ``frames_done``/``frames_total``: a video's frames; an image task is one step, 0/1 then 1/1);
- finally ``done`` (data: the task, the same object as ``GET /api/v1/tasks/{id}``) or ``error``
  (data: ``{"task_id", "status", "error"}``), after which the stream ends.

Event ids are ``<stage>-<steps done>`` (stage 0 pending, 1 processing, 2 finished), so a client that
reconnects with ``Last-Event-ID`` gets only what is newer than what it saw; the final event is sent to
every connection to a finished task. A comment line goes out every ``HEARTBEAT_S`` seconds so that
proxies keep an idle stream open. Auth and user isolation are the other task routes': another user's
task answers 404 before the stream starts.
"""

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from s3seg.server._deps import ApiDep, CurrentUser
from s3seg.server._schemas import refusals
from s3seg.store import Task

HEARTBEAT_S = 15.0  # an idle stream sends a comment this often
POLL_S = 0.5  # how often the store is re-read (a task may run in another process)
RETRY_MS = 2000  # the reconnection delay suggested to EventSource clients

_STAGE = {"pending": 0, "processing": 1, "done": 2, "error": 2}
_EVENT_ID = re.compile(r"^([0-2])-([0-9]{1,9})$")
Position = tuple[int, int]


router = APIRouter(prefix="/api/v1", tags=["public API"])


async def owned_task(task_id: str, user: CurrentUser, api: ApiDep) -> Task:
    """The caller's task; another user's (or no such) task raises TaskNotFound → 404."""
    return await run_in_threadpool(api.store.for_user(user.id).get, task_id)


@router.get(
    "/tasks/{task_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "status, progress, then done or error",
            "content": {"text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events"}}},
        },
        **refusals(401, 404, 503),
    },
)
async def task_events(
    task: Annotated[Task, Depends(owned_task)],
    api: ApiDep,
    last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events for one task: ``status``, ``progress``, and a final ``done`` or ``error``."""
    store = api.store.for_user(str(task.user_id)) if task.user_id else api.store
    seen = parse_event_id(last_event_id)
    last_sent = time.monotonic()
    first = True
    while True:
        for event in task_events_since(task, seen, lambda t: api.out(t).model_dump(mode="json")):
            if first:
                event.retry, first = RETRY_MS, False
            yield event
            last_sent = time.monotonic()
        seen = max(seen, position(task)) if seen is not None else position(task)
        if _STAGE[task.status] == 2:  # a client that goes away cancels this generator
            return
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ServerSentEvent(comment="heartbeat")
            last_sent = time.monotonic()
        await api.runner.wait(task.id, POLL_S)
        task = await run_in_threadpool(store.get, task.id)


def parse_event_id(value: str | None) -> Position | None:
    """``Last-Event-ID`` as a position; anything unknown counts as "nothing seen"."""
    found = _EVENT_ID.match((value or "").strip())
    return (int(found.group(1)), int(found.group(2))) if found else None


def position(task: Task) -> Position:
    return _STAGE[task.status], _steps(task)[0]


def task_events_since(
    task: Task, seen: Position | None, out: Callable[[Task], dict[str, Any]]
) -> list[ServerSentEvent]:
    """The events that describe ``task`` and are newer than ``seen`` (the final one always)."""
    stage, done = position(task)
    event_id = f"{stage}-{done}"
    events: list[ServerSentEvent] = []
    if stage < 2 and (seen is None or stage > seen[0]):
        events.append(ServerSentEvent(event="status", id=event_id, data={"task_id": task.id, "status": task.status}))
    steps, total = _steps(task)
    if total and stage < 2 and (seen is None or (stage, steps) > seen):
        events.append(
            ServerSentEvent(event="progress", id=event_id, data={"task_id": task.id, "done": steps, "total": total})
        )
    if task.status == "done":
        events.append(ServerSentEvent(event="done", id=event_id, data=out(task)))
    elif task.status == "error":
        data = {"task_id": task.id, "status": "error", "error": task.error}
        events.append(ServerSentEvent(event="error", id=event_id, data=data))
    return events


def _steps(task: Task) -> tuple[int, int]:
    return max(0, task.frames_done), max(0, task.frames_total)
