"""The error tree's one table: every error the server answers with comes back, from its status and code, as
the same error on the client (the server's handler and both clients use it; see also test_server, test_api)."""

from __future__ import annotations

import pytest

from s3seg import errors
from s3seg.errors import S3SegError, ServerError, error_from_response

ALL = [getattr(errors, name) for name in errors.__all__]


@pytest.mark.parametrize("kind", ALL, ids=lambda k: k.__name__)
def test_an_answered_error_comes_back_as_itself_or_as_a_server_failure(kind: type[S3SegError]) -> None:
    back = error_from_response(kind.http_status, kind.code, "m", "h", where="the server")
    assert (back.http_status, back.code, back.hint) == (kind.http_status, kind.code, "h")
    if kind.http_status >= 500 and not issubclass(kind, ServerError):
        assert type(back) is ServerError  # the server's store or device failed, not the client's
    else:
        assert isinstance(back, kind) or issubclass(kind, type(back))  # the most general class of its code
    assert back.message.startswith("the server ") and back.message.endswith(": m")


def test_codes_are_unique_per_status() -> None:
    seen: dict[str, int] = {}
    for kind in ALL:
        assert seen.setdefault(kind.code, kind.http_status) == kind.http_status, kind


def test_unknown_answers_fall_back_on_the_status() -> None:
    assert type(error_from_response(401, "X", "no", None, where="w")) is errors.AuthError
    assert type(error_from_response(413, "X", "big", None, where="w")) is errors.PayloadTooLarge
    assert type(error_from_response(418, "TEAPOT", "?", None, where="w")) is ServerError
    busy = error_from_response(503, "BUSY", "full", None, where="w")
    assert isinstance(busy, errors.Busy) and busy.status == 503 and busy.exit_code == 8
