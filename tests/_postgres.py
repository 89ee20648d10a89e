"""A throw-away PostgreSQL cluster with a stand-in for what Supabase provides, and supabase/migrations applied.

    with postgres_cluster() as pg:                      # raises PostgresUnavailable without binaries
        with psycopg.connect(pg.dsn("authenticator"), autocommit=True) as conn:
            with as_user(conn, user_id) as cur:         # what PostgREST does for a request with a JWT
                cur.execute("select * from public.projects")

The binaries are found through $S3SEG_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/<newest>/bin
(Debian/Ubuntu: `apt-get install -y postgresql`) or `initdb` on PATH. initdb refuses to run as root, so as
root every server command runs as the `postgres` OS user (runuser). The cluster lives in a fresh temporary
directory, listens only on 127.0.0.1 on a free port (unix socket in the same directory), is stopped with
`pg_ctl stop -m fast` and deleted on exit, also when something fails.

Roles, as on a hosted Supabase project:
    supabase_admin       the superuser (the cluster's bootstrap user; not used by the tests' SQL)
    postgres             LOGIN, not superuser, BYPASSRLS: applies the migrations and owns what they create
    supabase_auth_admin  owns the auth schema; Supabase Auth (GoTrue) inserts into auth.users as this role
    authenticator        LOGIN NOINHERIT, member of anon/authenticated/service_role: PostgREST's login role
    anon, authenticated  NOLOGIN
    service_role         NOLOGIN BYPASSRLS
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
SUPERUSER = "supabase_admin"
DBNAME = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (or no way to run them); tests should skip, not fail."""


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    dbname: str
    data_dir: Path

    def dsn(self, user: str = "postgres") -> str:
        """libpq connection string for one of the LOGIN roles (trust authentication, no password)."""
        return f"host={self.host} port={self.port} dbname={self.dbname} user={user} connect_timeout=10"


