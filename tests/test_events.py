"""The task events' ids and resume rules (s3seg.server._events), on Task objects; the stream itself is
tested over HTTP in test_api.py (real server, real PostgreSQL) and by the web page in test_web.py."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from s3seg.server._events import parse_event_id, task_events_since
from s3seg.store import Status, Task


def task(status: Status, progress: dict[str, int] | None = None) -> Task:
    now = datetime.now(timezone.utc)
    done, total = (progress or {}).get("done", 0), (progress or {}).get("total", 0)
    error = "boom" if status == "error" else None
    return Task("t1", status, "cat", now, now, error=error, frames_done=done, frames_total=total)


def out(t: Task) -> dict[str, Any]:
    return {"task_id": t.id, "status": t.status}


def names(events: list[Any]) -> list[tuple[str | None, str | None]]:
    return [(e.event, e.id) for e in events]


def test_event_ids() -> None:
    assert parse_event_id("1-12") == (1, 12)
    assert parse_event_id(" 2-0 ") == (2, 0)
    for junk in (None, "", "3-0", "1", "a-b", "1-2-3", "-1-0", "1-" + "9" * 12):
        assert parse_event_id(junk) is None, junk


def test_new_connection_gets_the_current_state() -> None:
    assert names(task_events_since(task("pending"), None, out)) == [("status", "0-0")]
    assert names(task_events_since(task("processing", {"done": 3, "total": 10}), None, out)) == [
        ("status", "1-3"),
        ("progress", "1-3"),
    ]
    [done] = task_events_since(task("done"), None, out)
    assert (done.event, done.data) == ("done", {"task_id": "t1", "status": "done"})
    [error] = task_events_since(task("error"), None, out)
    assert (error.event, error.data) == ("error", {"task_id": "t1", "status": "error", "error": "boom"})


def test_resume_sends_only_what_is_newer() -> None:
    running = task("processing", {"done": 3, "total": 10})
    assert names(task_events_since(running, (1, 3), out)) == []  # seen all of it
    assert names(task_events_since(running, (1, 2), out)) == [("progress", "1-3")]  # a step later
    assert names(task_events_since(running, (0, 0), out)) == [("status", "1-3"), ("progress", "1-3")]
    assert names(task_events_since(task("processing"), (1, 0), out)) == []  # no progress reported
    # the final event goes to every connection, even one that saw it (clients stop on it)
    assert names(task_events_since(task("done", {"done": 10, "total": 10}), (2, 10), out)) == [("done", "2-10")]


def test_progress_events() -> None:
    # an image task: one step, 0/1 when it starts and 1/1 before it is saved
    assert names(task_events_since(task("processing", {"done": 0, "total": 1}), (0, 0), out)) == [
        ("status", "1-0"),
        ("progress", "1-0"),
    ]
    [step] = task_events_since(task("processing", {"done": 1, "total": 1}), (1, 0), out)
    assert (step.event, step.id, step.data) == ("progress", "1-1", {"task_id": "t1", "done": 1, "total": 1})
    # no total (nothing reported yet), or a negative count: no progress event
    for bad in ({"done": 3}, {"done": -4, "total": -1}):
        assert names(task_events_since(task("processing", bad), None, out)) == [
            ("status", "1-3" if bad["done"] > 0 else "1-0")
        ]
