"""The public API end to end: a real uvicorn server on loopback with the tiny model, a real PostgreSQL
(supabase/migrations applied), a real S3 server (SeaweedFS), and access tokens minted here and verified
against a JWKS served from a loopback HTTP server — the way Supabase Auth's keys are served. Only
Supabase Auth itself (GoTrue, which issues the tokens) is not run: the tests sign the tokens.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

import _postgres
from _postgres import one
from _s3server import S3Server
from _server import LoopbackServer, free_port
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.server import create_app
from s3seg.server._auth import TokenVerifier
from s3seg.storage._s3 import S3Storage
from s3seg.store._postgres import PostgresStore

pytestmark = pytest.mark.integration

ISSUER = "http://127.0.0.1/auth/v1"  # what the tokens say; the JWKS lives elsewhere, as with Supabase
KID = "test-key-1"
BUCKET = "s3seg-api"
Conn = Any


# ------------------------------------------------------------------------------------------ services
@pytest.fixture(scope="module")
def admin(pg_admin: Conn) -> Conn:
    return pg_admin


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket(BUCKET)


class Keys:
    """The signing key, and a JWKS endpoint on loopback that publishes its public half."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/auth/v1/.well-known/jwks.json"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(
        self, user: uuid.UUID | str, *, tier: str = "free", key: Any = None, kid: str = KID, **claims: Any
    ) -> str:
        now = int(time.time())
        payload = {
            "sub": str(user),
            "aud": "authenticated",
            "iss": ISSUER,
            "role": "authenticated",
            "iat": now,
            "exp": now + 3600,
            "email": f"{str(user)[:8]}@example.com",
            "app_metadata": {"provider": "email", "tier": tier},
            **claims,
        }
        return jwt.encode(payload, key or self.private, algorithm="ES256", headers={"kid": kid})

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    k = Keys()
    yield k
    k.close()


def new_user(admin: Conn, credits: int | None = None, tier: str = "free") -> uuid.UUID:
    return _postgres.sign_up(admin, app_meta={"tier": tier}, credits=credits)


# ---------------------------------------------------------------------------------------------- stack
class Stack:
    """The public API server on loopback with its real backends."""

    def __init__(
        self,
        pg: _postgres.Cluster,
        s3: S3Server,
        bucket: str,
        keys: Keys,
        engine: Sam3Engine | None,
        workers: Any = None,
        prefix: str | None = None,
        **settings: Any,
    ) -> None:
        self.prefix = prefix or f"t-{uuid.uuid4().hex[:8]}"
        self.storage = S3Storage(
            bucket,
            endpoint_url=s3.endpoint_url,
            access_key_id=s3.access_key,
            secret_access_key=s3.secret_key,
            region="auto",
            path_style=True,
            prefix=self.prefix,
        )
        self.store = PostgresStore(pg.dsn("postgres"))
        settings = {"threshold": 0.0, "rate_limits": {"free": 1000, "pro": 1000}, "task_timeout_s": 60, **settings}
        self.settings = Settings(jwks_url=keys.url, jwt_issuer=ISSUER, **settings)
        self.app = create_app(
            engine,
            self.settings,
            storage=self.storage,
            store=self.store,
            verifier=TokenVerifier.from_settings(self.settings),
            workers=workers,
        )
        self.server = LoopbackServer(self.app)
        self.url = self.server.url
        self.keys = keys

    def client(self, user: uuid.UUID, tier: str = "free") -> httpx.Client:
        token = self.keys.token(user, tier=tier)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def close(self) -> None:
        self.server.stop()
        self.store.close()
        self.storage.close()


