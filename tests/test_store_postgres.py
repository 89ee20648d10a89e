"""What only the PostgreSQL store has, on a real, throw-away cluster (tests/_postgres.py) with supabase/migrations
applied: usage rows, uuids, the connection pool, concurrency (credits, projects, sweeps racing on row locks),
the task functions themselves, and that rows users write themselves (PostgREST, RLS) are never server tasks.
The behaviour every store shares (life cycle, users, projects, credits, the sweep) is in test_store.py."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

import _postgres  # noqa: E402
from _postgres import as_role, as_user, one  # noqa: E402
from s3seg.errors import CreditsError, ProjectNotFound, StoreError, TaskNotFound, UsageError  # noqa: E402
from s3seg.store import Task  # noqa: E402
from s3seg.store._postgres import PostgresStore  # noqa: E402

pytestmark = pytest.mark.integration

Conn = Any  # psycopg.Connection[tuple[Any, ...]]
STALE = "the worker running this task stopped responding"


@pytest.fixture(scope="module")
def admin(pg_admin: Conn) -> Conn:
    return pg_admin


@pytest.fixture(scope="module")
def store(pg: _postgres.Cluster) -> Iterator[PostgresStore]:
    """The server's store: not bound to a user, connected as the migration owner (bypasses RLS)."""
    s = PostgresStore(pg.dsn("postgres"), max_size=24)
    yield s
    s.close()


def new_user(admin: Conn, credits: int = 100) -> str:
    return str(_postgres.sign_up(admin, credits=credits))


def credits(admin: Conn, user: str) -> int:
    return one(admin, "select credits from public.users_profile where id = %s", user)  # type: ignore[no-any-return]


def usage(admin: Conn, user: str) -> list[tuple[str, int, dict[str, Any]]]:
    return admin.execute(  # type: ignore[no-any-return]
        "select action, credits_used, metadata from public.usage_logs where user_id = %s order by created_at", (user,)
    ).fetchall()


def finish(s: PostgresStore, task_id: str, **metadata: Any) -> Task:
    return s.finish(
        task_id, source="src.png", mask="mask.png", overlay="overlay.png", labels=["cat"], metadata=metadata
    )


def backdate(admin: Conn, task_ids: list[str], seconds: int = 3600) -> None:
    """Move updated_at into the past; the set_updated_at trigger is off for this transaction (superuser only)."""
    with admin.transaction():
        admin.execute("set local session_replication_role = replica")
        admin.execute(
            "update public.segmentation_results set updated_at = now() - make_interval(secs => %s) where id = any(%s)",
            (seconds, [uuid.UUID(t) for t in task_ids]),
        )


