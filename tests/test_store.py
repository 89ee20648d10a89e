"""One suite for every results store: each test runs on SQLite (a file), on PostgreSQL (a real, throw-away
cluster with supabase/migrations applied, tests/_postgres.py) and on Supabase's REST API.

PostgREST cannot run here, so the Supabase store talks to a stand-in (tests/_postgrest.py, an
`httpx.MockTransport` that mimics the filters, triggers, RLS and SQL-function errors the store relies on); the
SQL behind it runs for real in the PostgreSQL case. What only one backend has is tested in its own file:
test_store_sqlite.py (processes, old files), test_store_postgres.py (locks, concurrency, RLS, the SQL
functions), test_store_supabase.py (the exact requests sent).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from _postgrest import USER, PostgREST, supabase_store
from s3seg.config import Settings
from s3seg.errors import CreditsError, ProjectNotFound, UsageError
from s3seg.store import Store, StoreError, Task, TaskNotFound, store_from_settings
from s3seg.store._sqlite import SQLiteStore

STALE = "the worker running this task stopped responding"


@dataclass
class Backend:
    """A store under test and what the tests need to arrange and inspect its database."""

    name: str
    server: Store  # the server's store: ``runnable`` and ``requeue_stale`` across users
    new_user: Callable[[int], str]  # a user with a profile and that many credits
    backdate: Callable[[list[str]], None]  # as if the tasks' worker last touched them an hour ago
    counts: Callable[[], tuple[int, int]]  # (tasks, projects) in the database
    set_credits: Callable[[str, int], None] | None  # what an admin does behind the store's back; None: not counted

    def user(self, credits: int = 100) -> Store:
        return self.server.for_user(self.new_user(credits))


def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "r.db"
    users = iter(range(1, 1000))

    def backdate(ids: list[str]) -> None:
        then = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="microseconds")
        with sqlite3.connect(path) as db:
            db.executemany("update segmentation_results set updated_at = ? where id = ?", [(then, i) for i in ids])
        db.close()

    def counts() -> tuple[int, int]:
        with sqlite3.connect(path) as db:
            tasks = db.execute("select count(*) from segmentation_results").fetchone()[0]
            projects = db.execute("select count(*) from projects").fetchone()[0]
        db.close()
        return tasks, projects

    with SQLiteStore(path) as server:
        yield Backend("sqlite", server, lambda _: f"user{next(users)}", backdate, counts, None)


def _postgres(request: pytest.FixtureRequest) -> Iterator[Backend]:
    pytest.importorskip("psycopg_pool")
    import _postgres
    from s3seg.store._postgres import PostgresStore

    pg = request.getfixturevalue("pg")  # one cluster for this module (conftest.py)
    admin = request.getfixturevalue("pg_admin")
    admin.execute("delete from public.segmentation_results")  # each test starts empty, as on the other backends
    admin.execute("delete from public.projects")

    def backdate(ids: list[str]) -> None:
        with admin.transaction():  # the set_updated_at trigger is off for this transaction (superuser only)
            admin.execute("set local session_replication_role = replica")
            admin.execute(
                "update public.segmentation_results set updated_at = now() - interval '1 hour' where id = any(%s)",
                ([uuid.UUID(i) for i in ids],),
            )

    def counts() -> tuple[int, int]:
        return (
            _postgres.one(admin, "select count(*) from public.segmentation_results"),
            _postgres.one(admin, "select count(*) from public.projects"),
        )

    def set_credits(user: str, credits: int) -> None:
        admin.execute("update public.users_profile set credits = %s where id = %s", (credits, user))

    with PostgresStore(pg.dsn("postgres")) as server:
        yield Backend(
            "postgres",
            server,
            lambda credits: str(_postgres.sign_up(admin, credits=credits)),
            backdate,
            counts,
            set_credits,
        )


def _supabase() -> Iterator[Backend]:
    postgrest = PostgREST()

    def new_user(credits: int) -> str:
        user = str(uuid.uuid4())
        postgrest.profiles[user] = {"id": user, "tier": "free", "credits": credits}
        return user

    def backdate(ids: list[str]) -> None:
        for i in ids:
            postgrest.rows[i]["updated_at"] = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()

    def set_credits(user: str, credits: int) -> None:
        postgrest.profiles[user]["credits"] = credits

    server, http = supabase_store(postgrest, key="service-key")
    with http, server:
        yield Backend(
            "supabase", server, new_user, backdate, lambda: (len(postgrest.rows), len(postgrest.projects)), set_credits
        )


@pytest.fixture(params=["sqlite", "postgres", "supabase"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from _sqlite(tmp_path)
    elif request.param == "postgres":
        yield from _postgres(request)
    else:
        yield from _supabase()


def finish(store: Store, task_id: str, **metadata: Any) -> Task:
    return store.finish(
        task_id, source="k/src.jpg", mask="k/mask.png", overlay="k/ov.jpg", labels=[], metadata=metadata
    )


# --- life cycle ---------------------------------------------------------------------------------------------


def test_lifecycle_pending_processing_done(backend: Backend) -> None:
    s = backend.user()
    task = s.create_task(["dog", "cat"], project="pets", metadata={"image": "a.jpg"})
    assert (task.status, task.text_prompt, task.project, task.prompts, task.user_id) == (
        "pending",
        "dog, cat",
        "pets",
        ["dog", "cat"],
        s.user_id,
    )
    assert task.metadata == {"prompts": ["dog", "cat"], "image": "a.jpg", "cost": 0, "attempts": 0}
    started = s.start(task.id)
    assert (started.status, started.metadata["attempts"]) == ("processing", 1)
    assert started.updated_at >= task.updated_at
    done = s.finish(
        task.id,
        source="k/src.jpg",
        mask="k/mask.png",
        overlay="k/ov.jpg",
        labels=[{"label": "dog", "score": 0.9}],
        metadata={"instances": 1, "cost": 7, "attempts": 9},  # the caller cannot change the price or the count
    )
    assert (done.status, done.source_image_url, done.mask_image_url, done.overlay_image_url, done.error) == (
        "done",
        "k/src.jpg",
        "k/mask.png",
        "k/ov.jpg",
        None,
    )
    assert done.labels == [{"label": "dog", "score": 0.9}]
    assert done.metadata == {"prompts": ["dog", "cat"], "image": "a.jpg", "instances": 1, "cost": 0, "attempts": 1}
    assert done.updated_at >= started.updated_at and s.get(task.id) == done
    refused: list[tuple[Callable[[], Task], str]] = [
        (lambda: finish(s, task.id), "done"),
        (lambda: s.fail(task.id, "late"), "error"),
        (lambda: s.start(task.id), "processing"),
    ]
    for call, target in refused:
        with pytest.raises(StoreError) as exc:
            call()
        assert type(exc.value) is StoreError
        assert exc.value.message == f"task {task.id} is done; it cannot become {target}"


def test_errors_are_kept_and_transitions_enforced(backend: Backend) -> None:
    s = backend.user()
    task = s.create_task(["dog"], queue=True)
    with pytest.raises(StoreError, match="is pending; it cannot become done"):
        finish(s, task.id)
    failed = s.fail(task.id, "CUDA out of memory")
    assert (failed.status, failed.error) == ("error", "CUDA out of memory")
    with pytest.raises(StoreError, match="is error; it cannot become processing"):
        s.start(task.id)
    running = s.start(s.create_task(["cat"]).id)
    assert s.fail(running.id, "").error == "unknown error"  # processing → error, always with a reason


@pytest.mark.parametrize("bad", ["nope", "", "1; drop table segmentation_results", str(uuid.uuid4())])
def test_unknown_and_malformed_task_ids_are_not_found(backend: Backend, bad: str) -> None:
    s = backend.user()
    calls: list[Callable[[], Task]] = [
        lambda: s.get(bad),
        lambda: s.start(bad),
        lambda: finish(s, bad),
        lambda: s.fail(bad, "x"),
    ]
    for call in calls:
        with pytest.raises(TaskNotFound, match=f"no task {bad}") as exc:
            call()
        assert exc.value.hint == "list tasks with: s3seg tasks"


def test_listing_filters_and_pages(backend: Backend) -> None:
    s = backend.user()
    ids = [s.create_task([f"p{i}"], project="a" if i % 2 else "b").id for i in range(7)]
    s.fail(ids[0], "boom")
    assert [t.id for t in s.list(limit=3)] == ids[::-1][:3]  # newest first
    assert [t.id for t in s.list(limit=3, offset=3)] == ids[::-1][3:6]
    assert [t.id for t in s.list(project="a")] == [ids[5], ids[3], ids[1]]
    assert [t.id for t in s.list(project="b", limit=2, offset=1)] == [ids[4], ids[2]]
    assert [t.id for t in s.list(status="error")] == [ids[0]]
    assert [t.id for t in s.list(project="b", status="pending")] == [ids[6], ids[4], ids[2]]
    assert s.list(project="nothing") == []
    with pytest.raises(StoreError, match="unknown status"):
        s.list(status="finished")  # type: ignore[arg-type]


# --- users and projects -------------------------------------------------------------------------------------


def test_users_see_only_their_own_tasks(backend: Backend) -> None:
    mine, theirs = backend.user(), backend.user()
    task = theirs.create_task(["dog"], project="pets", queue=True)
    own = mine.create_task(["cat"], project="pets")
    assert task.project == own.project == "pets" and task.project_id != own.project_id  # one project per user
    theirs.start(task.id)  # processing: finish and fail would be allowed for its owner
    calls: list[Callable[[], Any]] = [
        lambda: mine.get(task.id),
        lambda: mine.start(task.id),
        lambda: finish(mine, task.id),
        lambda: mine.fail(task.id, "x"),
    ]
    for call in calls:
        with pytest.raises(TaskNotFound, match=f"no task {task.id}"):
            call()
    assert theirs.get(task.id).status == "processing"  # untouched by the refused calls
    assert [t.id for t in mine.list()] == [own.id] and [t.id for t in mine.list(project="pets")] == [own.id]
    assert [t.id for t in theirs.list(project="pets")] == [task.id]
    assert backend.server.for_user(str(task.user_id)).get(task.id).id == task.id


def test_projects_by_name(backend: Backend) -> None:
    s = backend.user()
    t1 = s.create_task(["cat"], project="alpha", queue=True)
    t2 = s.create_task(["dog"], project="alpha")
    t3 = s.create_task(["cow"], project="beta")
    t4 = s.create_task(["owl"])
    assert t1.project_id == t2.project_id != t3.project_id
    assert (t4.project, t4.project_id) == (None, None)
    assert [t.id for t in s.list()] == [t4.id, t3.id, t2.id, t1.id]
    assert backend.counts() == (4, 2)


def test_tasks_filed_under_a_project_id(backend: Backend) -> None:
    mine, theirs = backend.user(), backend.user()
    first = mine.create_task(["dog"], project="pets")
    pid = first.project_id
    assert pid is not None
    queued = mine.create_task(["cat"], project_id=pid, cost=1, queue=True)
    plain = mine.create_task(["cow"], project_id=pid)
    assert {(t.project, t.project_id) for t in (queued, plain)} == {("pets", pid)}
    assert [t.id for t in mine.list(project="pets")] == [plain.id, queued.id, first.id]

    other = theirs.create_task(["owl"], project="farm").project_id
    before = backend.counts()
    for bad in (other, str(uuid.uuid4()), "not-a-uuid", "", "1; drop table projects"):
        assert bad is not None
        for queue in (True, False):
            with pytest.raises(ProjectNotFound, match=f"no project {bad}") as exc:
                mine.create_task(["dog"], project_id=bad, cost=int(queue), queue=queue)
            assert exc.value.hint == "list your projects, or pass a project name"
    with pytest.raises(UsageError, match="not both"):
        mine.create_task(["dog"], project="pets", project_id=pid)
    assert backend.counts() == before  # no task, no project made by the refused calls
    assert [t.project_id for t in theirs.list()] == [other]  # untouched


# --- attempts, cost and the server's sweep ------------------------------------------------------------------


def test_cost_is_the_stores_and_attempts_are_counted(backend: Backend) -> None:
    s = backend.user()
    task = s.create_task(["dog"], metadata={"cost": 99, "attempts": 7, "image": "a.jpg"}, cost=3, queue=True)
    assert task.metadata == {"prompts": ["dog"], "image": "a.jpg", "cost": 3, "attempts": 0}  # the store's own
    assert s.start(task.id).metadata["attempts"] == 1
    backend.backdate([task.id])
    assert [t.id for t in backend.server.requeue_stale(older_than_s=60, max_attempts=3)] == [task.id]
    assert s.start(task.id).metadata["attempts"] == 2
    with pytest.raises(StoreError, match="is processing; it cannot become processing"):
        s.start(task.id)  # another worker has it: refused, and not counted
    done = finish(s, task.id, attempts=0, cost=0)
    assert (done.metadata["attempts"], done.metadata["cost"]) == (2, 3)
    plain = s.create_task(["cat"], metadata={"cost": 5, "attempts": 3})
    assert plain.metadata == {"prompts": ["cat"], "cost": 0, "attempts": 0}
    with pytest.raises(UsageError, match="cost must be >= 0"):
        s.create_task(["dog"], cost=-1, queue=True)
    with pytest.raises(UsageError, match="only reserved for queued tasks") as exc:
        s.create_task(["dog"], cost=1)
    assert exc.value.hint


def test_runnable_is_every_users_queued_pending_oldest_first(backend: Backend) -> None:
    users = [backend.user(), backend.user(), backend.user()]
    ids = [users[i % 3].create_task([f"p{i}"], queue=True).id for i in range(6)]
    users[0].start(ids[0])
    users[1].fail(ids[1], "boom")
    users[0].create_task(["recorded by the CLI"])  # a plain row: not the server's to run
    runnable = backend.server.runnable()
    assert [t.id for t in runnable] == ids[2:]
    assert [t.user_id for t in runnable] == [users[i % 3].user_id for i in range(2, 6)]
    assert [t.id for t in backend.server.runnable(2)] == ids[2:4]


def test_requeue_stale_then_error_after_the_last_attempt(backend: Backend) -> None:
    a, b = backend.user(), backend.user()
    stale = a.create_task(["a"], project="p", queue=True)
    fresh = a.create_task(["b"], queue=True)
    other = b.create_task(["c"], queue=True)
    plain = a.create_task(["a CLI run that crashed"])
    waiting = a.create_task(["not started"], queue=True)
    for s, t in ((a, stale), (a, fresh), (b, other), (a, plain)):
        s.start(t.id)
    backend.backdate([stale.id, other.id, plain.id, waiting.id])
    requeued = backend.server.requeue_stale(older_than_s=60, max_attempts=2)
    assert [(t.id, t.status, t.user_id, t.project) for t in requeued] == [
        (stale.id, "pending", a.user_id, "p"),
        (other.id, "pending", b.user_id, None),
    ]
    assert requeued[0].updated_at > stale.updated_at and requeued[0].error is None
    assert a.get(fresh.id).status == "processing"  # its worker is still alive
    assert a.get(plain.id).status == "processing"  # not a server task: no worker of ours to replace
    assert a.get(waiting.id).status == "pending"
    assert backend.server.requeue_stale(older_than_s=60, max_attempts=2) == []  # requeued ones are fresh again

    assert a.start(stale.id).metadata["attempts"] == 2  # the second (last) attempt dies too
    backend.backdate([stale.id])
    assert backend.server.requeue_stale(older_than_s=60, max_attempts=2) == []  # given up: not requeued
    failed = a.get(stale.id)
    assert (failed.status, failed.error) == ("error", f"{STALE} (attempt 2 of 2)")
    with pytest.raises(StoreError, match="is error; it cannot become processing"):
        a.start(stale.id)
    with pytest.raises(StoreError, match="is pending; it cannot become done"):
        finish(b, other.id)


def test_heartbeat_keeps_a_running_task_and_records_progress(backend: Backend) -> None:
    a, b = backend.user(), backend.user()
    task = a.create_task(["v"], queue=True, frames_total=8)
    assert (task.frames_done, task.frames_total) == (0, 8)
    assert a.create_task(["plain"]).frames_total == 0  # unknown
    assert not a.heartbeat(task.id, done=1)  # pending: nobody runs it
    a.start(task.id)
    backend.backdate([task.id])
    assert a.heartbeat(task.id, done=3)  # the worker is alive: fresh again
    assert backend.server.requeue_stale(older_than_s=60, max_attempts=3) == []
    running = a.get(task.id)
    assert (running.status, running.frames_done, running.frames_total) == ("processing", 3, 8)
    assert running.updated_at > task.updated_at
    assert not b.heartbeat(task.id, done=7)  # another user's task: not touched
    assert a.get(task.id).frames_done == 3
    with pytest.raises(UsageError, match="progress must be >= 0"):
        a.heartbeat(task.id, done=-1)
    backend.backdate([task.id])  # no heartbeat for an hour: its worker died
    [requeued] = backend.server.requeue_stale(older_than_s=60, max_attempts=3)
    assert requeued.id == task.id and not a.heartbeat(task.id)  # the dead worker's late beat: not its task now
    again = a.start(task.id)  # run again from the start
    assert (again.frames_done, again.frames_total, again.metadata["attempts"]) == (0, 8, 2)
    assert a.heartbeat(again.id, done=8, total=8) and a.heartbeat(again.id)
    done = finish(a, again.id)
    assert (done.status, done.frames_done, done.frames_total) == ("done", 8, 8)
    assert not a.heartbeat(done.id)  # ended


def test_finish_charges_a_lower_cost_never_more(backend: Backend) -> None:
    s = backend.user(100)
    shorter, dearer = s.create_task(["v"], cost=10, queue=True), s.create_task(["v"], cost=3, queue=True)
    for t in (shorter, dearer):
        s.start(t.id)
    with pytest.raises(UsageError, match="cost must be >= 0"):
        s.finish(shorter.id, source="k", mask=None, overlay="o", labels=[], metadata={}, cost=-1)
    assert s.get(shorter.id).status == "processing"  # refused before anything changed
    done = s.finish(shorter.id, source="k/v.mp4", mask=None, overlay="k/o.mp4", labels=[], metadata={}, cost=4)
    assert (done.status, done.metadata["cost"], done.mask_image_url) == ("done", 4, None)
    assert s.finish(dearer.id, source="k", mask=None, overlay="o", labels=[], metadata={}, cost=9).metadata["cost"] == 3
    if backend.set_credits is not None:  # SQLite does not count credits
        assert s.account().credits == 100 - 4 - 3


# --- credits, binding, closing ------------------------------------------------------------------------------


def test_credits_are_reserved_at_creation_and_charged_once(backend: Backend) -> None:
    if backend.set_credits is None:
        assert backend.user().account().credits is None  # SQLite: not counted, never refused
        return
    s = backend.user(3)
    assert s.account().credits == 3
    tasks = [s.create_task(["cat"], cost=1, queue=True) for _ in range(3)]
    s.start(tasks[0].id)  # processing still holds its reservation
    with pytest.raises(CreditsError) as exc:
        s.create_task(["cat"], cost=1, queue=True)
    assert exc.value.message == (
        f"not enough credits: user {s.user_id} has 3 credits, 3 reserved by unfinished tasks, 1 required"
    )
    assert exc.value.hint
    assert backend.counts()[0] == 3  # nothing inserted
    assert s.create_task(["free"], queue=True).status == "pending"  # free tasks are never refused
    s.create_task(["plain"])  # reserves nothing
    s.fail(tasks[1].id, "boom")  # a failure releases its reservation and charges nothing
    replacement = s.create_task(["cat"], cost=1, queue=True)
    finish(s, tasks[0].id)  # charged: 2 credits left, 2 reserved (tasks[2] and the replacement)
    assert s.account().credits == 2
    with pytest.raises(CreditsError, match="has 2 credits, 2 reserved"):
        s.create_task(["cat"], cost=1, queue=True)
    s.fail(replacement.id, "boom")
    with pytest.raises(CreditsError, match="1 reserved by unfinished tasks, 2 required"):
        s.create_task(["cat"], cost=2, queue=True)

    s.start(tasks[2].id)
    gone = backend.user(1)
    running = gone.start(gone.create_task(["cat"], cost=1, queue=True).id)
    backend.set_credits(str(gone.user_id), 0)  # an admin takes the credit away while it runs
    with pytest.raises(CreditsError, match=f"not enough credits: user {gone.user_id} has 0 credits, 1 required"):
        finish(gone, running.id)
    after = gone.get(running.id)
    assert (after.status, after.source_image_url, after.labels) == ("processing", None, [])  # rolled back
    assert finish(s, tasks[2].id).status == "done" and s.account().credits == 1


def test_unknown_users_have_no_profile(backend: Backend) -> None:
    if backend.set_credits is None:
        assert backend.server.for_user("bob").account().user_id == "bob"  # every local user is enterprise
        return
    nobody = backend.server.for_user(str(uuid.uuid4()))
    calls: list[Callable[[], Any]] = [
        nobody.account,
        lambda: nobody.create_task(["cat"], queue=True),
        lambda: nobody.create_task(["c"], project="p", cost=1, queue=True),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="no profile for user") as exc:
            call()
        assert not isinstance(exc.value, TaskNotFound) and exc.value.hint
    assert nobody.list() == []


def test_binding_and_closing(backend: Backend) -> None:
    with pytest.raises(UsageError, match=r"needs a user id|not a user id"):
        backend.server.for_user("")
    if backend.server.user_id is None:  # a server's store: per-user operations refuse until it is bound
        calls: list[Callable[[], Any]] = [
            lambda: backend.server.get(str(uuid.uuid4())),
            lambda: backend.server.start(str(uuid.uuid4())),
            lambda: backend.server.fail(str(uuid.uuid4()), "x"),
            lambda: finish(backend.server, str(uuid.uuid4())),
            lambda: backend.server.create_task(["dog"]),
            lambda: backend.server.list(),
            backend.server.account,
        ]
        for call in calls:
            with pytest.raises(UsageError, match="not bound to a user"):
                call()
    s = backend.user()
    task = s.create_task(["dog"])
    s.close()  # a bound copy shares the server's connections: closing it leaves them open
    s.close()
    assert backend.server.for_user(str(s.user_id)).get(task.id).id == task.id
    assert s.get(task.id).id == task.id


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    local = store_from_settings(Settings(data_dir=tmp_path))
    s = Settings(data_dir=tmp_path, supabase_url="http://127.0.0.1:9", supabase_service_key="k", user_id=USER)
    supabase = store_from_settings(s)
    assert (local.name, supabase.name, supabase.user_id) == ("sqlite", "supabase", USER)
    for store in (local, supabase):
        store.close()
