"""The results stores: SQLite for real (threads and processes writing at once), and Supabase through
supabase-py with its HTTP requests captured.

PostgREST cannot run here, so the Supabase tests answer supabase-py's requests from an `httpx.MockTransport`
and assert exactly what it sent (paths, filters, headers, bodies); the SQL behind them — RLS, triggers,
credits — is tested on a real PostgreSQL in test_migrations.py.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from s3seg.config import Settings
from s3seg.store import StoreError, TaskNotFound, store_from_settings
from s3seg.store._sqlite import SQLiteStore
from s3seg.store._supabase import SupabaseStore

# ----------------------------------------------------------------------------------------- SQLite


def test_lifecycle_pending_processing_done(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    task = store.create_task(["dog", "cat"], project="pets", metadata={"image": "a.jpg"})
    assert (task.status, task.text_prompt, task.project, task.prompts) == ("pending", "dog, cat", "pets",
                                                                              ["dog", "cat"])
    assert store.start(task.id).status == "processing"
    done = store.finish(task.id, source="k/src.jpg", mask="k/mask.png", overlay="k/ov.jpg",
                        labels=[{"label": "dog", "score": 0.9}], metadata={"instances": 1})
    assert done.status == "done" and done.mask_image_url == "k/mask.png" and done.labels[0]["label"] == "dog"
    assert done.metadata == {"prompts": ["dog", "cat"], "image": "a.jpg", "instances": 1}
    assert done.updated_at >= task.updated_at and done.error is None
    with pytest.raises(StoreError, match="is done; it cannot become error"):
        store.fail(task.id, "late")


def test_errors_are_kept_and_transitions_enforced(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    task = store.create_task(["dog"])
    with pytest.raises(StoreError, match="is pending; it cannot become done"):
        store.finish(task.id, source="a", mask="b", overlay="c", labels=[], metadata={})
    failed = store.fail(task.id, "CUDA out of memory")
    assert (failed.status, failed.error) == ("error", "CUDA out of memory")
    with pytest.raises(TaskNotFound, match="no task nope"):
        store.get("nope")
    with pytest.raises(TaskNotFound):
        store.start("nope")


def test_listing_filters_and_pages(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    ids = [store.create_task([f"p{i}"], project="a" if i % 2 else "b").id for i in range(7)]
    store.fail(ids[0], "boom")
    assert [t.id for t in store.list(limit=3)] == ids[::-1][:3]  # newest first
    assert [t.id for t in store.list(limit=3, offset=3)] == ids[::-1][3:6]
    assert {t.project for t in store.list(project="a")} == {"a"} and len(store.list(project="a")) == 3
    assert [t.id for t in store.list(status="error")] == [ids[0]]
    with pytest.raises(StoreError, match="unknown status"):
        store.list(status="finished")  # type: ignore[arg-type]


def test_concurrent_writers_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                t = store.create_task([f"t{n}-{i}"], project=f"proj{n % 3}")
                store.start(t.id)
                store.finish(t.id, source="s", mask="m", overlay="o", labels=[], metadata={"n": n})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.list(limit=1000, status="done")) == 80
    assert len({t.project for t in store.list(limit=1000)}) == 3  # projects created once, not per writer


def _writer_process(path: str, n: int) -> None:
    store = SQLiteStore(Path(path))
    for i in range(10):
        t = store.create_task([f"p{n}-{i}"], project="shared")
        store.fail(t.id, f"error {n}")


def test_concurrent_writers_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path / "r.db"), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tasks = SQLiteStore(tmp_path / "r.db").list(limit=1000)
    assert len(tasks) == 40 and all(t.status == "error" for t in tasks)


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open the results database"):
        SQLiteStore(tmp_path / "file" / "r.db")


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    assert store_from_settings(Settings(data_dir=tmp_path)).name == "sqlite"
    s = Settings(data_dir=tmp_path, supabase_url="http://127.0.0.1:9", supabase_service_key="k", user_id="u1")
    assert store_from_settings(s).name == "supabase"


# --------------------------------------------------------------------------------------- Supabase
USER = "11111111-2222-3333-4444-555555555555"
ROW = {"id": "t1", "user_id": USER, "project_id": None, "status": "pending", "text_prompt": "dog",
       "labels": [], "metadata": {"prompts": ["dog"]}, "error": None, "source_image_url": None,
       "mask_image_url": None, "overlay_image_url": None, "projects": None,
       "created_at": "2026-11-22T03:00:00+00:00", "updated_at": "2026-11-22T03:00:00+00:00"}


class PostgREST:
    """Answers supabase-py's requests like PostgREST would, and records them."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.rows: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = urlsplit(str(request.url))
        query = parse_qs(url.query)
        table = url.path.rsplit("/", 1)[-1]
        if table == "projects":
            return httpx.Response(200 if request.method == "GET" else 201, json=[] if request.method == "GET"
                                  else [{"id": "p1", **json.loads(request.content)}])
        if request.method == "POST":
            row = {**ROW, **json.loads(request.content), "id": f"t{len(self.rows) + 1}"}
            self.rows[row["id"]] = row
            return httpx.Response(201, json=[row])
        if request.method == "PATCH":
            task_id = query["id"][0].removeprefix("eq.")
            allowed = query["status"][0].removeprefix("in.(").rstrip(")").split(",")
            row = self.rows.get(task_id)
            if row is None or row["status"] not in allowed:
                return httpx.Response(200, json=[])
            row.update(json.loads(request.content))
            return httpx.Response(200, json=[row])
        if "id" in query:
            row = self.rows.get(query["id"][0].removeprefix("eq."))
            return httpx.Response(200, json=[row] if row else [])
        return httpx.Response(200, json=list(self.rows.values()))