def run_together(n: int, fn: Callable[[int], Any]) -> list[tuple[str, Any]]:
    """fn(0..n-1) in n threads released at once; ('ok', result) or ('error', exception) each, in no order."""
    barrier = threading.Barrier(n)
    outcomes: list[tuple[str, Any]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            outcome: tuple[str, Any] = ("ok", fn(i))
        except BaseException as e:  # surfaced by the caller's assertions, not as a thread warning
            outcome = ("error", e)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return outcomes


# --- life cycle and credits ---------------------------------------------------------------------------------


def test_a_success_is_charged_once_and_logged(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 100)
    s = store.for_user(a)
    task = s.create_task(["cat", "dog"], cost=1, queue=True)
    assert credits(admin, a) == 100  # reserved, not charged
    failed = s.create_task(["cat"], cost=1, queue=True)
    s.fail(failed.id, "boom")  # a failure charges nothing and logs nothing
    s.start(task.id)
    finish(s, task.id, instances=1)
    assert s.account().credits == credits(admin, a) == 99
    assert usage(admin, a) == [("segmentation", 1, {"task_id": task.id})]
    for call in (lambda: finish(s, task.id), lambda: s.fail(task.id, "x"), lambda: s.start(task.id)):
        with pytest.raises(StoreError, match="is done; it cannot become"):
            call()
    assert credits(admin, a) == 99 and len(usage(admin, a)) == 1


def test_cost_zero_logs_a_zero_credit_usage_row(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 0)
    s = store.for_user(a)
    task = s.create_task(["cat"], queue=True)
    assert task.metadata["cost"] == 0
    s.start(task.id)
    assert finish(s, task.id).status == "done"
    assert credits(admin, a) == 0
    assert usage(admin, a) == [("segmentation", 0, {"task_id": task.id})]


def test_concurrent_creation_reserves_exactly_the_credits(pg: _postgres.Cluster, admin: Conn) -> None:
    """20 callers, each on its own pooled connection, queued on the profile lock at once, race for 5 credits."""
    a = new_user(admin, 5)
    n = 20
    own = PostgresStore(pg.dsn("postgres"), user_id=a, min_size=n, max_size=n)
    try:
        outcomes: list[tuple[str, Any]] = []

        def race() -> None:
            outcomes.extend(run_together(n, lambda i: own.create_task([f"cat {i}"], cost=1, queue=True)))

        racer = threading.Thread(target=race)
        with admin.transaction():  # hold the profile row so every caller queues on it, then let them all go
            admin.execute("select 1 from public.users_profile where id = %s for update", (a,))
            racer.start()
            deadline, waiting = time.monotonic() + 30, 0
            while time.monotonic() < deadline and waiting < n:
                admin.execute("select pg_stat_clear_snapshot()")  # the view is a snapshot per transaction
                waiting = one(
                    admin,
                    "select count(*) from pg_stat_activity where usename = 'postgres' and wait_event_type = 'Lock'",
                )
                time.sleep(0.02)
            assert waiting == n, f"only {waiting} of {n} callers reached the profile lock"
        racer.join(timeout=60)
        created = [o[1] for o in outcomes if o[0] == "ok"]
        refused = [o[1] for o in outcomes if o[0] == "error"]
        assert len(created) == 5
        assert len(refused) == n - 5
        assert all(isinstance(e, CreditsError) for e in refused), refused
        for task in created:
            own.start(task.id)
            finish(own, task.id)
        assert own.account().credits == 0
    finally:
        own.close()
    assert credits(admin, a) == 0
    assert sorted(u[2]["task_id"] for u in usage(admin, a)) == sorted(t.id for t in created)
    assert {u[1] for u in usage(admin, a)} == {1}


# --- users, ids, projects -----------------------------------------------------------------------------------


def test_user_ids_are_uuids_and_plain_rows_need_a_profile(admin: Conn, store: PostgresStore) -> None:
    with pytest.raises(UsageError, match="not a user id"):
        store.for_user("alice")
    a = new_user(admin)
    assert store.for_user(a.upper()).user_id == a  # normalised
    assert store.for_user(a).account().tier == "free"
    nobody = store.for_user(str(uuid.uuid4()))
    for call in (lambda: nobody.create_task(["cat"]), lambda: nobody.create_task(["c"], project="p")):
        with pytest.raises(StoreError, match="no profile for user") as exc:
            call()
        assert exc.value.hint


def test_close_releases_the_pool_once(pg: _postgres.Cluster, admin: Conn) -> None:
    own = PostgresStore(pg.dsn("postgres"))
    bound = own.for_user(new_user(admin))
    bound.close()  # not the pool's owner: the shared pool stays open
    assert bound.list() == [] and not own._pool.closed
    own.close()
    own.close()  # idempotent
    assert own._pool.closed
    with pytest.raises(StoreError):
        bound.list()


def test_a_new_project_created_by_many_callers_at_once_is_created_once(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin)
    sa = store.for_user(a)
    outcomes = run_together(8, lambda i: sa.create_task([f"x{i}"], project="gamma", queue=i % 2 == 0))
    assert {o[0] for o in outcomes} == {"ok"}, outcomes
    assert len({o[1].project_id for o in outcomes}) == 1
    assert one(admin, "select count(*) from public.projects where user_id = %s", a) == 1


def test_tasks_filed_under_a_project_id_at_once(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 10)
    sa = store.for_user(a)
    pid = sa.create_task(["cat"], project="alpha").project_id
    assert pid is not None
    assert sa.create_task(["cow"], project_id=pid.upper()).project_id == pid  # any spelling of the uuid
    outcomes = run_together(6, lambda i: sa.create_task([f"x{i}"], project_id=pid, queue=i % 2 == 0))
    assert {o[0] for o in outcomes} == {"ok"}, outcomes
    assert {o[1].project for o in outcomes} == {"alpha"}


def test_project_deleted_while_a_task_is_created_under_it(
    pg: _postgres.Cluster, admin: Conn, store: PostgresStore
) -> None:
    a = new_user(admin, 10)
    s = store.for_user(a)
    pid = s.create_task(["cat"], project="doomed").project_id
    assert pid is not None
    outcome: list[BaseException | Task] = []
    with psycopg.connect(pg.dsn(_postgres.SUPERUSER)) as deleter:  # deleting it, not committed yet
        deleter.execute("delete from public.projects where id = %s", (pid,))
        creator = threading.Thread(
            target=lambda: outcome.append(_attempt(lambda: s.create_task(["dog"], project_id=pid, cost=1, queue=True)))
        )
        creator.start()
        creator.join(1)
        assert creator.is_alive()  # the check waits for the deletion to end
        deleter.commit()
    creator.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ProjectNotFound), outcome
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", a) == 1


