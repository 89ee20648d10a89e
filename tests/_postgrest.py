"""A stand-in for PostgREST, Supabase's REST API, for the Supabase store's tests.

PostgREST cannot run here (no binary, no Docker), so `PostgREST` answers supabase-py's requests through an
`httpx.MockTransport` and records them, so that tests can assert exactly what was sent (paths, filters, headers,
bodies). It mimics only what the store relies on — filters (eq, in, lt; the ``projects!inner(name)`` join with
``projects.name``), order/limit/offset, the trigger that sets ``updated_at`` on every update, RLS hiding server
tasks from a user's updates, the 400 for a malformed uuid, and the error contract of create_segmentation_task and
finish_segmentation_task (supabase/migrations/20261122010000_segmentation_tasks.sql). The SQL itself — RLS,
triggers, credits — runs on a real PostgreSQL in test_migrations.py and test_store_postgres.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from s3seg.store._supabase import SupabaseStore

URL = "http://127.0.0.1:54321"
USER = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-8888-7777-6666-555555555555"
ROW = {
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
}
_QUERY_PARAMS = ("select", "order", "limit", "offset")
_UUID_COLUMNS = ("id", "user_id", "project_id")


def failure(status: int, code: str, message: str, details: str | None) -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "details": details, "hint": None})


class PostgREST:
    """``interleave`` runs once before the next write: what another client does between a read and a write.
    Times are this machine's clock (each event a millisecond after the last, so they are all distinct)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.rows: dict[str, dict[str, Any]] = {}
        self.projects: dict[str, dict[str, Any]] = {}
        self.profiles = {
            USER: {"id": USER, "tier": "pro", "credits": 5},
            OTHER: {"id": OTHER, "tier": "free", "credits": 100},
        }
        self.start = datetime.now(timezone.utc).replace(microsecond=123456)
        self.clock = 0
        self.interleave: Any = None

    def now(self) -> str:
        self.clock += 1
        return (self.start + timedelta(milliseconds=self.clock)).isoformat()

    def add(self, **values: Any) -> dict[str, Any]:
        now = self.now()
        row = {**ROW, "id": str(uuid.uuid4()), "created_at": now, "updated_at": now, **values}
        self.rows[row["id"]] = row
        return row

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = urlsplit(str(request.url))
        query = parse_qs(url.query)
        path = url.path.removeprefix("/rest/v1/")
        body: Any = json.loads(request.content) if request.content else None
        if bad := _malformed_uuid(query):
            return failure(400, "22P02", f'invalid input syntax for type uuid: "{bad}"', None)
        if request.method != "GET" and self.interleave is not None:
            interleave, self.interleave = self.interleave, None
            interleave()
        if path == "rpc/create_segmentation_task":
            return self._create(body)
        if path == "rpc/finish_segmentation_task":
            return self._finish(body)
        if path == "projects":
            if request.method == "GET":
                return _page([p for p in self.projects.values() if _matches(p, query)], query)
            project = {"id": str(uuid.uuid4()), **body}
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
        if "projects!inner(name)" in query.get("select", [""])[0]:  # the inner join: only rows with that project
            wanted = [c.removeprefix("eq.") for c in query.get("projects.name", [])]
            rows = [r for r in rows if r["projects"] and (not wanted or r["projects"]["name"] in wanted)]
        return _page(rows, query)

    def _embed(self, row: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        """The row as read, with ``projects(name)`` joined in when the select asks for it."""
        if "(name)" not in query.get("select", [""])[0]:
            return row
        project = self.projects.get(row.get("project_id") or "")
        return {**row, "projects": {"name": project["name"]} if project else None}

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        user, cost = body["p_user_id"], body["p_cost"]
        profile = self.profiles.get(user)
        if profile is None:
            return failure(404, "PT404", "USER_NOT_FOUND", f"no profile for user {user}")
        reserved = sum(
            r["metadata"].get("cost", 0)
            for r in self.rows.values()
            if r["user_id"] == user and r["status"] in ("pending", "processing") and r["queued"]
        )
        if cost > 0 and profile["credits"] - reserved < cost:
            return failure(
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
            return failure(404, "PT404", "TASK_NOT_FOUND", f"no task {body['p_task_id']}")
        if not row["queued"]:
            return failure(409, "PT409", "TASK_NOT_QUEUED", f"task {row['id']} is not a server task")
        if row["status"] != "processing":
            return failure(
                409, "PT409", "TASK_NOT_PROCESSING", f"task {row['id']} is {row['status']}; it cannot become done"
            )
        profile = self.profiles[row["user_id"]]
        if profile["credits"] < row["metadata"]["cost"]:
            return failure(
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


def _page(rows: list[dict[str, Any]], query: dict[str, list[str]]) -> httpx.Response:
    if "order" in query:
        column, _, direction = query["order"][0].partition(".")
        rows = sorted(rows, key=lambda r: r[column], reverse=direction == "desc")
    start = int(query.get("offset", ["0"])[0])
    end = start + int(query["limit"][0]) if "limit" in query else None
    return httpx.Response(200, json=rows[start:end])


def _malformed_uuid(query: dict[str, list[str]]) -> str | None:
    """A value in an eq/in filter on a uuid column that is not a uuid (PostgREST answers 400, 22P02)."""
    for column in _UUID_COLUMNS:
        for condition in query.get(column, []):
            op, _, arg = condition.partition(".")
            values = arg.removeprefix("(").removesuffix(")").split(",") if op == "in" else [arg]
            for value in values if op in ("eq", "in") else []:
                try:
                    uuid.UUID(value)
                except ValueError:
                    return value
    return None


def _matches(row: dict[str, Any], query: dict[str, list[str]]) -> bool:
    for column, conditions in query.items():
        if column in _QUERY_PARAMS or "." in column:  # embedded resources (projects.name): see __call__
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


def jwt(sub: str) -> str:
    """An access token as Supabase Auth issues them (unsigned here: PostgREST would check the signature)."""

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': sub, 'role': 'authenticated'})}.sig"


def filters(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.url.query.decode())


def supabase_store(postgrest: PostgREST, key: str = "anon-key", **kwargs: Any) -> tuple[SupabaseStore, httpx.Client]:
    """A store talking to ``postgrest``, and its HTTP client (the caller's to close)."""
    http = httpx.Client(transport=httpx.MockTransport(postgrest))
    return SupabaseStore(URL, key, http=http, **kwargs), http
