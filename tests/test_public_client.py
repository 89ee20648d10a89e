"""The public-API client's waiting on 429/503 (answers scripted with httpx.MockTransport: the real server's
limits are minute-long; the real routes are exercised end to end in test_api.py)."""

from __future__ import annotations

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
