"""What the Supabase store sends to Supabase's REST API (PostgREST), request by request: paths, filters, headers
and bodies, the SQL functions it calls, and how it treats answers and refusals (the shared behaviour of every store
is in test_store.py). PostgREST cannot run here: tests/_postgrest.py stands in for it (see its docstring)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from _postgrest import OTHER, URL, USER, PostgREST, filters, jwt, supabase_store
from s3seg.config import Settings
from s3seg.errors import CreditsError, ProjectNotFound, UsageError
from s3seg.store import Account, StoreError, TaskNotFound, store_from_settings
from s3seg.store._supabase import SupabaseStore


@pytest.fixture
def postgrest() -> PostgREST:
    return PostgREST()


def test_supabase_user_token_requests(postgrest: PostgREST) -> None:
    store, http = supabase_store(postgrest, access_token=jwt(USER))
    with http:
        task = store.create_task(["dog"], project="pets")
        assert task.status == "pending" and store.user_id == USER
        create_project, insert, select = postgrest.requests[-3:]
        assert json.loads(create_project.content) == {"user_id": USER, "name": "pets"}
        body = json.loads(insert.content)  # the credit functions are service_role only: the row itself
        assert body["user_id"] == USER and body["project_id"] == task.project_id and body["status"] == "pending"
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
        assert filters(patch) == {
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
            assert r.headers["authorization"] == f"Bearer {jwt(USER)}" and r.headers["apikey"] == "anon-key"
            assert not r.url.path.startswith("/rest/v1/rpc/")
        with pytest.raises(UsageError, match="queued tasks need the service key"):
            store.create_task(["dog"], cost=1, queue=True)
        with pytest.raises(UsageError, match="only reserved for queued tasks"):
            store.create_task(["dog"], cost=1)
        with pytest.raises(UsageError, match="cannot act for user"):
            store.for_user(OTHER)
        assert store.for_user(USER).user_id == USER


def test_supabase_service_key_creates_and_finishes_through_the_sql_functions(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
            "p_project_id": task.project_id,
            "p_cost": 2,
            "p_metadata": {"prompts": ["dog", "cat"], "image": "a.jpg"},
        }
        assert filters(select)["id"] == [f"eq.{task.id}"] and filters(select)["user_id"] == [f"eq.{USER}"]
        assert task.metadata["cost"] == 2 and task.user_id == USER
        for r in postgrest.requests:
            assert r.headers["apikey"] == "service-key" and r.headers["authorization"] == "Bearer service-key"

        assert store.start(task.id).metadata["attempts"] == 1
        assert filters(postgrest.requests[-2])["user_id"] == [f"eq.{USER}"]
        done = store.finish(
            task.id,
            source="k/s.jpg",
            mask="k/m.png",
            overlay="k/o.jpg",
            labels=[{"label": "dog"}],
            metadata={"instances": 1, "cost": 0},
        )
        owner, rpc, _ = postgrest.requests[-3:]
        assert filters(owner)["user_id"] == [f"eq.{USER}"]  # the function does not know the caller: checked first
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
        assert filters(patch) == {
            "id": [f"eq.{other.id}"],
            "user_id": [f"eq.{USER}"],
            "status": ["in.(pending,processing)"],
        }


def test_supabase_plain_rows_are_written_directly_and_cost_nothing(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
        assert patch.method == "PATCH" and filters(patch)["status"] == ["in.(processing)"]
        assert filters(patch)["user_id"] == [f"eq.{USER}"]
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
    store, http = supabase_store(postgrest, access_token=jwt(USER))
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
    server, http = supabase_store(postgrest, key="service-key")
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
        assert sent and all(filters(r)["user_id"] == [f"eq.{USER}"] for r in sent)
        assert not any(r.url.path.startswith("/rest/v1/rpc/") for r in sent)
        assert theirs["status"] == "processing" and postgrest.profiles[OTHER]["credits"] == 100  # untouched
        assert server.for_user(OTHER).get(theirs["id"]).user_id == OTHER


def test_supabase_account(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
    with http:
        assert server.for_user(USER).account() == Account(USER, tier="pro", credits=5)
        q = filters(postgrest.requests[-1])
        assert postgrest.requests[-1].url.path == "/rest/v1/users_profile"
        assert q["id"] == [f"eq.{USER}"] and q["select"] == ["id,tier,credits"]
        nobody = str(uuid.uuid4())
        with pytest.raises(StoreError, match=f"no profile for user {nobody}"):
            server.for_user(nobody).account()
        with pytest.raises(UsageError, match="not a user id"):
            server.for_user("nobody")


def test_supabase_tasks_filed_under_a_project_id(postgrest: PostgREST) -> None:
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    postgrest.projects = {
        mine: {"id": mine, "user_id": USER, "name": "pets"},
        theirs: {"id": theirs, "user_id": OTHER, "name": "farm"},
    }
    server, http = supabase_store(postgrest, key="service-key")
    with http:
        store = server.for_user(USER)
        task = store.create_task(["dog"], project_id=mine, cost=1, queue=True)
        lookup, rpc, _ = postgrest.requests[-3:]
        assert (lookup.method, lookup.url.path) == ("GET", "/rest/v1/projects")
        assert filters(lookup) == {"select": ["id"], "id": [f"eq.{mine}"], "user_id": [f"eq.{USER}"], "limit": ["1"]}
        assert rpc.url.path == "/rest/v1/rpc/create_segmentation_task"
        assert json.loads(rpc.content)["p_project_id"] == mine
        assert (task.project_id, task.project) == (mine, "pets")

        before = (len(postgrest.requests), len(postgrest.rows))
        with pytest.raises(ProjectNotFound, match=f"no project {theirs}") as e:  # another user's: not found
            store.create_task(["dog"], project_id=theirs, cost=1, queue=True)
        assert e.value.hint == "list your projects, or pass a project name"
        sent = postgrest.requests[before[0] :]
        assert [(r.method, r.url.path) for r in sent] == [("GET", "/rest/v1/projects")]
        assert filters(sent[0])["user_id"] == [f"eq.{USER}"] and len(postgrest.rows) == before[1]
        for bad in ("not-a-uuid", ""):  # refused before asking (PostgREST would answer 400 for a uuid column)
            with pytest.raises(ProjectNotFound, match=f"no project {bad}"):
                store.create_task(["dog"], project_id=bad, queue=True)
        with pytest.raises(UsageError, match="not both"):
            store.create_task(["dog"], project="pets", project_id=mine)
        assert len(postgrest.requests) == before[0] + 1 and len(postgrest.rows) == before[1]

    user, http = supabase_store(postgrest, access_token=jwt(USER))
    with http:
        plain = user.create_task(["cat"], project_id=mine)
        lookup, insert, _ = postgrest.requests[-3:]
        assert filters(lookup)["id"] == [f"eq.{mine}"] and filters(lookup)["user_id"] == [f"eq.{USER}"]
        assert json.loads(insert.content)["project_id"] == mine
        assert (plain.project_id, plain.project) == (mine, "pets")
        with pytest.raises(ProjectNotFound, match=f"no project {theirs}"):
            user.create_task(["cat"], project_id=theirs)
        assert len(postgrest.rows) == 2 and len(postgrest.projects) == 2  # no task, no project made


def test_supabase_credit_and_state_errors(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
        nobody = str(uuid.uuid4())
        with pytest.raises(StoreError, match=f"no profile for user {nobody}") as e:
            server.for_user(nobody).create_task(["dog"], queue=True)
        assert not isinstance(e.value, TaskNotFound)
        with pytest.raises(UsageError, match="cost must be >= 0"):
            store.create_task(["dog"], cost=-1, queue=True)


def test_supabase_start_is_taken_once(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
    unbound = store_from_settings(s)
    assert unbound.user_id is None  # a server's store: no S3SEG_USER_ID needed any more
    unbound.close()
    server, http = supabase_store(postgrest, key="service-key")
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
        q = filters(postgrest.requests[-1])
        assert q["status"] == ["eq.pending"] and q["queued"] == ["eq.true"]
        assert q["order"] == ["created_at.asc"] and q["limit"] == ["10"]
        assert "user_id" not in q


def test_supabase_requeue_stale(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
        q = filters(select)
        assert q["status"] == ["eq.processing"] and q["queued"] == ["eq.true"] and q["updated_at"][0].startswith("lt.")
        cutoff = datetime.fromisoformat(q["updated_at"][0].removeprefix("lt."))
        assert abs((datetime.now(timezone.utc) - cutoff).total_seconds() - 600) < 60
        assert filters(patch1) == {
            "id": [f"eq.{retry['id']}"],
            "status": ["eq.processing"],
            "updated_at": [f"eq.{long_ago}"],
        }
        assert json.loads(patch1.content) == {"status": "pending"}
        assert json.loads(patch2.content)["status"] == "error"
        assert filters(reread)["id"] == [f"in.({retry['id']})"]
        assert server.requeue_stale(older_than_s=600, max_attempts=2) == []


def test_supabase_requeue_by_another_server_is_not_repeated(postgrest: PostgREST) -> None:
    server, http = supabase_store(postgrest, key="service-key")
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
    store, http = supabase_store(postgrest, access_token=jwt(USER))
    with http:
        store.list(project="pets", status="done", limit=10, offset=20)
        q = filters(postgrest.requests[-1])
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
        store = SupabaseStore(URL, "anon-key", access_token=jwt(USER), http=http)
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
        store = SupabaseStore(URL, "service-key", user_id=OTHER, http=http)
        with pytest.raises(StoreError, match=f"no profile for the user .*{OTHER}"):
            store.create_task(["dog"])

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    http = httpx.Client(transport=httpx.MockTransport(down))
    with http:
        store = SupabaseStore(URL, "anon-key", access_token=jwt(USER), http=http)
        with pytest.raises(StoreError, match="cannot reach Supabase"):
            store.get(str(uuid.uuid4()))


def test_supabase_access_token_must_be_a_jwt() -> None:
    with pytest.raises(UsageError, match="not a JWT"):
        SupabaseStore(URL, "anon", access_token="garbage")


def test_closing_releases_the_http_client_the_store_made(postgrest: PostgREST) -> None:
    own = SupabaseStore(URL, "service-key")  # no client given: the store makes (and owns) one
    bound = own.for_user(USER)
    bound.close()  # a bound copy shares it: still open
    assert not own._http.is_closed
    own.close()
    own.close()  # idempotent
    assert own._http.is_closed and bound._http is own._http
    given, http = supabase_store(postgrest, key="service-key")
    with http:
        given.close()  # the caller's client stays the caller's
        assert not http.is_closed