def _jwt(sub: str) -> str:
    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': sub, 'role': 'authenticated'})}.sig"


@pytest.fixture
def postgrest() -> PostgREST:
    return PostgREST()


def _store(postgrest: PostgREST, **kwargs: Any) -> tuple[SupabaseStore, httpx.Client]:
    http = httpx.Client(transport=httpx.MockTransport(postgrest))
    return SupabaseStore("http://127.0.0.1:54321", "anon-key", http=http, **kwargs), http


def test_supabase_user_token_requests(postgrest: PostgREST) -> None:
    store, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        task = store.create_task(["dog"], project="pets")
        assert task.status == "pending" and store.user_id == USER
        create_project, insert, select = postgrest.requests[-3:]
        assert json.loads(create_project.content) == {"user_id": USER, "name": "pets"}
        body = json.loads(insert.content)
        assert body["user_id"] == USER and body["project_id"] == "p1" and body["status"] == "pending"
        assert insert.url.path == "/rest/v1/segmentation_results"
        for r in postgrest.requests:  # RLS applies as the user: their token, plus the project's anon key
            assert r.headers["authorization"] == f"Bearer {_jwt(USER)}" and r.headers["apikey"] == "anon-key"
        assert "select=%2A%2Cprojects%28name%29" in str(select.url) or "projects(name)" in str(select.url)

        store.start(task.id)
        patch = postgrest.requests[-2]
        assert patch.method == "PATCH" and json.loads(patch.content) == {"status": "processing"}
        assert parse_qs(patch.url.query.decode())["status"] == ["in.(pending)"]
        done = store.finish(task.id, source="s", mask="m", overlay="o", labels=[{"label": "dog"}],
                            metadata={"instances": 1})
        assert done.status == "done" and done.metadata["instances"] == 1
        with pytest.raises(StoreError, match="is done; it cannot become processing"):
            store.start(task.id)


def test_supabase_listing_query(postgrest: PostgREST) -> None:
    store, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        store.list(project="pets", status="done", limit=10, offset=20)
        q = parse_qs(postgrest.requests[-1].url.query.decode())
        assert q["user_id"] == [f"eq.{USER}"] and q["status"] == ["eq.done"] and q["projects.name"] == ["eq.pets"]
        assert q["order"] == ["created_at.desc"] and q["offset"] == ["20"] and q["limit"] == ["10"]
        assert "projects!inner(name)" in q["select"][0]


def test_supabase_errors_become_store_errors(postgrest: PostgREST) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"code": "42501", "message": "new row violates row-level security policy",
                                         "details": None, "hint": None})

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    with http:
        store = SupabaseStore("http://127.0.0.1:54321", "anon-key", access_token=_jwt(USER), http=http)
        with pytest.raises(StoreError, match="row-level security") as e:
            store.create_task(["dog"])
        assert e.value.hint and "your task" in e.value.hint

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    http = httpx.Client(transport=httpx.MockTransport(down))
    with http:
        store = SupabaseStore("http://127.0.0.1:54321", "anon-key", access_token=_jwt(USER), http=http)
        with pytest.raises(StoreError, match="cannot reach Supabase"):
            store.get("t1")


def test_supabase_needs_a_user() -> None:
    from s3seg.errors import UsageError

    with pytest.raises(UsageError, match="needs a user"):
        SupabaseStore("http://127.0.0.1:54321", "service-key")
    with pytest.raises(UsageError, match="not a JWT"):
        SupabaseStore("http://127.0.0.1:54321", "anon", access_token="garbage")
