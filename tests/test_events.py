"""The task events' ids and resume rules (s3seg.server._events), on Task objects, and the client's parser of
the stream (s3seg._sse); the stream itself is tested over HTTP in test_api.py (real server, real PostgreSQL)
and by the web page in test_web.py."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from s3seg import _sse
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


def test_client_parser_reads_what_the_server_writes() -> None:
    from fastapi.sse import format_sse_event

    sent = task_events_since(task("processing", {"done": 3, "total": 10}), None, out)
    sent[0].retry = 2000
    wire = "".join(
        format_sse_event(data_str=json_data(e), event=e.event, id=e.id, retry=e.retry).decode() for e in sent
    )
    wire = ": heartbeat\n\n" + wire
    got = list(_sse.events(wire.splitlines()))
    assert [(e.event, e.id, e.json()) for e in got] == [(e.event, e.id, e.data) for e in sent]
    assert got[0].retry == 2000 and got[1].retry is None


def test_client_parser_follows_the_standard() -> None:
    lines = ["data: a", "data:b", "", "event: x", "id: 7", "data", "", "event: y", "", "id: 8", "data:  c", ""]
    got = list(_sse.events(lines))
    # "data" alone is an empty data line; an event without data is not dispatched; the id is kept; one
    # leading space only is dropped
    assert got == [_sse.Event("message", "a\nb"), _sse.Event("x", "", "7"), _sse.Event("message", " c", "8")]


def json_data(e: Any) -> str:
    import json

    return json.dumps(e.data)
