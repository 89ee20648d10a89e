"""supabase/migrations on a real, throw-away PostgreSQL cluster (tests/_postgres.py): the schema, the signup
trigger, row-level security as PostgREST exercises it, and public.consume_credits under concurrency."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

import _postgres  # noqa: E402
from _postgres import as_role, as_user, one  # noqa: E402

pytestmark = pytest.mark.integration

Conn = Any  # psycopg.Connection[tuple[Any, ...]]


@pytest.fixture(scope="module")
def admin(pg_admin: Conn) -> Conn:
    return pg_admin


@pytest.fixture
def api(pg: _postgres.Cluster) -> Iterator[Conn]:
    """PostgREST's connection: the authenticator login role, switching role per request."""
    with psycopg.connect(pg.dsn("authenticator"), autocommit=True) as conn:
        yield conn


def new_user(admin: Conn, meta: dict[str, Any] | None = None, app_meta: dict[str, Any] | None = None) -> uuid.UUID:
    return _postgres.sign_up(admin, meta=meta, app_meta=app_meta)


def make_project(api: Conn, user: uuid.UUID, name: str = "p") -> uuid.UUID:
    with as_user(api, user) as cur:
        return cur.execute(  # type: ignore[no-any-return]
            "insert into public.projects (user_id, name) values (%s, %s) returning id", (user, name)
        ).fetchone()[0]


def make_result(api: Conn, user: uuid.UUID, project: uuid.UUID | None = None, **cols: Any) -> uuid.UUID:
    cols = {"user_id": user, "project_id": project, "text_prompt": "cat", **cols}
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    with as_user(api, user) as cur:
        return cur.execute(  # type: ignore[no-any-return]
            f"insert into public.segmentation_results ({names}) values ({marks}) returning id", tuple(cols.values())
        ).fetchone()[0]


def service_consume(
    api: Conn, user: uuid.UUID, amount: int | None, action: str = "segmentation", meta: Any = None
) -> int:
    with as_role(api, "service_role") as cur:
        if meta is None:
            row = cur.execute("select public.consume_credits(%s, %s, %s)", (user, amount, action)).fetchone()
        else:
            row = cur.execute(
                "select public.consume_credits(%s, %s, %s, %s)", (user, amount, action, psycopg.types.json.Jsonb(meta))
            ).fetchone()
    return row[0]  # type: ignore[no-any-return]


def assert_rls_violation(exc: pytest.ExceptionInfo[Any]) -> None:
    assert exc.value.sqlstate == "42501"
    assert "row-level security" in str(exc.value)


def assert_permission_denied(exc: pytest.ExceptionInfo[Any]) -> None:
    assert exc.value.sqlstate == "42501"
    assert "permission denied" in str(exc.value)


# --- the schema ----------------------------------------------------------------------------------------


def test_migrations_apply_and_enable_rls(admin: Conn) -> None:
    rows = admin.execute(
        "select c.relname, c.relrowsecurity, pg_get_userbyid(c.relowner) from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r' order by 1"
    ).fetchall()
    assert rows == [
        ("projects", True, "postgres"),
        ("segmentation_results", True, "postgres"),
        ("usage_logs", True, "postgres"),
        ("users_profile", True, "postgres"),
    ]
    fn = admin.execute(
        "select prosecdef, proconfig, pg_get_function_identity_arguments(oid), pg_get_function_result(oid) "
        "from pg_proc where oid = 'public.consume_credits(uuid, integer, text, jsonb)'::regprocedure"
    ).fetchone()
    assert fn == (
        True,
        ['search_path=""'],
        "p_user_id uuid, p_amount integer, p_action text, p_metadata jsonb",
        "integer",
    )
    assert one(admin, "select prosecdef from pg_proc where oid = 'public.handle_new_user()'::regprocedure") is True
    indexes = {r[0] for r in admin.execute("select indexname from pg_indexes where schemaname = 'public'").fetchall()}
    assert {
        "segmentation_results_user_id_created_at_idx",
        "segmentation_results_project_id_idx",
        "segmentation_results_active_status_idx",
        "usage_logs_user_id_created_at_idx",
        "projects_user_id_name_key",
    } <= indexes
    # Nothing Supabase provides was (re)created: auth holds only the stand-in's objects plus the trigger.
    auth_tables = (
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'auth'"
    )
    assert one(admin, auth_tables + " and c.relkind = 'r'") == 1
    assert one(admin, "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass and not tgisinternal") == (
        "on_auth_user_created"
    )