def _attempt(fn: Callable[[], Task]) -> BaseException | Task:
    try:
        return fn()
    except BaseException as e:
        return e


# --- the server's sweep -------------------------------------------------------------------------------------


def test_concurrent_requeue_moves_each_task_once(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 0)
    s = store.for_user(a)
    for _ in range(3):  # a few rounds, to give the sweeps a chance to interleave
        tasks = [s.start(s.create_task([f"t{i}"], queue=True).id) for i in range(30)]
        last = [s.start(s.create_task(["last"], queue=True).id).id for _ in range(10)]
        for task_id in last:  # already at the last attempt
            admin.execute(
                "update public.segmentation_results set metadata = metadata || '{\"attempts\": 3}' where id = %s",
                (task_id,),
            )
        backdate(admin, [t.id for t in tasks] + last)
        outcomes = run_together(4, lambda i: store.requeue_stale(older_than_s=60, max_attempts=3))
        assert {o[0] for o in outcomes} == {"ok"}, outcomes
        moved = [t.id for o in outcomes for t in o[1] if t.user_id == a]
        assert sorted(moved) == sorted(t.id for t in tasks)  # every one, none twice
        assert {t.status for t in s.list(limit=1000) if t.id in last} == {"error"}
        for pending in s.list(limit=1000, status="pending"):
            s.fail(pending.id, "done with it")


def test_requeue_skips_rows_another_sweep_holds(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 0)
    s = store.for_user(a)
    held, free = (s.start(s.create_task(["t"], queue=True).id).id for _ in range(2))
    backdate(admin, [held, free])
    with admin.transaction():
        admin.execute("select 1 from public.segmentation_results where id = %s for update", (held,))
        assert [t.id for t in store.requeue_stale(older_than_s=60, max_attempts=3) if t.user_id == a] == [free]
    assert [t.id for t in store.requeue_stale(older_than_s=60, max_attempts=3) if t.user_id == a] == [held]


# --- the SQL functions themselves, and failures ---------------------------------------------------------------


def test_task_functions_are_service_role_only(admin: Conn, pg: _postgres.Cluster) -> None:
    a = new_user(admin)
    calls = [
        "select public.create_segmentation_task(%s, 'cat', null, '{}', 0)",
        "select public.finish_segmentation_task(%s, 's', 'm', 'o', '[]', '{}')",
    ]
    with psycopg.connect(pg.dsn("authenticator"), autocommit=True) as api:
        for role in ("anon", "authenticated"):
            for call in calls:
                with pytest.raises(psycopg.errors.InsufficientPrivilege), as_role(api, role, {"sub": a}) as cur:
                    cur.execute(call, (a,))
        with as_role(api, "service_role") as cur:
            task = cur.execute(calls[0], (a,)).fetchone()[0]  # type: ignore[index]
            with pytest.raises(psycopg.Error) as exc:
                cur.execute(calls[1], (task,))
    assert (exc.value.sqlstate, exc.value.diag.message_primary) == ("PT409", "TASK_NOT_PROCESSING")
    assert exc.value.diag.message_detail == f"task {task} is pending; it cannot become done"
    refusals = [
        ("select public.create_segmentation_task(%s, 'c', null, '{}', -1)", a, "22023", "INVALID_AMOUNT"),
        (
            "select public.create_segmentation_task(%s, 'c', null, '{}', 1)",
            str(uuid.uuid4()),
            "PT404",
            "USER_NOT_FOUND",
        ),
        (
            "select public.finish_segmentation_task(%s, 's', 'm', 'o', '[]', '{}')",
            str(uuid.uuid4()),
            "PT404",
            "TASK_NOT_FOUND",
        ),
    ]
    for sql, arg, state, message in refusals:
        with pytest.raises(psycopg.Error) as exc, admin.transaction():
            admin.execute(sql, (arg,))
        assert (exc.value.sqlstate, exc.value.diag.message_primary) == (state, message)
    for fn in [
        "create_segmentation_task(uuid, text, uuid, jsonb, integer)",
        "finish_segmentation_task(uuid, text, text, text, jsonb, jsonb)",
    ]:
        row = admin.execute("select prosecdef, proconfig from pg_proc where oid = %s::regprocedure", (f"public.{fn}",))
        assert row.fetchone() == (True, ['search_path=""'])