@pytest.fixture
def stack_factory(
    pg: _postgres.Cluster, s3_server: S3Server, bucket: str, keys: Keys, engine: Sam3Engine
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(**settings: Any) -> Stack:
        stacks.append(Stack(pg, s3_server, bucket, keys, settings.pop("engine", engine), **settings))
        return stacks[-1]

    yield make
    for s in stacks:
        s.close()


@pytest.fixture
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is True
    return body["data"]


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


def upload(http: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = ok(http.post("/api/v1/upload", files={"file": (path.name, f, "image/jpeg")}), 201)
    return data


def wait_done(http: httpx.Client, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        task: dict[str, Any] = ok(http.get(f"/api/v1/tasks/{task_id}", params={"wait": 20}))
        if task["status"] in ("done", "error") or time.monotonic() > deadline:
            return task


# ---------------------------------------------------------------------------------------------- tests
def test_upload_segment_wait_and_read_results(
    stack: Stack, admin: Conn, photo_path: Path, tiny_model_dir: Path
) -> None:
    user = new_user(admin)
    with stack.client(user) as http:
        image = upload(http, photo_path)
        assert image["image_id"].endswith(".jpg") and image["width"] > 0 and image["bytes"] == photo_path.stat().st_size
        started = ok(
            http.post(
                "/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "person", "project": "portraits"}
            ),
            202,
        )
        assert started["status"] == "pending" and started["task_id"]
        t0 = time.monotonic()
        task = ok(http.get(f"/api/v1/tasks/{started['task_id']}", params={"wait": 30}))
        assert task["status"] == "done", task
        assert time.monotonic() - t0 < 25  # the long-poll answered when the task ended, not at its deadline
        assert task["project"] == "portraits" and task["text_prompt"] == "person"
        assert task["labels"] and all(label["label"] == "person" for label in task["labels"])
        assert task["metadata"]["attempts"] == 1 and task["metadata"]["cost"] == 1
        assert "image_key" not in task["metadata"]

        listed = ok(http.get("/api/v1/results", params={"status": "done", "project": "portraits"}))
        assert [t["task_id"] for t in listed["items"]] == [task["task_id"]]
        detail = ok(http.get(f"/api/v1/results/{task['task_id']}"))
        mask = httpx.get(detail["mask_image_url"], timeout=30)  # a presigned S3 URL, no credentials needed
        assert mask.status_code == 200 and mask.content.startswith(b"\x89PNG")
        coco = http.get(detail["files"]["result"]).json()
        assert len(coco["annotations"]) == len(task["labels"])
        # the model by its folder's name: the server's paths stay private (in the metadata and the COCO file)
        name = tiny_model_dir.name
        assert task["metadata"]["model"] == coco["images"][0]["s3seg"]["model"] == name
        assert str(tiny_model_dir) not in json.dumps(coco) + json.dumps(task)
        source = http.get(detail["files"]["source"])
        assert source.content == photo_path.read_bytes()

        me = ok(http.get("/api/v1/me"))
        assert (me["credits"], me["tier"], me["user_id"]) == (99, "free", str(user))
    assert (
        one(
            admin,
            "select count(*) from public.usage_logs where user_id = %s and action = 'segmentation' "
            "and metadata->>'task_id' = %s",
            user,
            task["task_id"],
        )
        == 1
    )


def test_tasks_keep_the_uploaded_file_name(stack: Stack, admin: Conn, photo_path: Path) -> None:
    """The upload's name (its base name, without control characters) goes with its tasks as ``file_name``;
    an image_url's task is named by the URL's last path segment."""
    user = new_user(admin, credits=5)
    photo = photo_path.read_bytes()
    with stack.client(user) as http:
        for sent, kept in (
            ("my photo.jpg", "my photo.jpg"),
            ("../../x\u0000.jpg", "x.jpg"),
            ("a\\..\\b\x1b.jpg", "b.jpg"),
        ):
            # by hand: httpx would percent-escape the control characters a hostile client sends as they are
            head = f'--b\r\nContent-Disposition: form-data; name="file"; filename="{sent}"\r\n\r\n'.encode()
            body = head + photo + b"\r\n--b--\r\n"
            sent_form = http.post(
                "/api/v1/upload", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
            )
            image = ok(sent_form, 201)
            assert image["file_name"] == kept, image
            started = ok(http.post("/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "x"}), 202)
            assert started["file_name"] == started["metadata"]["file_name"] == kept, started
            assert ok(http.get(f"/api/v1/results/{started['task_id']}"))["file_name"] == kept
        url = f"{stack.url}/some/hopper%20clip.jpg?x=1"  # refused (loopback) when it runs: the name is kept anyway
        started = ok(http.post("/api/v1/segment", json={"image_url": url, "text_prompt": "x"}), 202)
        assert started["file_name"] == "hopper clip.jpg", started
        listed = ok(http.get("/api/v1/results"))["items"]
        assert [t["file_name"] for t in listed][-3:] == ["b.jpg", "x.jpg", "my photo.jpg"], listed


@pytest.mark.parametrize(
    "how", ["none", "expired", "forged", "unknown_key", "wrong_audience", "alg_none", "garbage", "future"]
)
def test_bad_tokens_are_refused(stack: Stack, admin: Conn, keys: Keys, how: str) -> None:
    user = new_user(admin)
    other = ec.generate_private_key(ec.SECP256R1())
    tokens = {
        "expired": keys.token(user, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "forged": keys.token(user, key=other),  # right kid, wrong key
        "unknown_key": keys.token(user, key=other, kid="someone-elses"),
        "wrong_audience": keys.token(user, aud="anon"),
        "future": keys.token(user, nbf=int(time.time()) + 3600),
        "alg_none": jwt.encode(
            {"sub": str(user), "aud": "authenticated", "iss": ISSUER, "exp": int(time.time()) + 3600},
            None,
            algorithm="none",
        ),
        "garbage": "not.a.token",
    }
    headers = {"Authorization": f"Bearer {tokens[how]}"} if how in tokens else {}
    response = httpx.post(
        f"{stack.url}/api/v1/segment",
        headers=headers,
        json={"image_url": "https://example.com/a.jpg", "text_prompt": "dog"},
    )
    error = refused(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer" and error["message"]
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", user) == 0


def test_a_user_without_profile_is_told_so(stack: Stack, admin: Conn) -> None:
    with stack.client(uuid.uuid4()) as http:  # a valid token, but no users_profile row
        refused(http.get("/api/v1/me"), 403, "NO_PROFILE")
        refused(
            http.post("/api/v1/segment", json={"image_url": "https://example.com/a.jpg", "text_prompt": "dog"}),
            403,
            "NO_PROFILE",
        )


def test_users_see_only_their_own(stack: Stack, admin: Conn, photo_path: Path) -> None:
    alice, bob = new_user(admin), new_user(admin)
    with stack.client(alice) as a, stack.client(bob) as b:
        image = upload(a, photo_path)
        task = wait_done(
            a,
            ok(a.post("/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "person"}), 202)[
                "task_id"
            ],
        )
        assert task["status"] == "done"
        tid = task["task_id"]
        refused(b.get(f"/api/v1/tasks/{tid}"), 404, "NOT_FOUND")
        refused(b.get(f"/api/v1/results/{tid}"), 404, "NOT_FOUND")
        refused(b.get(f"/api/v1/results/{tid}/files/mask"), 404, "NOT_FOUND")
        assert ok(b.get("/api/v1/results"))["items"] == []
        # Bob cannot segment Alice's upload either: image ids are per user
        refused(b.post("/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "x"}), 404, "NOT_FOUND")
        assert [t["task_id"] for t in ok(a.get("/api/v1/results"))["items"]] == [tid]


def test_segment_under_a_project_id(stack: Stack, admin: Conn, photo_path: Path) -> None:
    alice, bob = new_user(admin), new_user(admin)
    with stack.client(alice) as a, stack.client(bob) as b:
        image_id = upload(a, photo_path)["image_id"]
        first = ok(a.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person", "project": "x"}), 202)
        project_id = first["project_id"]
        assert first["project"] == "x" and project_id
        second = ok(
            a.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person", "project_id": project_id}),
            202,
        )
        assert (second["project"], second["project_id"]) == ("x", project_id)
        error = refused(
            a.post(
                "/api/v1/segment",
                json={"image_id": image_id, "text_prompt": "person", "project": "x", "project_id": project_id},
            ),
            422,
            "INVALID_REQUEST",
        )
        assert "not both" in error["message"]
        assert all(wait_done(a, t["task_id"])["status"] == "done" for t in (first, second))
        listed = ok(a.get("/api/v1/results", params={"project": "x"}))["items"]
        assert {t["task_id"] for t in listed} == {first["task_id"], second["task_id"]}

        # Bob cannot file a task under Alice's project, nor under an id that is no project at all.
        own_image = upload(b, photo_path)["image_id"]
        for bad in (project_id, str(uuid.uuid4()), "not-a-project"):
            error = refused(
                b.post("/api/v1/segment", json={"image_id": own_image, "text_prompt": "person", "project_id": bad}),
                404,
                "NOT_FOUND",
            )
            assert error["message"] == f"no project {bad}"
        assert ok(b.get("/api/v1/me"))["credits"] == ok(a.get("/api/v1/me"))["credits"] + 2  # nothing reserved
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", bob) == 0
    assert one(admin, "select count(*) from public.projects where user_id = %s", bob) == 0
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", alice) == 2


def test_concurrent_segments_spend_credits_exactly_once(stack: Stack, admin: Conn, photo_path: Path) -> None:
    user = new_user(admin, credits=5)
    with stack.client(user) as http:
        image_id = upload(http, photo_path)["image_id"]

        def start(_: int) -> httpx.Response:
            return http.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person"})

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(start, range(20)))
        accepted = [r.json()["data"]["task_id"] for r in responses if r.status_code == 202]
        refusals = [r for r in responses if r.status_code != 202]
        assert len(accepted) == 5, [r.text for r in refusals[:3]]
        for r in refusals:
            refused(r, 402, "INSUFFICIENT_CREDITS")
        assert all(wait_done(http, t)["status"] == "done" for t in accepted)
        assert ok(http.get("/api/v1/me"))["credits"] == 0
        refused(start(0), 402, "INSUFFICIENT_CREDITS")
    assert one(admin, "select credits from public.users_profile where id = %s", user) == 0
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", user) == 5
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", user) == 5


def test_failed_task_is_not_charged(stack: Stack, admin: Conn) -> None:
    user = new_user(admin, credits=1)
    with stack.client(user) as http:
        bad = http.post("/api/v1/upload", files={"file": ("x.jpg", b"not an image", "image/jpeg")})
        refused(bad, 415, "UNSUPPORTED_IMAGE")
        # a URL the server may not fetch (loopback): the task fails, and the credit is not spent
        task = ok(http.post("/api/v1/segment", json={"image_url": f"{stack.url}/health", "text_prompt": "x"}), 202)
        done = wait_done(http, task["task_id"])
        assert done["status"] == "error" and "non-public address" in done["error"], done
        assert ok(http.get("/api/v1/me"))["credits"] == 1
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", user) == 0


def test_rate_limit_answers_429(stack_factory: Callable[..., Stack], admin: Conn, photo_path: Path) -> None:
    stack = stack_factory(rate_limits={"free": 3, "pro": 1000})
    free, pro = new_user(admin), new_user(admin, tier="pro")
    with stack.client(free) as http:
        for _ in range(3):
            upload(http, photo_path)
        with photo_path.open("rb") as f:
            response = http.post("/api/v1/upload", files={"file": ("a.jpg", f, "image/jpeg")})
        error = refused(response, 429, "RATE_LIMITED")
        assert 1 <= int(response.headers["retry-after"]) <= 60 and "3 requests per minute" in error["message"]
        ok(http.get("/api/v1/results"))  # reading is not limited
    with stack.client(pro, tier="pro") as http:
        for _ in range(4):
            upload(http, photo_path)


def test_upload_limits(stack_factory: Callable[..., Stack], admin: Conn, photo_path: Path) -> None:
    stack = stack_factory(max_upload_mb=0.01)
    with stack.client(new_user(admin)) as http:
        with photo_path.open("rb") as f:
            refused(http.post("/api/v1/upload", files={"file": ("a.jpg", f, "image/jpeg")}), 413, "FILE_TOO_LARGE")
        refused(http.post("/api/v1/upload", files={"other": ("a.jpg", b"x", "image/jpeg")}), 422, "INVALID_REQUEST")
        refused(
            http.post("/api/v1/segment", json={"image_id": "../../etc/passwd", "text_prompt": "x"}),
            422,
            "INVALID_REQUEST",
        )
        refused(http.post("/api/v1/segment", json={"image_url": "https://example.com/a.jpg"}), 422, "INVALID_REQUEST")
        refused(http.get(f"/api/v1/tasks/{uuid.uuid4()}"), 404, "NOT_FOUND")
        refused(http.get("/api/v1/tasks/not-a-uuid"), 404, "NOT_FOUND")


def test_cors(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory(cors_origins=["https://app.example.com"])
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{stack.url}/api/v1/segment", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = httpx.options(f"{stack.url}/api/v1/segment", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


# ------------------------------------------------------------------------------- gateway and crashes
class GPUWorker(LoopbackServer):
    """A GPU backend: `s3seg serve` with the model, behind its API key."""

    def __init__(self, engine: Sam3Engine, data_dir: Path, key: str = "worker-key") -> None:
        super().__init__(create_app(engine, Settings(api_key=key, data_dir=data_dir)))


def test_gateway_runs_video_tasks_on_a_worker(
    stack_factory: Callable[..., Stack],
    engine: Sam3Engine,
    admin: Conn,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A video task on a gateway goes to a worker's /api/v1/predict/video (a dead worker is skipped): its
    progress comes from the worker's stream, and its tracks equal a local run's; files are made on the gateway."""
    from _video import make_clip
    from s3seg.config import load_settings
    from s3seg.engine._video import Sam3VideoEngine
    from s3seg.server import WorkerPool, _events
    from s3seg.video import open_video

    monkeypatch.setattr(_events, "POLL_S", 0.05)  # look often: the task's progress between its start and end
    clip = make_clip(tmp_path / "clip.mp4", n=18)  # longer than the tracker's hold-back: frames before the end
    worker = GPUWorker(engine, tmp_path / "worker")
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        stack = stack_factory(engine=None, workers=WorkerPool([dead, worker.url], api_key="worker-key", timeout_s=60))
        user = new_user(admin)
        with stack.client(user) as http:
            video_id = upload_video(http, clip)["video_id"]
            body = {"video_id": video_id, "text_prompt": "person", "threshold": 0, "every": 2}
            started = ok(http.post("/api/v1/segment", json=body), 202)
            events = read_events(http, started["task_id"])
            task = ok(http.get(f"/api/v1/results/{started['task_id']}"))
            assert (task["status"], task["frames_done"], task["frames_total"]) == ("done", 9, 9), task
            steps = [e.json()["done"] for e in events if e.event == "progress"]  # as the store was polled
            assert steps == sorted(steps) and max(steps) > 0 and events[-1].event == "done", steps  # frames mid-way
            tracks = http.get(task["files"]["result"]).json()
            assert http.get(task["files"]["overlay"]).content[4:8] == b"ftyp"
    finally:
        worker.stop()
    local = open_video(
        clip, ["person"], Sam3VideoEngine.load(str(tiny_model_dir), device="cpu"), load_settings(threshold=0.0), every=2
    ).run()
    assert tracks["annotations"] == local.to_tracks()["annotations"] and tracks["videos"][0]["length"] == 9
    assert tracks["s3seg"]["model"] == task["metadata"]["model"] == tiny_model_dir.name


class Hanging:
    """A worker that accepts requests and never answers: the task is mid-inference for as long as we like."""

    def __init__(self) -> None:
        self.seen = threading.Event()
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.set()
                time.sleep(600)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_gateway_forwards_to_gpu_workers(
    stack_factory: Callable[..., Stack], engine: Sam3Engine, admin: Conn, photo_path: Path, tmp_path: Path
) -> None:
    from s3seg.server import WorkerPool

    worker = GPUWorker(engine, tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: skipped
    try:
        pool = WorkerPool([dead, worker.url], api_key="worker-key", timeout_s=30)
        stack = stack_factory(engine=None, workers=pool)
        assert ok(httpx.get(f"{stack.url}/health"))["workers"] == 2
        user = new_user(admin)
        with stack.client(user) as http:
            image_id = upload(http, photo_path)["image_id"]
            task = wait_done(
                http,
                ok(http.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person"}), 202)["task_id"],
            )
            assert task["status"] == "done" and task["labels"], task
            refused(http.post("/api/v1/predict"), 404, "NOT_FOUND")  # a gateway has no model routes
        wrong_key = WorkerPool([worker.url], api_key="wrong", timeout_s=30)
        stack = stack_factory(engine=None, workers=wrong_key)
        with stack.client(user) as http:
            image_id = upload(http, photo_path)["image_id"]
            task = wait_done(
                http,
                ok(http.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person"}), 202)["task_id"],
            )
            assert task["status"] == "error" and "API key" in task["error"]
    finally:
        worker.stop()


def serve_process(
    pg: _postgres.Cluster,
    s3_server: S3Server,
    bucket: str,
    keys: Keys,
    prefix: str,
    tmp_path: Path,
    extra: dict[str, str],
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`s3seg serve` as a real process over the test's database and bucket (``extra``: its role), once it
    answers /health: the process, its URL and its log file."""
    port = free_port()
    env = {
        **os.environ,
        "S3SEG_DATABASE_URL": pg.dsn("postgres"),
        "S3SEG_R2_ENDPOINT": s3_server.endpoint_url,
        "S3SEG_R2_ACCESS_KEY_ID": s3_server.access_key,
        "S3SEG_R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3SEG_R2_BUCKET": bucket,
        "S3SEG_R2_PREFIX": prefix,
        "S3SEG_JWKS_URL": keys.url,
        "S3SEG_JWT_ISSUER": ISSUER,
        "S3SEG_DATA_DIR": str(tmp_path),
        "TMPDIR": str(tmp_path),  # a killed server's temporary files stay in the test's folder
        **extra,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3seg", "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            raise AssertionError(log.read_text())
        time.sleep(0.2)


def test_killed_server_task_is_run_again(
    stack_factory: Callable[..., Stack],
    pg: _postgres.Cluster,
    s3_server: S3Server,
    bucket: str,
    keys: Keys,
    admin: Conn,
    photo_path: Path,
    tmp_path: Path,
) -> None:
    """`s3seg serve` (a real process, gateway to a worker that hangs) is SIGKILLed mid-task; a new server
    with the model finds the task stuck in `processing`, runs it again, and it ends done."""
    hanging = Hanging()
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    worker = {"S3SEG_WORKERS": hanging.url, "S3SEG_WORKER_API_KEY": "k"}
    proc, url, _ = serve_process(pg, s3_server, bucket, keys, prefix, tmp_path, worker)
    user = new_user(admin)
    try:
        headers = {"Authorization": f"Bearer {keys.token(user)}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            image_id = upload(http, photo_path)["image_id"]
            task_id = ok(http.post("/api/v1/segment", json={"image_id": image_id, "text_prompt": "person"}), 202)[
                "task_id"
            ]
        assert hanging.seen.wait(30), "the task never reached the worker"
        assert one(admin, "select status from public.segmentation_results where id = %s", task_id) == "processing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        hanging.close()
    # a new server with the model, over the same database and bucket; its sweep finds the stuck task. The
    # timeout is also how long the second run may take before it counts as dead: 1 s failed on a loaded CPU.
    stack = stack_factory(task_timeout_s=10, prefix=prefix)
    with stack.client(user) as http:
        task = wait_done(http, task_id)
    assert task["status"] == "done" and task["metadata"]["attempts"] == 2, task
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", user) == 1


def test_task_ends_error_after_its_last_attempt(
    stack_factory: Callable[..., Stack], admin: Conn, photo_path: Path
) -> None:
    """A task whose worker keeps dying is not retried forever: after task_attempts it ends `error`."""
    stack = stack_factory(task_timeout_s=1, task_attempts=1)
    user = new_user(admin)
    store = stack.store.for_user(str(user))
    task = store.create_task(
        ["person"], metadata={"image": "gone.jpg", "image_key": "uploads/x/gone.jpg"}, cost=1, queue=True
    )
    store.start(task.id)  # as if a worker took it and died: nobody will finish it
    with stack.client(user) as http:
        ended = wait_done(http, task.id)
    assert ended["status"] == "error" and "stopped responding" in ended["error"], ended
    with stack.client(user) as http:
        assert ok(http.get("/api/v1/me"))["credits"] == 100


# ------------------------------------------------------------------------------- SDK and CLI as a user
def test_sdk_and_cli_as_a_signed_in_user(
    stack: Stack,
    admin: Conn,
    keys: Keys,
    photo_path: Path,
    engine: Sam3Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import s3seg
    from _cli import run as run_cli

    user = new_user(admin)
    token = keys.token(user)
    monkeypatch.setenv("S3SEG_API_URL", stack.url)
    monkeypatch.setenv("S3SEG_SUPABASE_ACCESS_TOKEN", token)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")  # the project (sign-in); never contacted here
    monkeypatch.chdir(tmp_path)

    with s3seg.Client(api_url=stack.url, settings=Settings(threshold=0.0)) as client:
        remote = client.segment(photo_path, ["person", "tie"])
        assert client.saved and client.saved[0][0] == str(photo_path)
    local = s3seg.Client(engine=engine, settings=Settings(threshold=0.0)).segment(photo_path, ["person", "tie"])
    assert [i.prompt for i in remote.instances] == [i.prompt for i in local.instances]
    assert all((a.mask == b.mask).all() for a, b in zip(remote.instances, local.instances, strict=True))

    code, out, err = run_cli(
        capsys,
        "segment",
        str(photo_path),
        "person",
        "--api",
        stack.url,
        "--project",
        "cli",
        "--threshold",
        "0",
        "--json",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    doc = json.loads(out)
    [saved] = doc["tasks"]
    assert (tmp_path / "out" / f"{photo_path.stem}.mask.png").exists()

    code, out, err = run_cli(capsys, "results", "--project", "cli", "--json")
    assert code == 0, err
    assert [t["id"] for t in json.loads(out)] == [saved["task_id"]]
    code, out, err = run_cli(capsys, "results", saved["task_id"], "--download", str(tmp_path / "dl"), "--json")
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert files == sorted(["mask.png", "overlay.jpg", "result.json", f"source{photo_path.suffix}"]), files
    code, out, err = run_cli(capsys, "results", saved["task_id"])  # shown with the name it was uploaded with
    assert code == 0 and f"file: {photo_path.name}" in out, (out, err)
    code, out, err = run_cli(capsys, "tasks", saved["task_id"], "--watch", "--json")
    assert code == 0 and json.loads(out)["status"] == "done", err
    code, out, err = run_cli(capsys, "upload", str(photo_path), "--json")
    assert code == 0 and json.loads(out)[0]["image_id"].endswith(".jpg"), err

    code, out, err = run_cli(capsys, "whoami", "--json")
    assert code == 0, err
    account = json.loads(out)["account"]
    assert (account["user_id"], account["tier"], account["credits"]) == (str(user), "free", 98), account

    admin.execute("update public.users_profile set credits = 0 where id = %s", (user,))
    code, out, err = run_cli(capsys, "segment", str(photo_path), "person", "--json")
    assert code == 12 and "credits" in err and "Traceback" not in err, err
    monkeypatch.setenv("S3SEG_SUPABASE_ACCESS_TOKEN", keys.token(user, exp=int(time.time()) - 100))
    code, out, err = run_cli(capsys, "results")
    assert code == 11 and "token expired" in err, err


# ------------------------------------------------------------------------------------ live task events
def read_events(http: httpx.Client, task_id: str, last_event_id: str | None = None) -> list[Any]:
    from httpx_sse import connect_sse

    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with connect_sse(http, "GET", f"/api/v1/tasks/{task_id}/events", headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def test_task_events_stream_to_the_end(stack: Stack, admin: Conn, photo_path: Path) -> None:
    alice, bob = new_user(admin), new_user(admin)
    with stack.client(alice) as a, stack.client(bob) as b:
        image = upload(a, photo_path)
        tid = ok(a.post("/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "person"}), 202)[
            "task_id"
        ]
        # the same isolation as the other task routes, answered before any stream starts
        refused(b.get(f"/api/v1/tasks/{tid}/events"), 404, "NOT_FOUND")
        refused(httpx.get(f"{stack.url}/api/v1/tasks/{tid}/events", timeout=10), 401, "UNAUTHORIZED")
        refused(a.get(f"/api/v1/tasks/{uuid.uuid4()}/events"), 404, "NOT_FOUND")

        events = read_events(a, tid)
        assert events[0].event == "status" and events[0].retry == 2000
        assert events[-1].event == "done" and all(e.event in ("status", "progress") for e in events[:-1]), events
        statuses = [e.json()["status"] for e in events[:-1] if e.event == "status"]
        assert statuses in (["pending"], ["processing"], ["pending", "processing"]), statuses
        # an image task is one step: progress 0/1 once it runs, 1/1 once segmented (a fast task may skip them)
        steps = [(e.json()["done"], e.json()["total"]) for e in events if e.event == "progress"]
        assert steps in ([], [(0, 1)], [(1, 1)], [(0, 1), (1, 1)]), steps
        assert events[-1].json()["frames_done"] == events[-1].json()["frames_total"] == 1
        assert [e.id for e in events] == sorted(e.id for e in events)  # a status and its progress share an id
        assert len({(e.event, e.id) for e in events}) == len(events)
        done = events[-1].json()
        task = ok(a.get(f"/api/v1/tasks/{tid}"))
        assert (done["status"], done["task_id"], done["labels"], done["files"]) == (
            "done",
            tid,
            task["labels"],
            task["files"],
        )
        # a finished task: any connection, resumed or not, gets the final event and the stream ends
        assert [e.event for e in read_events(a, tid, last_event_id=events[0].id)] == ["done"]
        assert [e.event for e in read_events(a, tid, last_event_id=events[-1].id)] == ["done"]


def test_task_events_resume_and_heartbeat(stack: Stack, admin: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    from httpx_sse import connect_sse

    from s3seg.server import _events

    monkeypatch.setattr(_events, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(_events, "POLL_S", 0.05)
    alice = new_user(admin)
    store = stack.store.for_user(str(alice))
    task = store.create_task(["cat"])  # not queued: it moves only when this test moves it
    with stack.client(alice) as a:
        with connect_sse(a, "GET", f"/api/v1/tasks/{task.id}/events") as source:
            first = next(source.iter_sse())
        assert (first.event, first.id, first.json()["status"]) == ("status", "0-0", "pending")
        store.start(task.id)
        threading.Timer(1.5, store.fail, (task.id, "stopped by the test")).start()
        lines: list[str] = []
        with a.stream("GET", f"/api/v1/tasks/{task.id}/events", headers={"Last-Event-ID": first.id}) as stream:
            for line in stream.iter_lines():
                lines.append(line)
    # resumed after "pending": processing, heartbeats while nothing happens, then the error; no pending again
    events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
    assert events == ["status", "error"], lines
    assert '"status":"pending"' not in "".join(lines)
    assert lines.count(": heartbeat") >= 2, lines
    error = json.loads(next(line for line in reversed(lines) if line.startswith("data: "))[6:])
    assert error == {"task_id": task.id, "status": "error", "error": "stopped by the test"}


# ------------------------------------------------------------------------------------------- video tasks
def upload_video(http: httpx.Client, path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = ok(http.post("/api/v1/upload", files={"file": ("clip.bin", f, "video/mp4")}), 201)
    return data


def test_video_task_progress_files_and_credits(
    stack_factory: Callable[..., Stack],
    admin: Conn,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An uploaded clip (told by its content, not its name) → a task that goes pending → processing with
    increasing progress → done; its tracks JSON and overlay MP4 download; charged per frame, once."""
    from _video import make_clip
    from s3seg.server import _events

    monkeypatch.setattr(_events, "POLL_S", 0.05)  # the tiny model takes ~0.1 s a frame: look often
    clip = make_clip(tmp_path / "clip.mp4", n=30)
    stack = stack_factory(video_frame_cost=0.25)
    user = new_user(admin)
    with stack.client(user) as http:
        video = upload_video(http, clip)
        assert (video["kind"], video["frames"], video["width"], video["height"]) == ("video", 30, 96, 72), video
        assert video["video_id"] == video["image_id"] and video["video_id"].endswith(".mp4")
        assert video["content_type"] == "video/mp4" and video["bytes"] == clip.stat().st_size
        body = {"video_id": video["video_id"], "text_prompt": "person", "max_objects": 3}
        started = ok(http.post("/api/v1/segment", json=body), 202)
        tid = started["task_id"]
        assert (started["frames_total"], started["metadata"]["cost"]) == (30, 8)  # ceil(30 × 0.25)
        assert started["file_name"] == "clip.bin"  # the name it was uploaded with (not its stored id)
        assert ok(http.get("/api/v1/me"))["credits"] == 100  # reserved, not charged yet
        other = new_user(admin)
        with stack.client(other) as intruder:  # another user's task: 404 before any stream
            refused(intruder.get(f"/api/v1/tasks/{tid}/events"), 404, "NOT_FOUND")
        from httpx_sse import connect_sse

        with connect_sse(http, "GET", f"/api/v1/tasks/{tid}/events") as source:  # leave after some progress
            first = []
            for event in source.iter_sse():
                first.append(event)
                if (event.event == "progress" and event.json()["done"] > 0) or event.event == "done":
                    break
        assert first[-1].event == "progress", first  # still running: the rest comes on a new connection
        rest = read_events(http, tid, last_event_id=first[-1].id)
        seen = _events.parse_event_id(first[-1].id)
        assert all(_events.parse_event_id(e.id) > seen for e in rest if e.event != "done"), (first, rest)
        events = first + rest
        assert events[-1].event == "done", events
        steps = [e.json()["done"] for e in events if e.event == "progress"]
        assert steps == sorted(steps) and len(set(steps)) >= 3 and steps[-1] == 30, steps
        assert {e.json()["total"] for e in events if e.event == "progress"} == {30}
        statuses = [e.json()["status"] for e in events if e.event == "status"]
        assert statuses[-1] == "processing", statuses
        task = ok(http.get(f"/api/v1/results/{tid}"))
        assert (task["status"], task["frames_done"], task["frames_total"]) == ("done", 30, 30), task
        assert sorted(task["files"]) == ["overlay", "poster", "result", "source"] and task["mask_image_url"] is None
        tracks = http.get(task["files"]["result"]).json()
        assert tracks["videos"][0]["length"] == 30 and [c["name"] for c in tracks["categories"]] == ["person"]
        assert task["metadata"]["model"] == tracks["s3seg"]["model"] == tiny_model_dir.name
        assert len(task["labels"]) == len(tracks["annotations"]) == task["metadata"]["instances"]
        overlay = http.get(task["files"]["overlay"])
        assert overlay.headers["content-type"] == "video/mp4" and overlay.content[4:8] == b"ftyp"
        assert http.get(task["files"]["source"]).content == clip.read_bytes()
        # the poster: a JPEG of one overlay frame, the clip's size (under 480 px wide: not scaled), downloaded
        # like the other files; its storage key stays out of the metadata
        poster = http.get(task["files"]["poster"])
        assert poster.headers["content-type"] == "image/jpeg" and task["poster_url"], task
        with Image.open(io.BytesIO(poster.content)) as still:
            assert (still.format, still.size, still.mode) == ("JPEG", (96, 72), "RGB")
        assert "poster" not in task["metadata"]
        refused(http.get(f"/api/v1/results/{tid}/files/mask"), 404, "NOT_FOUND")
        assert ok(http.get("/api/v1/me"))["credits"] == 100 - 8
    assert one(admin, "select sum(credits_used) from public.usage_logs where user_id = %s", user) == 8
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", user) == 1


def test_video_task_start_end_processes_only_the_selection(
    stack_factory: Callable[..., Stack], admin: Conn, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``start``/``end`` on /segment (seconds or NNf, as the CLI's): frames_total and the price come from the
    selection, the task processes exactly the frames a local run with the same selection does, and is charged
    for those; a selection that is empty or reaches past the clip is refused before anything is reserved."""
    from _video import make_clip
    from s3seg.config import load_settings
    from s3seg.engine._video import Sam3VideoEngine
    from s3seg.video import open_video

    clip = make_clip(tmp_path / "clip.mp4", n=16)  # 10 fps: 1.6 s
    stack = stack_factory(video_frame_cost=0.5)
    user = new_user(admin)
    with stack.client(user) as http:
        video_id = upload_video(http, clip)["video_id"]
        body = {"video_id": video_id, "text_prompt": "person", "threshold": 0}
        for bad in ({"end": "17f"}, {"end": "1.7"}, {"start": "16f"}, {"start": "0.25", "end": "0.28"}):
            refused(http.post("/api/v1/segment", json={**body, **bad}), 422, "BAD_RANGE")
        started = ok(http.post("/api/v1/segment", json={**body, "start": "0.4", "end": "12f", "every": 2}), 202)
        assert (started["frames_total"], started["metadata"]["cost"]) == (4, 2)  # frames 4, 6, 8, 10; ceil(4 × 0.5)
        task = ok(http.get(f"/api/v1/tasks/{started['task_id']}", params={"wait": 30}))
        while task["status"] in ("pending", "processing"):
            task = ok(http.get(f"/api/v1/tasks/{started['task_id']}", params={"wait": 30}))
        assert (task["status"], task["frames_done"], task["frames_total"]) == ("done", 4, 4), task
        tracks = http.get(ok(http.get(f"/api/v1/results/{task['task_id']}"))["files"]["result"]).json()
        assert ok(http.get("/api/v1/me"))["credits"] == 100 - 2
    engine = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")
    local = open_video(clip, ["person"], engine, load_settings(threshold=0.0), start="0.4", end="12f", every=2)
    doc = local.run().to_tracks()
    assert tracks["videos"][0]["frame_indices"] == doc["videos"][0]["frame_indices"] == [4, 6, 8, 10]
    assert tracks["annotations"] == doc["annotations"]
    assert one(admin, "select sum(credits_used) from public.usage_logs where user_id = %s", user) == 2


def test_bad_videos_are_refused_and_leave_nothing(
    stack_factory: Callable[..., Stack], admin: Conn, tmp_path: Path
) -> None:
    from _video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", n=3)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clip.read_bytes()[:32] + os.urandom(1000))  # an MP4's first bytes, then noise
    stack = stack_factory(max_video_upload_mb={"free": 0.002, "pro": 50})
    user = new_user(admin)
    with stack.client(user) as http:
        error = refused(
            http.post("/api/v1/upload", files={"file": ("big.mp4", clip.read_bytes())}), 413, "FILE_TOO_LARGE"
        )
        assert "free tier" in error["message"] and error["hint"], error
        error = refused(
            http.post("/api/v1/upload", files={"file": ("bad.mp4", corrupt.read_bytes())}), 415, "UNSUPPORTED_VIDEO"
        )
        assert "bad.mp4" in error["message"] and "upload" not in error["message"].split(":")[0], error
        missing = {"video_id": f"{uuid.uuid4().hex}.mp4", "text_prompt": "person"}
        refused(http.post("/api/v1/segment", json=missing), 404, "NOT_FOUND")
        boxes = {**missing, "boxes": [{"box": [0, 0, 5, 5]}]}
        refused(http.post("/api/v1/segment", json=boxes), 422, "INVALID_REQUEST")
        every = {"image_url": "https://example.com/a.jpg", "text_prompt": "person", "every": 2}
        refused(http.post("/api/v1/segment", json=every), 422, "INVALID_REQUEST")
    with stack.client(user, tier="pro") as http:  # the pro tier's limit takes the same clip
        video_id = upload_video(http, clip)["video_id"]
    uploads = stack.storage.list(f"uploads/{user}/")
    assert len(uploads) == 2 and all(k.split("/")[-1].startswith(uploads[0].split("/")[-1][:32]) for k in uploads)
    assert one(admin, "select count(*) from public.segmentation_results where user_id = %s", user) == 0
    # tracking 96×72 frames with 16 tracks needs 0.46 MB (server.md, Limits): over a 0.4 MB budget, refused when
    # the task is created; with one track (0.36 MB) it fits and runs
    tight = stack_factory(memory_budget_mb=0.4, prefix=stack.prefix)
    with tight.client(user) as http:
        whole = {"video_id": video_id, "text_prompt": "person"}
        error = refused(http.post("/api/v1/segment", json=whole), 413, "VIDEO_TOO_LARGE")
        assert "S3SEG_MEMORY_BUDGET_MB" in error["hint"] and "max_objects" in error["hint"], error
        task = wait_done(http, ok(http.post("/api/v1/segment", json={**whole, "max_objects": 1}), 202)["task_id"])
        assert task["status"] == "done" and task["metadata"]["video_options"]["size"] == [96, 72], task


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_an_animated_gif_or_webp_is_an_image_unless_uploaded_as_a_video(
    stack: Stack, admin: Conn, tmp_path: Path, photo_path: Path, suffix: str
) -> None:
    from _video import make_animation

    path = make_animation(tmp_path / f"anim{suffix}", [100, 100, 200, 100])
    user = new_user(admin)
    with stack.client(user) as http:
        image = ok(http.post("/api/v1/upload", files={"file": (path.name, path.read_bytes())}), 201)
        assert image["kind"] == "image" and image["image_id"].endswith(suffix) and image["video_id"] is None
        as_video = {"kind": "video"}
        video = ok(http.post("/api/v1/upload", files={"file": (path.name, path.read_bytes())}, data=as_video), 201)
        assert (video["kind"], video["frames"], video["width"], video["height"]) == ("video", 4, 96, 72), video
        assert video["video_id"] == video["image_id"] and video["video_id"].endswith(f".anim{suffix}")
        photo = {"file": ("photo.jpg", photo_path.read_bytes())}
        refused(http.post("/api/v1/upload", files=photo, data=as_video), 415, "UNSUPPORTED_VIDEO")
        refused(http.post("/api/v1/upload", files=photo, data={"kind": "clip"}), 422, "INVALID_REQUEST")
        # the image upload is no video; the video upload is tracked, given by either id field
        missing = {"video_id": image["image_id"], "text_prompt": "person"}
        refused(http.post("/api/v1/segment", json=missing), 422, "INVALID_REQUEST")
        task = ok(http.post("/api/v1/segment", json={"image_id": video["video_id"], "text_prompt": "person"}), 202)
        done = wait_done(http, task["task_id"])
        assert (done["status"], done["frames_done"], done["metadata"]["frames"]) == ("done", 4, 4), done
        assert http.get(done["files"]["source"]).content == path.read_bytes()
        image_task = ok(
            http.post("/api/v1/segment", json={"image_id": image["image_id"], "text_prompt": "person"}), 202
        )
        assert wait_done(http, image_task["task_id"])["status"] == "done"  # its first frame, as an image


def test_video_from_the_cli_and_sdk_as_a_signed_in_user(
    stack: Stack,
    admin: Conn,
    keys: Keys,
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`s3seg segment clip.mp4 person --api URL` tracks on the server (the same tracks as a local run), the
    SDK's wait hears the task's progress through its live events, `s3seg tasks ID --watch` follows it and
    `s3seg results ID --download` saves the clip's files."""
    from _cli import run as run_cli
    from _video import make_animation, make_clip
    from s3seg._public import PublicClient
    from s3seg.config import load_settings
    from s3seg.engine._video import Sam3VideoEngine
    from s3seg.video import open_video

    clip = make_clip(tmp_path / "clip.mp4", n=12)
    user = new_user(admin)
    monkeypatch.setenv("S3SEG_API_URL", stack.url)
    monkeypatch.setenv("S3SEG_SUPABASE_ACCESS_TOKEN", keys.token(user))
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")  # the project (sign-in); never contacted here
    monkeypatch.chdir(tmp_path)

    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "segment", str(clip), "person", "--threshold", "0", "--out", str(out), "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert json.loads((out / "clip.tracks.json").read_text()) == doc
    assert (out / "clip.overlay.mp4").read_bytes()[4:8] == b"ftyp"
    engine = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")
    local = open_video(clip, ["person"], engine, load_settings(threshold=0.0))
    assert doc["annotations"] == local.run().to_tracks()["annotations"] and doc["videos"][0]["length"] == 12
    code, stdout, err = run_cli(  # a selection is sent with the task: the same frames and masks as a local run
        capsys, "segment", str(clip), "person", "--start", "2f", "--end", "0.9", "--threshold", "0", "--json"
    )
    assert code == 0, err
    chosen = open_video(clip, ["person"], engine, load_settings(threshold=0.0), start="2f", end="0.9").run().to_tracks()
    picked = json.loads(stdout)
    assert picked["videos"][0]["frame_indices"] == chosen["videos"][0]["frame_indices"] == list(range(2, 9))
    assert picked["annotations"] == chosen["annotations"]  # the RLE masks, frame for frame
    gif = make_animation(tmp_path / "anim.gif", [100, 100, 100])  # --video: tracked on the server too
    code, stdout, err = run_cli(capsys, "segment", str(gif), "person", "--video", "--threshold", "0", "--json")
    assert code == 0 and json.loads(stdout)["videos"][0]["length"] == 3, err

    heard: list[tuple[str, int, int]] = []
    with closing(PublicClient.from_settings(load_settings())) as api:
        video = api.upload_file(clip)
        task = api.start_video(video["video_id"], ["person"], every=2)
        assert task.frames_total == 6
        ended = api.wait(task.id, lambda *state: heard.append(state))
    assert (ended.status, ended.frames_done, ended.frames_total) == ("done", 6, 6), ended
    assert heard[-1] == ("done", 6, 6) and [h[1] for h in heard] == sorted(h[1] for h in heard), heard
    assert {h[0] for h in heard} <= {"pending", "processing", "done"}, heard
    assert any(h[0] == "processing" and h[2] == 6 for h in heard), heard  # frames as it went

    code, stdout, err = run_cli(capsys, "tasks", task.id[:8], "--watch", "--json")
    assert code == 0 and json.loads(stdout)["frames_done"] == 6, err
    code, stdout, err = run_cli(capsys, "results", task.id, "--download", str(tmp_path / "dl"), "--json")
    assert code == 0, err
    files = ["overlay.mp4", "poster.jpg", "source.mp4", "tracks.json"]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == files
    assert (tmp_path / "dl" / "source.mp4").read_bytes() == clip.read_bytes()


def test_killed_server_video_task_runs_again_from_the_start(
    stack_factory: Callable[..., Stack],
    pg: _postgres.Cluster,
    s3_server: S3Server,
    bucket: str,
    keys: Keys,
    admin: Conn,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """`s3seg serve` (a real process with the tiny model) is SIGKILLed while it tracks a clip; a new server
    finds the task stuck in `processing` (no heartbeat any more), runs it again from the first frame, and it
    ends done, charged once."""
    from _video import make_clip

    clip = make_clip(tmp_path / "clip.mp4", n=60)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    model = {"S3SEG_MODEL": str(tiny_model_dir), "S3SEG_DEVICE": "cpu", "S3SEG_THRESHOLD": "0"}
    model["S3SEG_VIDEO_FRAME_COST"] = "0.5"
    proc, url, log = serve_process(pg, s3_server, bucket, keys, prefix, tmp_path, model)
    user = new_user(admin)
    progress = "select status, frames_done from public.segmentation_results where id = %s"
    deadline = time.monotonic() + 120
    try:
        headers = {"Authorization": f"Bearer {keys.token(user)}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            video_id = upload_video(http, clip)["video_id"]
            task_id = ok(http.post("/api/v1/segment", json={"video_id": video_id, "text_prompt": "person"}), 202)[
                "task_id"
            ]
        while (row := admin.execute(progress, (task_id,)).fetchone())[1] < 5:  # mid-clip
            assert row[0] in ("pending", "processing") and time.monotonic() < deadline, (row, log.read_text())
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    status, done = admin.execute(progress, (task_id,)).fetchone()
    assert status == "processing" and 5 <= done < 60, (status, done)
    stack = stack_factory(task_timeout_s=3, prefix=prefix, video_frame_cost=0.5)
    with stack.client(user) as http:
        task = wait_done(http, task_id, timeout_s=120)
        assert (task["status"], task["metadata"]["attempts"], task["frames_done"]) == ("done", 2, 60), task
        assert http.get(task["files"]["result"]).json()["videos"][0]["length"] == 60
        assert ok(http.get("/api/v1/me"))["credits"] == 100 - 30
    assert one(admin, "select count(*) from public.usage_logs where user_id = %s", user) == 1
