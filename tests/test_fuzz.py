"""Schemathesis against real servers on loopback: the GPU-server routes (tiny model, local mode) with the
API key and without it, and the public API as a signed-in user (real PostgreSQL, real S3 server, tokens
verified against a JWKS on loopback, as in test_api.py). Every check schemathesis has, a fixed seed and
bounded examples: no 5xx and every answer as /openapi.json describes it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from _server import LoopbackServer  # noqa: E402
from s3seg.config import Settings  # noqa: E402
from s3seg.engine import Sam3Engine  # noqa: E402
from s3seg.server import create_app  # noqa: E402

KEY = "fuzz-key"
EXAMPLES = 40  # per operation: about 900 requests in all, ~30 s of fuzzing on 2 cores
# Schema-valid data that is still refused: random bytes are "binary" but not an image (415), a random URL does
# not resolve (400), a random prompt may be blank or too long for the server's limits (422). ("Exactly one of
# image/image_url" and "a prompt or a box" are in the schema: oneOf/anyOf.)
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
STATS: dict[str, int] = {"requests": 0, "5xx": 0}


@pytest.fixture(scope="module")
def gpu_server(engine: Sam3Engine) -> Iterator[LoopbackServer]:
    data = Path(tempfile.mkdtemp(prefix="s3seg-fuzz-"))
    # small limits keep every generated request cheap; the model still runs on what passes
    settings = Settings(api_key=KEY, data_dir=data, threshold=0.5, max_pixels=1_000_000, max_body_mb=2)
    s = LoopbackServer(create_app(engine, settings))
    yield s
    s.stop()
    shutil.rmtree(data, ignore_errors=True)


def fuzz(url: str, headers: dict[str, str], examples: int) -> None:
    """Every operation of the server's /openapi.json, ``examples`` generated cases each, all checks."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=examples,
            derandomize=True,  # the fixed seed
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call(base_url=url, headers=headers, timeout=60)
            STATS["requests"] += 1
            STATS["5xx"] += response.status_code >= 500
            case.validate_response(response, headers=headers, excluded_checks=EXCLUDED)

        run()


def test_gpu_routes_with_key(gpu_server: LoopbackServer) -> None:
    fuzz(gpu_server.url, {"X-API-Key": KEY}, EXAMPLES)


def test_gpu_routes_without_key(gpu_server: LoopbackServer) -> None:
    fuzz(gpu_server.url, {}, 10)


@pytest.mark.integration
def test_public_api_as_a_signed_in_user(pg: Any, s3_server: Any, engine: Sam3Engine) -> None:
    """The public API with a Supabase access token (real PostgreSQL and S3 server, JWKS on loopback)."""
    import psycopg

    import _postgres
    from test_api import BUCKET, Keys, Stack, new_user

    s3_server.create_bucket(BUCKET)
    keys = Keys()
    stack = Stack(pg, s3_server, BUCKET, keys, engine)
    try:
        with psycopg.connect(pg.dsn(_postgres.SUPERUSER), autocommit=True) as admin:
            user = new_user(admin, credits=1000)
        token = keys.token(user)
        fuzz(stack.url, {"Authorization": f"Bearer {token}"}, EXAMPLES)
        assert httpx.get(stack.url + "/health").status_code == 200
    finally:
        stack.close()
        keys.close()


def test_zz_fuzz_figures(gpu_server: LoopbackServer) -> None:
    """The figures of the runs above (printed with -s), and the server still healthy."""
    print(f"\nfuzz: {STATS['requests']} requests, {STATS['5xx']} answered 5xx")
    assert STATS["5xx"] == 0
    assert httpx.get(gpu_server.url + "/health").status_code == 200
