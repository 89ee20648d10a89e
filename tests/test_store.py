"""The results stores: SQLite for real (threads and processes writing at once), and Supabase through
supabase-py with its HTTP requests captured.

PostgREST cannot run here, so the Supabase tests answer supabase-py's requests from an `httpx.MockTransport`
and assert exactly what it sent (paths, filters, headers, bodies). The mock mimics only what the store relies
on (filters, the updated_at trigger, RLS hiding server tasks from a user's updates, the SQL functions' error
codes); the SQL itself — RLS, triggers, credits — is tested on a real PostgreSQL in test_migrations.py.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import sqlite3
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from s3seg.config import Settings
from s3seg.errors import CreditsError, UsageError
from s3seg.store import Account, StoreError, TaskNotFound, store_from_settings
from s3seg.store._sqlite import SQLiteStore
from s3seg.store._supabase import SupabaseStore

# ----------------------------------------------------------------------------------------- SQLite


def test_lifecycle_pending_processing_done(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    task = store.create_task(["dog", "cat"], project="pets", metadata={"image": "a.jpg"})
    assert (task.status, task.text_prompt, task.project, task.prompts) == (
        "pending",
        "dog, cat",
        "pets",
        ["dog", "cat"],
    )
    assert store.start(task.id).status == "processing"
    done = store.finish(
        task.id,
        source="k/src.jpg",
        mask="k/mask.png",
        overlay="k/ov.jpg",
        labels=[{"label": "dog", "score": 0.9}],
        metadata={"instances": 1},
    )
    assert done.status == "done" and done.mask_image_url == "k/mask.png" and done.labels[0]["label"] == "dog"
    assert done.metadata == {"prompts": ["dog", "cat"], "image": "a.jpg", "instances": 1, "cost": 0, "attempts": 1}
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


def test_users_see_only_their_own_tasks(tmp_path: Path) -> None:
    local = SQLiteStore(tmp_path / "r.db")
    alice = local.for_user("alice")
    assert (local.user_id, alice.user_id, alice.path) == ("local", "alice", local.path)
    theirs = alice.create_task(["dog"], project="pets")
    mine = local.create_task(["cat"], project="pets")
    assert theirs.user_id == "alice" and mine.user_id == "local"
    assert theirs.project == mine.project == "pets" and theirs.project_id != mine.project_id  # one per user
    for operation in (
        local.get,
        local.start,
        lambda i: local.fail(i, "x"),
        lambda i: local.finish(i, source="s", mask="m", overlay="o", labels=[], metadata={}),
    ):
        with pytest.raises(TaskNotFound, match=f"no task {theirs.id}"):
            operation(theirs.id)
    assert alice.get(theirs.id).status == "pending"  # untouched by the refused calls
    assert [t.id for t in local.list()] == [mine.id] and [t.id for t in alice.list(project="pets")] == [theirs.id]
    assert SQLiteStore(tmp_path / "r.db", user_id="alice").get(theirs.id).id == theirs.id


def test_tasks_filed_under_a_project_id(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    local, alice = SQLiteStore(path), SQLiteStore(path).for_user("alice")
    first = local.create_task(["dog"], project="pets")
    assert first.project_id
    second = local.create_task(["cat"], project_id=first.project_id, queue=True)
    assert (second.project, second.project_id) == ("pets", first.project_id)
    assert [t.id for t in local.list(project="pets")] == [second.id, first.id]
    theirs = alice.create_task(["cow"], project="farm")
    for bad in (theirs.project_id, "no-such-project", str(uuid.uuid4()), ""):
        assert bad is not None
        with pytest.raises(TaskNotFound, match=f"no project {bad}") as e:
            local.create_task(["dog"], project_id=bad, queue=True)
        assert e.value.hint == "list your projects, or pass a project name"
    with pytest.raises(UsageError, match="not both"):
        local.create_task(["dog"], project="pets", project_id=first.project_id)
    with sqlite3.connect(path) as db:  # nothing created by the refused calls, no project either
        assert db.execute("select count(*) from segmentation_results").fetchone() == (3,)
        assert db.execute("select count(*) from projects").fetchone() == (2,)
    db.close()
    assert [t.id for t in alice.list()] == [theirs.id]


def test_local_account_has_no_credit_count(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    assert store.account() == Account("local", tier="enterprise", credits=None)
    assert store.for_user("bob").account() == Account("bob", tier="enterprise", credits=None)


def test_cost_is_recorded_and_attempts_counted(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    task = store.create_task(["dog"], metadata={"cost": 99, "attempts": 7, "image": "a.jpg"}, cost=3, queue=True)
    assert task.metadata == {"prompts": ["dog"], "image": "a.jpg", "cost": 3, "attempts": 0}  # the store's own
    assert store.start(task.id).metadata["attempts"] == 1
    _backdate(tmp_path / "r.db", task.id)
    assert [t.id for t in store.requeue_stale(older_than_s=60, max_attempts=3)] == [task.id]
    assert store.start(task.id).metadata["attempts"] == 2
    with pytest.raises(StoreError, match="is processing; it cannot become processing"):
        store.start(task.id)  # another worker has it: refused, and not counted
    done = store.finish(task.id, source="s", mask="m", overlay="o", labels=[], metadata={"attempts": 0, "cost": 0})
    assert (done.metadata["attempts"], done.metadata["cost"]) == (2, 3)
    with pytest.raises(UsageError, match="cost must be >= 0"):
        store.create_task(["dog"], cost=-1, queue=True)
    with pytest.raises(UsageError, match="only reserved for queued tasks"):
        store.create_task(["dog"], cost=1)


def test_runnable_is_every_users_pending_oldest_first(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    users = [store, store.for_user("alice"), store.for_user("bob")]
    ids = [users[i % 3].create_task([f"p{i}"], queue=True).id for i in range(6)]
    store.start(ids[0])
    store.for_user("alice").fail(ids[1], "boom")
    store.create_task(["recorded by the CLI"])  # a plain row: not the server's to run
    runnable = store.runnable()
    assert [t.id for t in runnable] == ids[2:]
    assert [t.user_id for t in runnable] == ["bob", "local", "alice", "bob"]
    assert [t.id for t in store.runnable(2)] == ids[2:4]


def _backdate(path: Path, task_id: str, seconds: float = 3600) -> None:
    """Pretend the task's worker last touched it ``seconds`` ago."""
    then = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")
    with sqlite3.connect(path) as db:
        db.execute("update segmentation_results set updated_at = ? where id = ?", (then, task_id))
    db.close()


