"""The public-API client's waiting on 429/503 (answers scripted with httpx.MockTransport: the real server's
limits are minute-long; the real routes are exercised end to end in test_api.py)."""

from __future__ import annotations

import json

import httpx
import pytest

from s3seg._public import PublicClient
from s3seg.errors import AuthError, CreditsError, ServerError


def client(answers: list[httpx.Response], timeout_s: float = 5) -> tuple[PublicClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handle))
    return PublicClient("http://api.test", lambda: {"Authorization": "Bearer t"}, timeout_s=timeout_s, http=http), seen


def limited(retry_after: str = "0") -> httpx.Response:
    return httpx.Response(
        429,
        headers={"Retry-After": retry_after},
        json={"ok": False, "error": {"code": "RATE_LIMITED", "message": "rate limit reached"}},
    )


def test_rate_limits_and_busy_answers_are_waited_out() -> None:
    me = httpx.Response(200, json={"ok": True, "data": {"user_id": "u"}})
    busy = httpx.Response(
        503, headers={"Retry-After": "0"}, json={"ok": False, "error": {"code": "BUSY", "message": "busy"}}
    )
    api, seen = client([limited(), busy, limited(), me])
    assert api.check() == {"user_id": "u"}
    assert len(seen) == 4 and all(r.headers["authorization"] == "Bearer t" for r in seen)


def test_waiting_stops_at_the_time_limit() -> None:
    api, seen = client([limited("30")], timeout_s=5)  # waiting 30 s would pass the 5 s limit: give up at once
    with pytest.raises(ServerError) as failed:
        api.check()
    assert failed.value.status == 429 and failed.value.code == "RATE_LIMITED" and len(seen) == 1


@pytest.mark.parametrize(("status", "kind"), [(401, AuthError), (402, CreditsError)])
def test_errors_become_s3seg_errors(status: int, kind: type[Exception]) -> None:
    api, _ = client([httpx.Response(status, json={"ok": False, "error": {"code": "X", "message": "no"}})])
    with pytest.raises(kind):
        api.check()


# --- following a task: its Server-Sent Events, resumed when the stream drops, or the long-poll ---------------
TASK = {
    "id": "t1",
    "status": "done",
    "text_prompt": "dog",
    "created_at": "2026-12-02T05:00:00+00:00",
    "updated_at": "2026-12-02T05:00:09+00:00",
    "frames_done": 4,
    "frames_total": 4,
}


def stream(text: str) -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": "text/event-stream; charset=utf-8"}, text=text)


def test_wait_follows_events_and_resumes_a_dropped_stream() -> None:
    first = (
        'event: status\ndata: {"task_id": "t1", "status": "processing"}\nid: 1-0\nretry: 2000\n\n'
        ": heartbeat\n\n"
        'event: progress\ndata: {"task_id": "t1", "done": 2, "total": 4}\nid: 1-2\n\n'
    )  # …and the connection ends before the final event
    second = 'event: progress\ndata: {"task_id": "t1", "done": 3,\ndata:  "total": 4}\nid: 1-3\n\n'
    second += f"event: done\ndata: {json.dumps(TASK)}\nid: 2-4\n\n"
    api, seen = client([stream(first), stream(second)])
    heard: list[tuple[str, int, int]] = []
    task = api.wait("t1", lambda *state: heard.append(state))
    assert (task.status, task.frames_done, task.frames_total) == ("done", 4, 4)
    assert heard == [("processing", 0, 0), ("processing", 2, 4), ("processing", 3, 4), ("done", 4, 4)]
    assert [r.url.path for r in seen] == ["/api/v1/tasks/t1/events"] * 2
    assert "last-event-id" not in seen[0].headers and seen[1].headers["last-event-id"] == "1-2"
    assert seen[0].headers["accept"] == "text/event-stream"


def test_wait_long_polls_without_events() -> None:
    no_route = httpx.Response(404, json={"ok": False, "error": {"code": "NOT_FOUND", "message": "Not Found"}})
    running = {**TASK, "status": "processing", "frames_done": 1}
    api, seen = client([no_route, httpx.Response(200, json={"ok": True, "data": running}), ok_task()])
    heard: list[tuple[str, int, int]] = []
    assert api.wait("t1", lambda *state: heard.append(state)).status == "done"
    assert heard == [("processing", 1, 4), ("done", 4, 4)]
    assert [r.url.path for r in seen] == ["/api/v1/tasks/t1/events", "/api/v1/tasks/t1", "/api/v1/tasks/t1"]
    assert 0 < float(seen[1].url.params["wait"]) <= 5  # a long-poll within the client's time limit


def test_wait_gives_up_only_when_nothing_moves() -> None:
    api, _ = client(
        [stream('event: status\ndata: {"task_id": "t1", "status": "pending"}\nid: 0-0\n\n: heartbeat\n')] * 30, 0.2
    )
    with pytest.raises(ServerError, match="still pending"):
        api.wait("t1")


def ok_task() -> httpx.Response:
    return httpx.Response(200, json={"ok": True, "data": TASK})