# --- finding and running the binaries ---------------------------------------------------------------


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres, or PostgresUnavailable."""
    candidates: list[Path] = []
    if env := os.environ.get("S3SEG_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30)
            candidates.append(Path(out.stdout.strip()))

    def version(p: Path) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in p.parent.name.split("."))
        except ValueError:
            return (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for c in candidates:
        if all((c / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return c
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (set S3SEG_PG_BINDIR, or `apt-get install -y postgresql`)"
    )


def _run_prefix() -> list[str]:
    """initdb/postgres refuse to run as root: run them as the `postgres` OS user then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        runuser = None
    if runuser is None:
        raise PostgresUnavailable("running as root, but there is no `postgres` OS user or no runuser to switch to it")
    return [runuser, "-u", "postgres", "--"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --- the Supabase stand-in -------------------------------------------------------------------------

# STAND-IN for what a Supabase project already has (roles, the auth schema, auth.users, auth.uid(),
# auth.jwt(), default privileges). Test-only: the migrations must never create any of this.
SUPABASE_STANDIN_SQL = """
create role postgres login createrole createdb bypassrls;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
create role supabase_auth_admin login noinherit createrole;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;

-- public: the migration role creates objects there; the API roles may use it. Supabase's default
-- privileges hand every new table, function and sequence to the API roles, so RLS (and the migration's
-- own revokes) is what restricts them.
grant all on schema public to postgres with grant option;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on sequences to anon, authenticated, service_role;

-- auth: a minimal auth.users (the real one has many more columns) and Supabase's auth.uid() / auth.jwt()
-- / auth.role(), which read the claims PostgREST puts into request.jwt.claims.
create schema auth authorization supabase_auth_admin;
grant usage on schema auth to postgres, anon, authenticated, service_role;
set role supabase_auth_admin;
create table auth.users (
    id uuid primary key default gen_random_uuid(),
    email text,
    raw_user_meta_data jsonb,
    raw_app_meta_data jsonb,
    created_at timestamptz default now(),
    updated_at timestamptz default now()
);
create function auth.uid() returns uuid language sql stable as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;
create function auth.role() returns text language sql stable as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;
create function auth.jwt() returns jsonb language sql stable as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;
grant all on auth.users to postgres with grant option;
grant select on auth.users to service_role;
reset role;
"""


def _migration_files(migrations_dir: Path) -> list[Path]:
    files = sorted(migrations_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no migrations in {migrations_dir}")
    return files


def apply_migrations(dsn: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every *.sql in file-name order, one transaction per file, as the `postgres` role."""
    import psycopg

    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in _migration_files(migrations_dir):
            try:
                with conn.transaction():
                    conn.execute(path.read_text(encoding="utf-8"))  # no params: simple protocol, many statements
            except psycopg.Error as e:
                raise RuntimeError(f"migration {path.name} failed: {e}") from e
            applied.append(path.name)
    return applied


# --- the cluster -------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_cluster(migrations_dir: Path | None = MIGRATIONS_DIR) -> Iterator[Cluster]:
    """Start a throw-away cluster, install the Supabase stand-in, apply the migrations; stop and delete it on exit.

    migrations_dir=None skips the migrations. Raises PostgresUnavailable when the server cannot be run at all.
    """
    import psycopg

    bindir = find_bindir()
    prefix = _run_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="s3seg-pg-"))
    data = tmp / "data"
    log = tmp / "postgres.log"
    started = False
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"

    def run(*args: str, timeout: float = 120) -> None:
        # cwd: the postgres OS user may not be able to enter the caller's working directory.
        proc = subprocess.run(
            [*prefix, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{_tail(log)}"
            )

    try:
        if prefix:
            pw = pwd.getpwnam("postgres")
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
        tmp.chmod(0o700)
        initdb_args = ["-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
        run(str(bindir / "initdb"), *initdb_args)
        port = 0
        for attempt in range(3):  # the free port may be taken between probing and binding
            port = _free_port()
            opts = " ".join(
                f"-c {shlex.quote(o)}"
                for o in (
                    "listen_addresses=127.0.0.1",
                    f"port={port}",
                    f"unix_socket_directories={tmp}",
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                    "max_connections=60",
                    "shared_buffers=32MB",
                )
            )
            try:
                started = True  # from here on, always try to stop it
                run(str(bindir / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-l", str(log), "-o", opts)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        cluster = Cluster(host="127.0.0.1", port=port, dbname=DBNAME, data_dir=data)
        with psycopg.connect(cluster.dsn(SUPERUSER), autocommit=True) as conn:
            conn.execute(SUPABASE_STANDIN_SQL)
        if migrations_dir is not None:
            apply_migrations(cluster.dsn("postgres"), migrations_dir)
        yield cluster
    finally:
        try:
            if started:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    run(str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w", "-t", "60")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# --- requests as PostgREST makes them ----------------------------------------------------------------


@contextlib.contextmanager
def as_role(
    conn: psycopg.Connection[Any], role: str, claims: Mapping[str, Any] | None = None
) -> Iterator[psycopg.Cursor[Any]]:
    """One transaction as PostgREST runs a request: `set local role` + request.jwt.claims, then the caller's SQL.

    conn must be idle and not inside a transaction (use autocommit=True; a login role that is a member of
    `role`, e.g. authenticator). Commits on success, rolls back on an exception (which propagates).
    """
    from psycopg import pq, sql

    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise ValueError("as_role needs a connection outside any transaction (autocommit=True)")
    claims = dict(claims or {})
    claims.setdefault("role", role)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        cur.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        yield cur


@contextlib.contextmanager
def as_user(conn: psycopg.Connection[Any], user_id: object, **claims: Any) -> Iterator[psycopg.Cursor[Any]]:
    """as_role(conn, 'authenticated', {'sub': user_id, 'role': 'authenticated', ...}): a signed-in user's request."""
    with as_role(
        conn, "authenticated", {"sub": str(user_id), "role": "authenticated", "aud": "authenticated", **claims}
    ) as cur:
        yield cur


# --- what the tests do with a cluster ----------------------------------------------------------------


def sign_up(
    admin: psycopg.Connection[Any],
    *,
    meta: Mapping[str, Any] | None = None,
    app_meta: Mapping[str, Any] | None = None,
    credits: int | None = None,
) -> uuid.UUID:
    """Sign a user up the way Supabase Auth does (insert into auth.users as supabase_auth_admin; the
    migration's trigger creates the profile). ``meta`` is the user's own metadata (signUp options.data),
    ``app_meta`` what only admins set (e.g. the tier); ``credits`` then sets the profile's credits."""
    import psycopg

    def jsonb(d: Mapping[str, Any] | None) -> Any:
        return psycopg.types.json.Jsonb(dict(d)) if d is not None else None

    with admin.transaction():
        admin.execute("set local role supabase_auth_admin")
        row = admin.execute(
            "insert into auth.users (email, raw_user_meta_data, raw_app_meta_data) values (%s, %s, %s) returning id",
            (f"{uuid.uuid4().hex[:12]}@example.com", jsonb(meta), jsonb(app_meta)),
        ).fetchone()
    assert row is not None
    user: uuid.UUID = row[0]
    if credits is not None:
        admin.execute("update public.users_profile set credits = %s where id = %s", (credits, user))
    return user


def one(admin: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    """The first column of the first row (None when there is no row)."""
    row = admin.execute(query, params).fetchone()
    return None if row is None else row[0]
