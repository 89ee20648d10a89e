"""Live checks against a real Cloudflare R2 bucket and a real Supabase project.

They run only when the credentials are in the environment (they are never in CI), and are skipped with
the reason otherwise. They write under a unique prefix / create one task and clean up after themselves.
"""

from __future__ import annotations

import os
import uuid

import pytest

from s3seg.config import Settings

R2_VARS = ("R2_ENDPOINT", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET")
SUPABASE_VARS = ("SUPABASE_URL", "SUPABASE_SERVICE_KEY", "S3SEG_USER_ID")


def _missing(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not os.environ.get(n)]


@pytest.mark.integration
@pytest.mark.skipif(bool(_missing(R2_VARS)), reason=f"live R2 test: set {', '.join(R2_VARS)}")
def test_live_r2_round_trip() -> None:
    import httpx

    from s3seg.storage import storage_from_settings

    settings = Settings(r2_prefix=f"s3seg-live-test/{uuid.uuid4().hex}/")
    storage = storage_from_settings(settings)
    try:
        key = storage.put("probe.txt", b"hello from s3seg", "text/plain")
        assert storage.get(key) == b"hello from s3seg" and storage.exists(key)
        assert httpx.get(storage.url(key, 60), timeout=30).content == b"hello from s3seg"
        storage.delete(key)
        assert not storage.exists(key)
    finally:
        storage.close()


@pytest.mark.integration
@pytest.mark.skipif(
    bool(_missing(SUPABASE_VARS)), reason=f"live Supabase test: set {', '.join(SUPABASE_VARS)} (a user of that project)"
)
def test_live_supabase_task_lifecycle() -> None:
    from s3seg.store import store_from_settings

    store = store_from_settings(Settings())
    task = store.create_task(["s3seg live test"], metadata={"live_test": True})
    assert store.start(task.id).status == "processing"
    failed = store.fail(task.id, "live test: intentionally failed")
    assert failed.status == "error" and failed.error == "live test: intentionally failed"
    assert any(t.id == task.id for t in store.list(status="error", limit=50))