def test_reservations_count_only_queued_tasks_and_ignore_bad_costs(admin: Conn, store: PostgresStore) -> None:
    """Queued rows whose cost is not a non-negative number reserve nothing; rows that are not queued (a user's own
    PostgREST insert) reserve nothing whatever their metadata says."""
    a = new_user(admin, 2)
    for meta in ['{"cost": -100}', '{"cost": "lots"}', "{}", '{"cost": 1}']:
        admin.execute(
            "insert into public.segmentation_results (user_id, text_prompt, metadata, queued) "
            "values (%s, 'x', %s, true)",
            (a, meta),
        )
    for meta in ['{"cost": 100}', '{"cost": 2}']:
        admin.execute(
            "insert into public.segmentation_results (user_id, text_prompt, metadata) values (%s, 'x', %s)", (a, meta)
        )
    s = store.for_user(a)
    s.create_task(["cat"], cost=1, queue=True)
    with pytest.raises(CreditsError, match="2 reserved"):
        s.create_task(["cat"], cost=1, queue=True)


# --- tasks that are not queued, and rows users write themselves --------------------------------------------


def test_unqueued_tasks_are_free_and_never_server_tasks(admin: Conn, store: PostgresStore) -> None:
    a = new_user(admin, 1)
    s = store.for_user(a)
    with pytest.raises(UsageError, match="credits are only reserved for queued tasks") as exc:
        s.create_task(["cat"], cost=1)
    assert exc.value.hint
    local = s.create_task(["cat"], project="p", metadata={"image_key": "k", "cost": 5, "attempts": 3})
    assert (local.status, local.project, local.metadata) == (
        "pending",
        "p",
        {"prompts": ["cat"], "image_key": "k", "cost": 0, "attempts": 0},
    )
    assert one(admin, "select queued from public.segmentation_results where id = %s", local.id) is False
    assert local.id not in {t.id for t in store.runnable(10_000)}
    queued = s.create_task(["dog"], cost=1, queue=True)  # the unqueued task reserved nothing
    assert one(admin, "select queued from public.segmentation_results where id = %s", queued.id) is True

    started = s.start(local.id)
    assert (started.status, started.metadata["attempts"]) == ("processing", 1)
    backdate(admin, [local.id])
    assert local.id not in {t.id for t in store.requeue_stale(older_than_s=60, max_attempts=1)}
    assert s.get(local.id).status == "processing"  # neither requeued nor failed

    done = finish(s, local.id, instances=2, cost=9, attempts=7)
    assert (done.status, done.mask_image_url, done.labels) == ("done", "mask.png", ["cat"])
    assert done.metadata == {"prompts": ["cat"], "image_key": "k", "cost": 0, "attempts": 1, "instances": 2}
    assert credits(admin, a) == 1
    assert usage(admin, a) == []  # no charge, no usage row
    with pytest.raises(StoreError, match=f"task {local.id} is done; it cannot become done"):
        finish(s, local.id)
    with pytest.raises(StoreError, match="is pending; it cannot become done"):
        finish(s, s.create_task(["owl"]).id)

    # The charging function refuses rows that are not server tasks.
    other = s.start(s.create_task(["cow"]).id)
    with pytest.raises(psycopg.Error) as err, admin.transaction():
        admin.execute("select public.finish_segmentation_task(%s, 's', 'm', 'o', '[]', '{}')", (other.id,))
    assert (err.value.sqlstate, err.value.diag.message_primary) == ("PT409", "TASK_NOT_QUEUED")
    assert err.value.diag.message_detail == (
        f"task {other.id} is not a server task (not created by create_segmentation_task); "
        "it cannot be finished and charged here"
    )
    assert s.get(other.id).status == "processing"
    assert credits(admin, a) == 1 and usage(admin, a) == []