# --- signup trigger --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "app_meta", "tier", "display_name"),
    [
        ({"display_name": "Ada", "name": "ignored"}, {"tier": "pro"}, "pro", "Ada"),
        ({"name": "Grace"}, {"tier": "enterprise"}, "enterprise", "Grace"),
        ({"name": "Bob"}, {"tier": "platinum"}, "free", "Bob"),
        ({}, {"tier": 3}, "free", None),
        ({"tier": "pro", "name": "Mallory"}, None, "free", "Mallory"),  # users cannot pick their own tier
        ({}, {}, "free", None),
        (None, None, "free", None),
    ],
)
def test_signup_creates_profile(admin: Conn, meta: Any, app_meta: Any, tier: str, display_name: str | None) -> None:
    user = new_user(admin, meta, app_meta)
    row = admin.execute(
        "select tier, credits, display_name, created_at is not null from public.users_profile where id = %s", (user,)
    ).fetchone()
    assert row == (tier, 100, display_name, True)


# --- row-level security ---------------------------------------------------------------------------------


def test_profile_owner_only(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin, {"name": "A"}), new_user(admin, {"name": "B"})
    with as_user(api, a) as cur:
        assert cur.execute("select id from public.users_profile").fetchall() == [(a,)]
        cur.execute(
            "update public.users_profile set display_name = 'A2', avatar_url = 'https://x/a.png' where id = %s", (a,)
        )
        assert cur.rowcount == 1
        cur.execute("update public.users_profile set display_name = 'hacked' where id = %s", (b,))
        assert cur.rowcount == 0
    assert one(admin, "select display_name from public.users_profile where id = %s", b) == "B"
    assert one(admin, "select display_name from public.users_profile where id = %s", a) == "A2"
    # No delete / insert privilege on profiles at all (they come and go with auth.users).
    for stmt, params in [
        ("delete from public.users_profile where id = %s", (b,)),
        ("delete from public.users_profile where id = %s", (a,)),
        ("insert into public.users_profile (id) values (%s)", (uuid.uuid4(),)),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
            cur.execute(stmt, params)
        assert_permission_denied(exc)
    assert one(admin, "select count(*) from public.users_profile where id in (%s, %s)", a, b) == 2


@pytest.mark.parametrize(
    "assignment", ["tier = 'enterprise'", "credits = 1000000", "credits = credits + 1", "id = gen_random_uuid()"]
)
def test_user_cannot_change_tier_or_credits(admin: Conn, api: Conn, assignment: str) -> None:
    a = new_user(admin)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
        cur.execute(f"update public.users_profile set {assignment} where id = %s", (a,))
    assert_permission_denied(exc)
    assert admin.execute("select tier, credits from public.users_profile where id = %s", (a,)).fetchone() == (
        "free",
        100,
    )


def test_projects_owner_only(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin), new_user(admin)
    pa = make_project(api, a, "mine")
    pb = make_project(api, b, "theirs")
    make_project(api, b, "mine")  # names are unique per user only
    with as_user(api, a) as cur:
        assert cur.execute("select id from public.projects").fetchall() == [(pa,)]
        assert cur.execute("select id from public.projects where id = %s", (pb,)).fetchall() == []
        cur.execute("update public.projects set name = 'stolen' where id = %s", (pb,))
        assert cur.rowcount == 0
        cur.execute("delete from public.projects where id = %s", (pb,))
        assert cur.rowcount == 0
        cur.execute("update public.projects set description = 'd' where id = %s", (pa,))
        assert cur.rowcount == 1
    assert one(admin, "select name from public.projects where id = %s", pb) == "theirs"
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
        cur.execute("insert into public.projects (user_id, name) values (%s, 'x')", (b,))
    assert_rls_violation(exc)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:  # give it away
        cur.execute("update public.projects set user_id = %s where id = %s", (b, pa))
    assert_rls_violation(exc)
    with pytest.raises(psycopg.errors.UniqueViolation), as_user(api, a) as cur:
        cur.execute("insert into public.projects (user_id, name) values (%s, 'mine')", (a,))
    with as_user(api, a) as cur:
        cur.execute("delete from public.projects where id = %s", (pa,))
        assert cur.rowcount == 1


def test_results_owner_only(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin), new_user(admin)
    pa, pb = make_project(api, a), make_project(api, b)
    ra = make_result(api, a, pa)
    rb = make_result(api, b, pb)
    with as_user(api, a) as cur:
        assert cur.execute("select id, status, labels, metadata from public.segmentation_results").fetchall() == [
            (ra, "pending", [], {})
        ]
        cur.execute("update public.segmentation_results set status = 'done' where id = %s", (rb,))
        assert cur.rowcount == 0
        cur.execute("delete from public.segmentation_results where id = %s", (rb,))
        assert cur.rowcount == 0
        cur.execute("update public.segmentation_results set status = 'processing' where id = %s", (ra,))
        assert cur.rowcount == 1
    assert one(admin, "select status from public.segmentation_results where id = %s", rb) == "pending"
    # Another user's id, or one's own id with another user's project: refused by RLS.
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        make_result(api, a, None, user_id=b)
    assert_rls_violation(exc)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
        make_result(api, a, pb)
    assert_rls_violation(exc)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
        cur.execute("update public.segmentation_results set project_id = %s where id = %s", (pb, ra))
    assert_rls_violation(exc)
    # The composite foreign key holds even for service_role (which bypasses RLS).
    with pytest.raises(psycopg.errors.ForeignKeyViolation), as_role(api, "service_role") as cur:
        cur.execute("insert into public.segmentation_results (user_id, project_id) values (%s, %s)", (a, pb))
    with as_user(api, a) as cur:
        cur.execute("delete from public.segmentation_results where id = %s", (ra,))
        assert cur.rowcount == 1


def test_usage_logs_read_own_only(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin), new_user(admin)
    service_consume(api, a, 3)
    service_consume(api, b, 4, "upload")
    with as_user(api, a) as cur:
        assert cur.execute("select user_id, action, credits_used from public.usage_logs").fetchall() == [
            (a, "segmentation", 3)
        ]
    for stmt, params in [
        ("insert into public.usage_logs (user_id, action, credits_used) values (%s, 'upload', 0)", (a,)),
        ("update public.usage_logs set credits_used = 0 where user_id = %s", (a,)),
        ("delete from public.usage_logs where user_id = %s", (a,)),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_user(api, a) as cur:
            cur.execute(stmt, params)
        assert_permission_denied(exc)
    assert one(admin, "select sum(credits_used) from public.usage_logs where user_id in (%s, %s)", a, b) == 7


@pytest.mark.parametrize("table", ["users_profile", "projects", "segmentation_results", "usage_logs"])
def test_anon_gets_nothing(admin: Conn, api: Conn, table: str) -> None:
    a = new_user(admin)
    make_result(api, a, make_project(api, a))
    service_consume(api, a, 1)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_role(api, "anon") as cur:
        cur.execute(f"select * from public.{table}")
    assert_permission_denied(exc)
    # And were it granted, no policy lets anon see a row.
    with admin.transaction():
        admin.execute(f"grant select on public.{table} to anon")
        admin.execute("set local role anon")
        admin.execute("select set_config('request.jwt.claims', '{\"role\": \"anon\"}', true)")
        assert one(admin, f"select count(*) from public.{table}") == 0
        raise psycopg.Rollback()
    assert one(admin, "select has_table_privilege('anon', %s, 'select')", f"public.{table}") is False


def test_authenticated_without_sub_sees_nothing(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    make_project(api, a)
    with as_role(api, "authenticated") as cur:
        assert cur.execute("select count(*) from public.projects").fetchone() == (0,)
        assert cur.execute("select count(*) from public.users_profile").fetchone() == (0,)


def test_service_role_sees_and_changes_everything(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin), new_user(admin)
    make_result(api, a, make_project(api, a))
    make_result(api, b, None)
    service_consume(api, b, 2)
    with as_role(api, "service_role") as cur:
        for table, expected in [("users_profile", 2), ("projects", 1), ("segmentation_results", 2), ("usage_logs", 1)]:
            column = "id" if table == "users_profile" else "user_id"
            got = cur.execute(f"select count(*) from public.{table} where {column} in (%s, %s)", (a, b)).fetchone()
            assert got == (expected,), table
        cur.execute("update public.users_profile set tier = 'pro', credits = 500 where id = %s", (a,))
        assert cur.rowcount == 1
    assert admin.execute("select tier, credits from public.users_profile where id = %s", (a,)).fetchone() == (
        "pro",
        500,
    )


# --- constraints, triggers, cascades ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cols", "ok"),
    [
        ({"status": "done"}, True),
        ({"status": "error", "error": "CUDA out of memory"}, True),
        ({"status": "bogus"}, False),
        ({"status": "error"}, False),  # error status needs a message
        ({"status": "done", "error": "stale"}, False),  # a message needs the error status
        ({"status": "pending", "error": "x"}, False),
        ({"labels": psycopg.types.json.Jsonb({"not": "an array"})}, False),
    ],
)
def test_result_checks(admin: Conn, api: Conn, cols: dict[str, Any], ok: bool) -> None:
    a = new_user(admin)
    if ok:
        make_result(api, a, None, **cols)
    else:
        with pytest.raises(psycopg.errors.CheckViolation):
            make_result(api, a, None, **cols)


def test_status_and_error_move_together(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    r = make_result(api, a)
    with pytest.raises(psycopg.errors.CheckViolation), as_user(api, a) as cur:
        cur.execute("update public.segmentation_results set status = 'error' where id = %s", (r,))
    with as_user(api, a) as cur:
        cur.execute("update public.segmentation_results set status = 'error', error = 'boom' where id = %s", (r,))
        cur.execute("update public.segmentation_results set status = 'pending', error = null where id = %s", (r,))
        assert cur.rowcount == 1


def test_profile_checks(admin: Conn) -> None:
    a = new_user(admin)
    with pytest.raises(psycopg.errors.CheckViolation), admin.transaction():
        admin.execute("update public.users_profile set credits = -1 where id = %s", (a,))
    with pytest.raises(psycopg.errors.CheckViolation), admin.transaction():
        admin.execute("update public.users_profile set tier = 'gold' where id = %s", (a,))
    with pytest.raises(psycopg.errors.CheckViolation), admin.transaction():
        admin.execute("insert into public.usage_logs (user_id, action, credits_used) values (%s, 'upload', -1)", (a,))
    with pytest.raises(psycopg.errors.CheckViolation), admin.transaction():
        admin.execute("insert into public.usage_logs (user_id, action, credits_used) values (%s, 'download', 1)", (a,))


def test_updated_at_changes_on_update(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    p = make_project(api, a)
    r = make_result(api, a, p)
    targets = [
        ("users_profile", "id", a, "display_name = 'n'"),
        ("projects", "id", p, "description = 'd'"),
        ("segmentation_results", "id", r, "status = 'done'"),
    ]
    before = {
        t: admin.execute(f"select created_at, updated_at from public.{t} where {k} = %s", (v,)).fetchone()
        for t, k, v, _ in targets
    }
    time.sleep(0.01)
    with as_user(api, a) as cur:
        for t, k, v, assignment in targets:
            cur.execute(f"update public.{t} set {assignment} where {k} = %s", (v,))
            assert cur.rowcount == 1
    for t, k, v, _ in targets:
        created, updated = admin.execute(
            f"select created_at, updated_at from public.{t} where {k} = %s", (v,)
        ).fetchone()
        assert created == before[t][0], t
        assert updated > before[t][1], t


def test_deleting_project_keeps_results(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    p = make_project(api, a)
    r = make_result(api, a, p)
    with as_user(api, a) as cur:
        cur.execute("delete from public.projects where id = %s", (p,))
        assert cur.rowcount == 1
        assert cur.execute(
            "select user_id, project_id from public.segmentation_results where id = %s", (r,)
        ).fetchone() == (a, None)


def test_deleting_auth_user_cascades(admin: Conn, api: Conn) -> None:
    a, b = new_user(admin), new_user(admin)
    make_result(api, a, make_project(api, a))
    make_result(api, a, None)
    make_project(api, b)
    service_consume(api, a, 1)
    with admin.transaction():
        admin.execute("set local role supabase_auth_admin")
        admin.execute("delete from auth.users where id = %s", (a,))
    counts = admin.execute(
        "select (select count(*) from public.users_profile where id = %(u)s),"
        " (select count(*) from public.projects where user_id = %(u)s),"
        " (select count(*) from public.segmentation_results where user_id = %(u)s),"
        " (select count(*) from public.usage_logs where user_id = %(u)s)",
        {"u": a},
    ).fetchone()
    assert counts == (0, 0, 0, 0)
    assert one(admin, "select count(*) from public.projects where user_id = %s", b) == 1


# --- consume_credits --------------------------------------------------------------------------------------


def test_consume_credits_deducts_and_logs(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    assert service_consume(api, a, 30, "segmentation", {"result_id": "r1"}) == 70
    assert service_consume(api, a, 70, "upload") == 0
    assert one(admin, "select credits from public.users_profile where id = %s", a) == 0
    logs = admin.execute(
        "select action, credits_used, metadata from public.usage_logs where user_id = %s order by credits_used", (a,)
    ).fetchall()
    assert logs == [("segmentation", 30, {"result_id": "r1"}), ("upload", 70, {})]


@pytest.mark.parametrize(
    ("amount", "action", "user", "sqlstate", "message"),
    [
        (0, "segmentation", "known", "22023", "INVALID_AMOUNT"),
        (-5, "segmentation", "known", "22023", "INVALID_AMOUNT"),
        (None, "segmentation", "known", "22023", "INVALID_AMOUNT"),
        (1, "download", "known", "22023", "INVALID_ACTION"),
        (101, "segmentation", "known", "PT402", "INSUFFICIENT_CREDITS"),
        (1, "segmentation", "unknown", "PT404", "USER_NOT_FOUND"),
    ],
)
def test_consume_credits_refusals(
    admin: Conn, api: Conn, amount: int | None, action: str, user: str, sqlstate: str, message: str
) -> None:
    a = new_user(admin)
    target = a if user == "known" else uuid.uuid4()
    with pytest.raises(psycopg.Error) as exc:
        service_consume(api, target, amount, action)
    assert exc.value.sqlstate == sqlstate
    assert exc.value.diag.message_primary == message
    assert one(admin, "select credits from public.users_profile where id = %s", a) == 100
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", a) == 0


def test_insufficient_credits_detail(admin: Conn, api: Conn) -> None:
    a = new_user(admin)
    with pytest.raises(psycopg.Error) as exc:
        service_consume(api, a, 250)
    assert exc.value.diag.message_detail == f"user {a} has 100 credits, 250 required"


@pytest.mark.parametrize("role", ["authenticated", "anon"])
def test_only_service_role_may_consume_credits(admin: Conn, api: Conn, role: str) -> None:
    a = new_user(admin)
    for fn in ["public.consume_credits(%s, 1, 'segmentation')", "public.consume_credits(%s, 1, 'upload', '{}')"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc, as_role(api, role, {"sub": str(a)}) as cur:
            cur.execute(f"select {fn}", (a,))
        assert_permission_denied(exc)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(api, a) as cur:
        cur.execute("select public.handle_new_user()")
    assert one(admin, "select credits from public.users_profile where id = %s", a) == 100


def test_consume_credits_concurrent(pg: _postgres.Cluster, admin: Conn) -> None:
    """20 service_role callers, each on its own connection, race for 5 credits: exactly 5 win."""
    a = new_user(admin)
    admin.execute("update public.users_profile set credits = 5 where id = %s", (a,))
    n = 20
    conns = [psycopg.connect(pg.dsn("authenticator"), autocommit=True) for _ in range(n)]
    outcomes: list[tuple[str, Any, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n + 1)

    def worker(conn: Conn) -> None:
        try:
            barrier.wait(timeout=30)
            with as_role(conn, "service_role") as cur:
                row = cur.execute("select public.consume_credits(%s, 1, 'segmentation')", (a,)).fetchone()
            outcome: tuple[str, Any, Any] = ("ok", row[0], None)
        except psycopg.Error as e:
            outcome = ("error", e.sqlstate, e.diag.message_primary)
        except BaseException as e:  # surfaced by the assertions below, not as a thread warning
            outcome = ("crash", repr(e), None)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    try:
        # Hold the profile row so that every caller is queued on it at once, then let them go.
        with admin.transaction():
            admin.execute("select 1 from public.users_profile where id = %s for update", (a,))
            for t in threads:
                t.start()
            barrier.wait(timeout=30)
            deadline = time.monotonic() + 30
            waiting = 0
            while time.monotonic() < deadline:
                waiting = one(
                    admin,
                    "select count(*) from pg_stat_activity"
                    " where usename = 'authenticator' and wait_event_type = 'Lock'",
                )
                if waiting == n:
                    break
                time.sleep(0.02)
            assert waiting == n, f"only {waiting} of {n} callers reached the row lock"
        for t in threads:
            t.join(timeout=60)
    finally:
        for c in conns:
            c.close()
    assert not any(t.is_alive() for t in threads)
    ok = sorted(o[1] for o in outcomes if o[0] == "ok")
    failed = [o for o in outcomes if o[0] != "ok"]
    assert ok == [0, 1, 2, 3, 4]
    assert failed == [("error", "PT402", "INSUFFICIENT_CREDITS")] * (n - 5)
    assert one(admin, "select credits from public.users_profile where id = %s", a) == 0
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", a) == 5
    assert one(admin, "select sum(credits_used) from public.usage_logs where user_id = %s", a) == 5