def test_requeue_stale_then_error_after_the_last_attempt(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SQLiteStore(path)
    alice = store.for_user("alice")
    stale, fresh, other = (
        store.create_task(["a"], queue=True),
        store.create_task(["b"], queue=True),
        alice.create_task(["c"], queue=True),
    )
    plain = store.create_task(["a CLI run that crashed"])
    for s, t in ((store, stale), (store, fresh), (alice, other), (store, plain)):
        s.start(t.id)
    _backdate(path, stale.id)
    _backdate(path, other.id)
    _backdate(path, plain.id)
    _backdate(path, fresh.id, seconds=5)
    requeued = store.requeue_stale(older_than_s=60, max_attempts=2)
    assert [(t.id, t.status, t.user_id) for t in requeued] == [
        (stale.id, "pending", "local"),
        (other.id, "pending", "alice"),
    ]
    assert store.get(fresh.id).status == "processing"  # its worker is still alive
    assert store.get(plain.id).status == "processing"  # not a server task: no worker of ours to replace
    assert requeued[0].updated_at > stale.updated_at and requeued[0].error is None
    assert store.requeue_stale(older_than_s=60, max_attempts=2) == []  # nothing stale any more

    assert store.start(stale.id).metadata["attempts"] == 2  # the second (last) attempt dies too
    _backdate(path, stale.id)
    assert store.requeue_stale(older_than_s=60, max_attempts=2) == []  # given up: not requeued
    failed = store.get(stale.id)
    assert failed.status == "error"
    assert failed.error == "the worker running this task stopped responding (attempt 2 of 2)"
    with pytest.raises(StoreError, match="is error; it cannot become processing"):
        store.start(stale.id)
    with pytest.raises(StoreError, match="is pending; it cannot become done"):
        alice.finish(other.id, source="s", mask="m", overlay="o", labels=[], metadata={})


def test_concurrent_requeue_takes_each_task_once(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SQLiteStore(path)
    ids = [store.create_task([f"t{i}"], queue=True).id for i in range(20)]
    for i in ids:
        store.start(i)
        _backdate(path, i)
    barrier = threading.Barrier(8)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            barrier.wait()
            results.append([t.id for t in SQLiteStore(path).requeue_stale(older_than_s=60, max_attempts=2)])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=sweep) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    taken = [i for r in results for i in r]
    assert sorted(taken) == sorted(ids)  # every task requeued exactly once, by one of the sweepers
    assert all(store.get(i).status == "pending" and store.get(i).metadata["attempts"] == 1 for i in ids)


def test_files_from_before_queued_tasks_are_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as db:  # the schema as it was: no queued column
        db.executescript("""
            create table projects (id text primary key, user_id text not null, name text not null,
                description text, created_at text not null, updated_at text not null, unique (user_id, name));
            create table segmentation_results (id text primary key, project_id text references projects(id)
                on delete set null, user_id text not null, source_image_url text, mask_image_url text,
                overlay_image_url text, text_prompt text not null, labels text not null default '[]',
                metadata text not null default '{}', status text not null default 'pending', error text,
                created_at text not null, updated_at text not null);
            insert into segmentation_results (id, user_id, text_prompt, metadata, status, created_at, updated_at)
                values ('old', 'local', 'dog', '{"prompts": ["dog"]}', 'pending', '2026-01-01T00:00:00+00:00',
                        '2026-01-01T00:00:00+00:00');
        """)
    db.close()
    store = SQLiteStore(path)
    assert store.get("old").status == "pending" and store.runnable() == []  # an old row is a plain one
    assert store.start("old").metadata["attempts"] == 1  # counted from 0 when the row has no count
    queued = store.create_task(["cat"], queue=True)
    assert [t.id for t in SQLiteStore(path).runnable()] == [queued.id]  # opening it again changes nothing


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    assert store_from_settings(Settings(data_dir=tmp_path)).name == "sqlite"
    s = Settings(data_dir=tmp_path, supabase_url="http://127.0.0.1:9", supabase_service_key="k", user_id="u1")
    assert store_from_settings(s).name == "supabase"


# --------------------------------------------------------------------------------------- Supabase
USER = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-8888-7777-6666-555555555555"
T0 = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
ROW = {
    "id": "t1",
    "user_id": USER,
    "project_id": None,
    "status": "pending",
    "text_prompt": "dog",
    "labels": [],
    "metadata": {"prompts": ["dog"]},
    "error": None,
    "source_image_url": None,
    "mask_image_url": None,
    "overlay_image_url": None,
    "projects": None,
    "queued": False,
    "created_at": "2026-11-22T03:00:00+00:00",
    "updated_at": "2026-11-22T03:00:00+00:00",
}
_QUERY_PARAMS = ("select", "order", "limit", "offset")


def _failure(status: int, code: str, message: str, details: str) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": details, "hint": None})


class PostgREST:
    """Answers supabase-py's requests like PostgREST would — filters (eq, in, lt), the trigger that sets
    ``updated_at`` on every update, and the error contract of create_segmentation_task and
    finish_segmentation_task (supabase/migrations/20261122010000_segmentation_tasks.sql) — and records them.
    ``interleave`` runs once before the next write: what another client does between a read and a write."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.rows: dict[str, dict[str, Any]] = {}
        self.projects: dict[str, dict[str, Any]] = {}
        self.profiles = {
            USER: {"id": USER, "tier": "pro", "credits": 5},
            OTHER: {"id": OTHER, "tier": "free", "credits": 100},
        }
        self.clock = 0
        self.interleave: Any = None

    def now(self) -> str:
        self.clock += 1
        return (T0 + timedelta(seconds=self.clock, microseconds=123456)).isoformat()

    def add(self, **values: Any) -> dict[str, Any]:
        now = self.now()
        row = {**ROW, "id": f"t{len(self.rows) + 1}", "created_at": now, "updated_at": now, **values}
        self.rows[row["id"]] = row
        return row

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = urlsplit(str(request.url))
        query = parse_qs(url.query)
        path = url.path.removeprefix("/rest/v1/")
        body: Any = json.loads(request.content) if request.content else None
        if request.method != "GET" and self.interleave is not None:
            interleave, self.interleave = self.interleave, None
            interleave()
        if path == "rpc/create_segmentation_task":
            return self._create(body)
        if path == "rpc/finish_segmentation_task":
            return self._finish(body)
        if path == "projects":
            if request.method == "GET":
                found = [p for p in self.projects.values() if _matches(p, query)]
                return httpx.Response(200, json=found[: int(query["limit"][0])] if "limit" in query else found)
            project = {"id": f"p{len(self.projects) + 1}", **body}
            self.projects[project["id"]] = project
            return httpx.Response(201, json=[project])
        if path == "users_profile":
            return httpx.Response(200, json=[p for p in self.profiles.values() if _matches(p, query)][:1])
        if request.method == "POST":
            assert "queued" not in body  # authenticated has no privilege on that column
            return httpx.Response(201, json=[self.add(**body)])
        if request.method == "PATCH":
            changed = [r for r in self.rows.values() if _matches(r, query)]
            if request.headers["authorization"].count(".") == 2:  # a user's JWT: RLS hides the server's tasks
                changed = [r for r in changed if not r["queued"]]
            for row in changed:
                row.update(body, updated_at=self.now())
            return httpx.Response(200, json=changed)
        rows = [self._embed(r, query) for r in self.rows.values() if _matches(r, query)]
        if "order" in query:
            column, _, direction = query["order"][0].partition(".")
            rows.sort(key=lambda r: r[column], reverse=direction == "desc")
        return httpx.Response(200, json=rows[: int(query["limit"][0])] if "limit" in query else rows)

    def _embed(self, row: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        """The row as read, with ``projects(name)`` joined in when the select asks for it."""
        if "projects(name)" not in query.get("select", [""])[0]:
            return row
        project = self.projects.get(row.get("project_id") or "")
        return {**row, "projects": {"name": project["name"]} if project else None}

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        user, cost = body["p_user_id"], body["p_cost"]
        profile = self.profiles.get(user)
        if profile is None:
            return _failure(404, "PT404", "USER_NOT_FOUND", f"no profile for user {user}")
        reserved = sum(
            r["metadata"].get("cost", 0)
            for r in self.rows.values()
            if r["user_id"] == user and r["status"] in ("pending", "processing") and r["queued"]
        )
        if cost > 0 and profile["credits"] - reserved < cost:
            return _failure(
                402,
                "PT402",
                "INSUFFICIENT_CREDITS",
                f"user {user} has {profile['credits']} credits, "
                f"{reserved} reserved by unfinished tasks, {cost} required",
            )
        row = self.add(
            user_id=user,
            project_id=body["p_project_id"],
            text_prompt=body["p_text_prompt"],
            metadata={**body["p_metadata"], "cost": cost, "attempts": 0},
            queued=True,
        )
        return httpx.Response(200, json=row["id"])

    def _finish(self, body: dict[str, Any]) -> httpx.Response:
        row = self.rows.get(body["p_task_id"])
        if row is None:
            return _failure(404, "PT404", "TASK_NOT_FOUND", f"no task {body['p_task_id']}")
        if not row["queued"]:
            return _failure(409, "PT409", "TASK_NOT_QUEUED", f"task {row['id']} is not a server task")
        if row["status"] != "processing":
            return _failure(
                409, "PT409", "TASK_NOT_PROCESSING", f"task {row['id']} is {row['status']}; it cannot become done"
            )
        profile = self.profiles[row["user_id"]]
        if profile["credits"] < row["metadata"]["cost"]:
            return _failure(
                402,
                "PT402",
                "INSUFFICIENT_CREDITS",
                f"user {row['user_id']} has {profile['credits']} credits, {row['metadata']['cost']} required",
            )
        profile["credits"] -= row["metadata"]["cost"]
        extra = {k: v for k, v in body["p_metadata"].items() if k not in ("cost", "attempts")}
        row.update(
            status="done",
            source_image_url=body["p_source"],
            mask_image_url=body["p_mask"],
            overlay_image_url=body["p_overlay"],
            labels=body["p_labels"],
            metadata={**row["metadata"], **extra},
            updated_at=self.now(),
        )
        return httpx.Response(200, json=profile["credits"])


def _matches(row: dict[str, Any], query: dict[str, list[str]]) -> bool:
    for column, conditions in query.items():
        if column in _QUERY_PARAMS or "." in column:  # embedded resources (projects.name) are not modelled
            continue
        for condition in conditions:
            op, _, arg = condition.partition(".")
            value = row.get(column)
            value = json.dumps(value) if isinstance(value, bool) else value
            if op == "eq" and str(value) != arg:
                return False
            if op == "in" and str(value) not in arg.removeprefix("(").removesuffix(")").split(","):
                return False
            if op == "lt" and not datetime.fromisoformat(str(value)) < datetime.fromisoformat(arg):
                return False
    return True


def _jwt(sub: str) -> str:
    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': sub, 'role': 'authenticated'})}.sig"


def _filters(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.url.query.decode())


@pytest.fixture
def postgrest() -> PostgREST:
    return PostgREST()


def _store(postgrest: PostgREST, key: str = "anon-key", **kwargs: Any) -> tuple[SupabaseStore, httpx.Client]:
    http = httpx.Client(transport=httpx.MockTransport(postgrest))
    return SupabaseStore("http://127.0.0.1:54321", key, http=http, **kwargs), http


def test_supabase_user_token_requests(postgrest: PostgREST) -> None:
    store, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        task = store.create_task(["dog"], project="pets")
        assert task.status == "pending" and store.user_id == USER
        create_project, insert, select = postgrest.requests[-3:]
        assert json.loads(create_project.content) == {"user_id": USER, "name": "pets"}
        body = json.loads(insert.content)  # the credit functions are service_role only: the row itself
        assert body["user_id"] == USER and body["project_id"] == "p1" and body["status"] == "pending"
        assert body["metadata"] == {"prompts": ["dog"], "cost": 0, "attempts": 0}
        assert insert.url.path == "/rest/v1/segmentation_results"
        assert "select=%2A%2Cprojects%28name%29" in str(select.url) or "projects(name)" in str(select.url)

        store.start(task.id)
        read, patch, _ = postgrest.requests[-3:]
        assert read.method == "GET" and patch.method == "PATCH"
        assert json.loads(patch.content) == {
            "status": "processing",
            "metadata": {"prompts": ["dog"], "cost": 0, "attempts": 1},
        }
        assert _filters(patch) == {
            "id": [f"eq.{task.id}"],
            "user_id": [f"eq.{USER}"],
            "status": ["eq.pending"],
            "updated_at": [f"eq.{task.updated_at.isoformat()}"],
        }
        done = store.finish(
            task.id,
            source="s",
            mask="m",
            overlay="o",
            labels=[{"label": "dog"}],
            metadata={"instances": 1, "attempts": 9},
        )
        assert done.status == "done" and done.metadata == {"prompts": ["dog"], "cost": 0, "attempts": 1, "instances": 1}
        with pytest.raises(StoreError, match="is done; it cannot become processing"):
            store.start(task.id)
        for r in postgrest.requests:  # RLS applies as the user: their token, plus the project's anon key
            assert r.headers["authorization"] == f"Bearer {_jwt(USER)}" and r.headers["apikey"] == "anon-key"
            assert not r.url.path.startswith("/rest/v1/rpc/")
        with pytest.raises(UsageError, match="queued tasks need the service key"):
            store.create_task(["dog"], cost=1, queue=True)
        with pytest.raises(UsageError, match="only reserved for queued tasks"):
            store.create_task(["dog"], cost=1)
        with pytest.raises(UsageError, match="cannot act for user"):
            store.for_user(OTHER)
        assert store.for_user(USER).user_id == USER


def test_supabase_service_key_creates_and_finishes_through_the_sql_functions(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        assert server.user_id is None
        store = server.for_user(USER)
        assert store.user_id == USER and store._client is server._client  # one client for every user
        task = store.create_task(["dog", "cat"], project="pets", metadata={"image": "a.jpg"}, cost=2, queue=True)
        rpc, select = postgrest.requests[-2:]
        assert (rpc.method, rpc.url.path) == ("POST", "/rest/v1/rpc/create_segmentation_task")
        assert json.loads(rpc.content) == {  # the function adds cost and attempts
            "p_user_id": USER,
            "p_text_prompt": "dog, cat",
            "p_project_id": "p1",
            "p_cost": 2,
            "p_metadata": {"prompts": ["dog", "cat"], "image": "a.jpg"},
        }
        assert _filters(select)["id"] == [f"eq.{task.id}"] and _filters(select)["user_id"] == [f"eq.{USER}"]
        assert task.metadata["cost"] == 2 and task.user_id == USER
        for r in postgrest.requests:
            assert r.headers["apikey"] == "service-key" and r.headers["authorization"] == "Bearer service-key"

        assert store.start(task.id).metadata["attempts"] == 1
        assert _filters(postgrest.requests[-2])["user_id"] == [f"eq.{USER}"]
        done = store.finish(
            task.id,
            source="k/s.jpg",
            mask="k/m.png",
            overlay="k/o.jpg",
            labels=[{"label": "dog"}],
            metadata={"instances": 1, "cost": 0},
        )
        owner, rpc, _ = postgrest.requests[-3:]
        assert _filters(owner)["user_id"] == [f"eq.{USER}"]  # the function does not know the caller: checked first
        assert (rpc.method, rpc.url.path) == ("POST", "/rest/v1/rpc/finish_segmentation_task")
        assert json.loads(rpc.content) == {
            "p_task_id": task.id,
            "p_source": "k/s.jpg",
            "p_mask": "k/m.png",
            "p_overlay": "k/o.jpg",
            "p_labels": [{"label": "dog"}],
            "p_metadata": {"instances": 1},
        }
        assert done.status == "done" and done.mask_image_url == "k/m.png" and done.metadata["cost"] == 2
        assert postgrest.profiles[USER]["credits"] == 3  # charged by the function, once

        other = store.create_task(["dog"], queue=True)
        failed = store.fail(other.id, "boom")
        assert (failed.status, failed.error) == ("error", "boom")
        patch = postgrest.requests[-2]
        assert _filters(patch) == {
            "id": [f"eq.{other.id}"],
            "user_id": [f"eq.{USER}"],
            "status": ["in.(pending,processing)"],
        }


def test_supabase_plain_rows_are_written_directly_and_cost_nothing(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        store = server.for_user(USER)
        task = store.create_task(["dog"], metadata={"image": "a.jpg", "cost": 5})
        insert = postgrest.requests[-2]
        assert (insert.method, insert.url.path) == ("POST", "/rest/v1/segmentation_results")
        assert json.loads(insert.content) == {
            "user_id": USER,
            "text_prompt": "dog",
            "status": "pending",
            "metadata": {"prompts": ["dog"], "image": "a.jpg", "cost": 0, "attempts": 0},
        }
        store.start(task.id)
        done = store.finish(task.id, source="s", mask="m", overlay="o", labels=[], metadata={"n": 1, "cost": 9})
        patch = postgrest.requests[-2]
        assert patch.method == "PATCH" and _filters(patch)["status"] == ["in.(processing)"]
        assert _filters(patch)["user_id"] == [f"eq.{USER}"]
        assert done.status == "done" and done.metadata == {
            "prompts": ["dog"],
            "image": "a.jpg",
            "cost": 0,
            "attempts": 1,
            "n": 1,
        }
        assert not any(r.url.path.startswith("/rest/v1/rpc/") for r in postgrest.requests)
        assert postgrest.profiles[USER]["credits"] == 5


def test_supabase_signed_in_user_cannot_change_server_tasks(postgrest: PostgREST) -> None:
    store, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        pending = postgrest.add(queued=True, metadata={"prompts": ["dog"], "cost": 1, "attempts": 0})
        running = postgrest.add(queued=True, status="processing", metadata={"prompts": ["dog"], "cost": 1})
        with pytest.raises(StoreError, match="is a server task; only the server can change it"):
            store.start(pending["id"])
        with pytest.raises(StoreError, match="is a server task"):
            store.finish(running["id"], source="s", mask="m", overlay="o", labels=[], metadata={})
        with pytest.raises(StoreError, match="is a server task"):
            store.fail(pending["id"], "x")  # its PATCH changes nothing under RLS
        assert (pending["status"], running["status"]) == ("pending", "processing")
        assert not any(r.url.path.startswith("/rest/v1/rpc/") for r in postgrest.requests)
        assert sum(r.method == "PATCH" for r in postgrest.requests) == 1  # only fail's, which RLS refused


def test_supabase_service_key_sees_only_the_bound_users_tasks(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        theirs = postgrest.add(
            user_id=OTHER, status="processing", metadata={"prompts": ["dog"], "cost": 1}, queued=True
        )
        store = server.for_user(USER)
        before = len(postgrest.requests)
        for operation in (
            store.get,
            store.start,
            lambda i: store.fail(i, "x"),
            lambda i: store.finish(i, source="s", mask="m", overlay="o", labels=[], metadata={}),
        ):
            with pytest.raises(TaskNotFound, match=f"no task {theirs['id']}"):
                operation(theirs["id"])
        sent = postgrest.requests[before:]
        assert sent and all(_filters(r)["user_id"] == [f"eq.{USER}"] for r in sent)
        assert not any(r.url.path.startswith("/rest/v1/rpc/") for r in sent)
        assert theirs["status"] == "processing" and postgrest.profiles[OTHER]["credits"] == 100  # untouched
        assert server.for_user(OTHER).get(theirs["id"]).user_id == OTHER


def test_supabase_account(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        assert server.for_user(USER).account() == Account(USER, tier="pro", credits=5)
        q = _filters(postgrest.requests[-1])
        assert postgrest.requests[-1].url.path == "/rest/v1/users_profile"
        assert q["id"] == [f"eq.{USER}"] and q["select"] == ["id,tier,credits"]
        with pytest.raises(StoreError, match="no profile for user nobody"):
            server.for_user("nobody").account()


def test_supabase_tasks_filed_under_a_project_id(postgrest: PostgREST) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    postgrest.projects = {
        mine: {"id": mine, "user_id": USER, "name": "pets"},
        theirs: {"id": theirs, "user_id": OTHER, "name": "farm"},
    }
    server, http = _store(postgrest, key="service-key")
    with http:
        store = server.for_user(USER)
        task = store.create_task(["dog"], project_id=mine, cost=1, queue=True)
        lookup, rpc, _ = postgrest.requests[-3:]
        assert (lookup.method, lookup.url.path) == ("GET", "/rest/v1/projects")
        assert _filters(lookup) == {"select": ["id"], "id": [f"eq.{mine}"], "user_id": [f"eq.{USER}"], "limit": ["1"]}
        assert rpc.url.path == "/rest/v1/rpc/create_segmentation_task"
        assert json.loads(rpc.content)["p_project_id"] == mine
        assert (task.project_id, task.project) == (mine, "pets")

        before = (len(postgrest.requests), len(postgrest.rows))
        with pytest.raises(TaskNotFound, match=f"no project {theirs}") as e:  # another user's: not found
            store.create_task(["dog"], project_id=theirs, cost=1, queue=True)
        assert e.value.hint == "list your projects, or pass a project name"
        sent = postgrest.requests[before[0] :]
        assert [(r.method, r.url.path) for r in sent] == [("GET", "/rest/v1/projects")]
        assert _filters(sent[0])["user_id"] == [f"eq.{USER}"] and len(postgrest.rows) == before[1]
        for bad in ("not-a-uuid", ""):  # refused before asking (PostgREST would answer 400 for a uuid column)
            with pytest.raises(TaskNotFound, match=f"no project {bad}"):
                store.create_task(["dog"], project_id=bad, queue=True)
        with pytest.raises(UsageError, match="not both"):
            store.create_task(["dog"], project="pets", project_id=mine)
        assert len(postgrest.requests) == before[0] + 1 and len(postgrest.rows) == before[1]

    user, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        plain = user.create_task(["cat"], project_id=mine)
        lookup, insert, _ = postgrest.requests[-3:]
        assert _filters(lookup)["id"] == [f"eq.{mine}"] and _filters(lookup)["user_id"] == [f"eq.{USER}"]
        assert json.loads(insert.content)["project_id"] == mine
        assert (plain.project_id, plain.project) == (mine, "pets")
        with pytest.raises(TaskNotFound, match=f"no project {theirs}"):
            user.create_task(["cat"], project_id=theirs)
        assert len(postgrest.rows) == 2 and len(postgrest.projects) == 2  # no task, no project made


def test_supabase_credit_and_state_errors(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        store = server.for_user(USER)
        reserved = store.create_task(["dog"], cost=4, queue=True)
        store.create_task(["plain"])  # reserves nothing
        with pytest.raises(CreditsError, match="has 5 credits, 4 reserved by unfinished tasks, 2 required"):
            store.create_task(["cat"], cost=2, queue=True)
        assert len(postgrest.rows) == 2  # nothing inserted
        with pytest.raises(StoreError, match=f"task {reserved.id} is pending; it cannot become done"):
            store.finish(reserved.id, source="s", mask="m", overlay="o", labels=[], metadata={})
        store.start(reserved.id)
        postgrest.profiles[USER]["credits"] = 1  # an admin took credits away while it ran
        with pytest.raises(CreditsError, match="has 1 credits, 4 required"):
            store.finish(reserved.id, source="s", mask="m", overlay="o", labels=[], metadata={})
        assert store.get(reserved.id).status == "processing"
        postgrest.interleave = lambda: postgrest.rows.pop(reserved.id)  # deleted between the check and the call
        with pytest.raises(TaskNotFound, match=f"no task {reserved.id}"):
            store.finish(reserved.id, source="s", mask="m", overlay="o", labels=[], metadata={})
        with pytest.raises(StoreError, match="no profile for user nobody") as e:
            server.for_user("nobody").create_task(["dog"], queue=True)
        assert not isinstance(e.value, TaskNotFound)
        with pytest.raises(UsageError, match="cost must be >= 0"):
            store.create_task(["dog"], cost=-1, queue=True)


def test_supabase_start_is_taken_once(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        store = server.for_user(USER)
        task = postgrest.add(metadata={"prompts": ["dog"], "cost": 0, "attempts": 0}, queued=True)

        def other_worker_starts_it() -> None:
            task.update(status="processing", metadata={**task["metadata"], "attempts": 1}, updated_at=postgrest.now())

        postgrest.interleave = other_worker_starts_it
        with pytest.raises(StoreError, match="is processing; it cannot become processing"):
            store.start(task["id"])
        assert task["metadata"]["attempts"] == 1  # counted once, by the worker that took it

        again = postgrest.add(metadata={"prompts": ["dog"], "cost": 0, "attempts": 0}, queued=True)
        postgrest.interleave = lambda: again.update(
            metadata={**again["metadata"], "note": "x"}, updated_at=postgrest.now()
        )
        started = store.start(again["id"])  # still pending, changed meanwhile: read again, nothing lost
        assert started.status == "processing" and started.metadata == {
            "prompts": ["dog"],
            "cost": 0,
            "attempts": 1,
            "note": "x",
        }
        assert sum(r.method == "PATCH" for r in postgrest.requests[-5:]) == 2


def test_supabase_unbound_store_works_across_users_only(postgrest: PostgREST, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, supabase_url="http://127.0.0.1:9", supabase_service_key="k")
    assert store_from_settings(s).user_id is None  # a server's store: no S3SEG_USER_ID needed any more
    server, http = _store(postgrest, key="service-key")
    with http:
        for operation in (
            lambda: server.get("t1"),
            lambda: server.start("t1"),
            lambda: server.fail("t1", "x"),
            lambda: server.create_task(["dog"]),
            lambda: server.list(),
            server.account,
            lambda: server.finish("t1", source="s", mask="m", overlay="o", labels=[], metadata={}),
        ):
            with pytest.raises(UsageError, match="not bound to a user"):
                operation()
        assert postgrest.requests == []  # refused before asking
        old = postgrest.add(user_id=OTHER, queued=True)
        postgrest.add(user_id=USER)  # a plain row (a result the CLI recorded): not the server's to run
        new = postgrest.add(user_id=USER, queued=True)
        postgrest.add(user_id=USER, status="done", queued=True)
        assert [t.id for t in server.runnable(10)] == [old["id"], new["id"]]
        q = _filters(postgrest.requests[-1])
        assert q["status"] == ["eq.pending"] and q["queued"] == ["eq.true"]
        assert q["order"] == ["created_at.asc"] and q["limit"] == ["10"]
        assert "user_id" not in q


def test_supabase_requeue_stale(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        long_ago = "2020-01-01T00:00:00.000001+00:00"
        retry = postgrest.add(
            user_id=OTHER,
            status="processing",
            updated_at=long_ago,
            queued=True,
            metadata={"prompts": ["dog"], "cost": 1, "attempts": 1},
        )
        last = postgrest.add(
            status="processing",
            updated_at=long_ago,
            queued=True,
            metadata={"prompts": ["dog"], "cost": 1, "attempts": 2},
        )
        alive = postgrest.add(
            status="processing",
            updated_at=datetime.now(timezone.utc).isoformat(),
            queued=True,
            metadata={"prompts": ["dog"], "attempts": 1},
        )
        waiting = postgrest.add(updated_at=long_ago, queued=True)
        plain = postgrest.add(status="processing", updated_at=long_ago)
        requeued = server.requeue_stale(older_than_s=600, max_attempts=2)
        assert [(t.id, t.status, t.user_id) for t in requeued] == [(retry["id"], "pending", OTHER)]
        assert (last["status"], last["error"]) == (
            "error",
            "the worker running this task stopped responding (attempt 2 of 2)",
        )
        assert alive["status"] == "processing" and waiting["status"] == "pending" and plain["status"] == "processing"

        select, patch1, patch2, reread = postgrest.requests[-4:]
        q = _filters(select)
        assert q["status"] == ["eq.processing"] and q["queued"] == ["eq.true"] and q["updated_at"][0].startswith("lt.")
        cutoff = datetime.fromisoformat(q["updated_at"][0].removeprefix("lt."))
        assert abs((datetime.now(timezone.utc) - cutoff).total_seconds() - 600) < 60
        assert _filters(patch1) == {
            "id": [f"eq.{retry['id']}"],
            "status": ["eq.processing"],
            "updated_at": [f"eq.{long_ago}"],
        }
        assert json.loads(patch1.content) == {"status": "pending"}
        assert json.loads(patch2.content)["status"] == "error"
        assert _filters(reread)["id"] == [f"in.({retry['id']})"]
        assert server.requeue_stale(older_than_s=600, max_attempts=2) == []


def test_supabase_requeue_by_another_server_is_not_repeated(postgrest: PostgREST) -> None:
    server, http = _store(postgrest, key="service-key")
    with http:
        task = postgrest.add(
            status="processing",
            updated_at="2020-01-01T00:00:00+00:00",
            queued=True,
            metadata={"prompts": ["dog"], "attempts": 1},
        )
        postgrest.interleave = lambda: task.update(status="pending", updated_at=postgrest.now())  # the other one
        assert server.requeue_stale(older_than_s=600, max_attempts=2) == []
        assert task["status"] == "pending" and task["metadata"]["attempts"] == 1


def test_supabase_listing_query(postgrest: PostgREST) -> None:
    store, http = _store(postgrest, access_token=_jwt(USER))
    with http:
        store.list(project="pets", status="done", limit=10, offset=20)
        q = _filters(postgrest.requests[-1])
        assert q["user_id"] == [f"eq.{USER}"] and q["status"] == ["eq.done"] and q["projects.name"] == ["eq.pets"]
        assert q["order"] == ["created_at.desc"] and q["offset"] == ["20"] and q["limit"] == ["10"]
        assert "projects!inner(name)" in q["select"][0]


def test_supabase_errors_become_store_errors(postgrest: PostgREST) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            403,
            json={
                "code": "42501",
                "message": "new row violates row-level security policy",
                "details": None,
                "hint": None,
            },
        )

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    with http:
        store = SupabaseStore("http://127.0.0.1:54321", "anon-key", access_token=_jwt(USER), http=http)
        with pytest.raises(StoreError, match="row-level security") as e:
            store.create_task(["dog"])
        assert e.value.hint and "your task" in e.value.hint

    def no_profile(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            409,
            json={
                "code": "23503",
                "hint": None,
                "message": 'insert or update on table "segmentation_results" violates foreign key constraint '
                '"segmentation_results_user_id_fkey"',
                "details": f'Key (user_id)=({OTHER}) is not present in table "users_profile".',
            },
        )

    http = httpx.Client(transport=httpx.MockTransport(no_profile))
    with http:
        store = SupabaseStore("http://127.0.0.1:54321", "service-key", user_id=OTHER, http=http)
        with pytest.raises(StoreError, match=f"no profile for the user .*{OTHER}"):
            store.create_task(["dog"])

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    http = httpx.Client(transport=httpx.MockTransport(down))
    with http:
        store = SupabaseStore("http://127.0.0.1:54321", "anon-key", access_token=_jwt(USER), http=http)
        with pytest.raises(StoreError, match="cannot reach Supabase"):
            store.get("t1")


def test_supabase_access_token_must_be_a_jwt() -> None:
    with pytest.raises(UsageError, match="not a JWT"):
        SupabaseStore("http://127.0.0.1:54321", "anon", access_token="garbage")