def test_users_cannot_queue_or_change_server_tasks_through_the_api(
    admin: Conn, store: PostgresStore, pg: _postgres.Cluster
) -> None:
    a = new_user(admin, 2)
    s = store.for_user(a)
    server = s.create_task(["cat"], cost=1, queue=True)
    results = "public.segmentation_results"
    with psycopg.connect(pg.dsn("authenticator"), autocommit=True) as api:
        # A plain row (as the CLI records a locally-run result): allowed, and never queued.
        with as_user(api, a) as cur:
            own, queued = cur.execute(
                f"insert into {results} (user_id, text_prompt, status, metadata) "
                "values (%s, 'free ride', 'pending', '{\"cost\": 100, \"attempts\": 0}') returning id, queued",
                (a,),
            ).fetchone()
            assert queued is False
            stuck = str(
                cur.execute(
                    f"insert into {results} (user_id, text_prompt, status) values (%s, 'x', 'processing') returning id",
                    (a,),
                ).fetchone()[0]
            )
            own = str(own)
        # Setting queued is not theirs to do, on insert or update.
        refused = [
            (f"insert into {results} (user_id, text_prompt, queued) values (%s, 'x', true)", (a,)),
            (f"update {results} set queued = true where id = %s", (own,)),
            (f"update {results} set queued = false where id = %s", (server.id,)),
        ]
        for sql, params in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
                cur.execute(sql, params)
            assert "permission denied" in str(exc.value)
        # A server task is visible but cannot be changed at all (RLS: 0 rows).
        with as_user(api, a) as cur:
            assert cur.execute(f"select status, queued from {results} where id = %s", (server.id,)).fetchone() == (
                "pending",
                True,
            )
            for assignment in [
                "metadata = '{\"cost\": 0}'",
                "status = 'processing'",
                "status = 'error', error = 'x'",
                "text_prompt = 'dog'",
            ]:
                cur.execute(f"update {results} set {assignment} where id = %s", (server.id,))
                assert cur.rowcount == 0, assignment
            cur.execute(f"update {results} set text_prompt = 'mine' where id = %s", (own,))
            assert cur.rowcount == 1  # their own plain rows stay theirs to edit
        after = s.get(server.id)
        assert (after.status, after.metadata["cost"], after.text_prompt) == ("pending", 1, "cat")

        # Their rows are never run, requeued or reserved against.
        backdate(admin, [stuck])
        runnable = {t.id for t in store.runnable(10_000)}
        assert server.id in runnable
        assert own not in runnable
        assert stuck not in {t.id for t in store.requeue_stale(older_than_s=60, max_attempts=1)}
        assert one(admin, f"select status from {results} where id = %s", stuck) == "processing"
        s.create_task(["dog"], cost=1, queue=True)  # the 100-credit row reserves nothing
        with pytest.raises(CreditsError, match="has 2 credits, 2 reserved"):
            s.create_task(["owl"], cost=1, queue=True)

        # A running server task cannot be deleted by its user (RLS: 0 rows); once it has ended it can.
        s.start(server.id)
        with as_user(api, a) as cur:
            cur.execute(f"delete from {results} where id = %s", (server.id,))
            assert cur.rowcount == 0
        finish(s, server.id)
        with as_user(api, a) as cur:
            cur.execute(f"delete from {results} where id = %s", (server.id,))
            assert cur.rowcount == 1
    with pytest.raises(TaskNotFound):
        s.get(server.id)
    assert credits(admin, a) == 1 and len(usage(admin, a)) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_database(admin: Conn) -> None:
    url = f"postgresql://postgres:Sup3rS3cret@127.0.0.1:{_free_port()}/postgres?connect_timeout=5"
    with pytest.raises(StoreError) as exc:
        PostgresStore(url)
    assert exc.value.message.startswith("cannot reach the database")
    assert exc.value.hint == "check S3SEG_DATABASE_URL"
    assert "Sup3rS3cret" not in str(exc.value)
    assert exc.value.__cause__ is None  # the chained psycopg error is not shown either
    for bad in ["postgresql://postgres:Sup3rS3cret@127.0.0.1:notaport/x", "host=x password=Sup3rS3cret bogus"]:
        with pytest.raises(StoreError) as exc:
            PostgresStore(bad)
        assert "Sup3rS3cret" not in str(exc.value)
        assert exc.value.hint == "check S3SEG_DATABASE_URL"
