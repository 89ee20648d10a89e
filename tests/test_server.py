"""`s3seg serve`: a real uvicorn server on 127.0.0.1 with the tiny checkpoint; clients talk HTTP to it."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import s3seg
from _cli import run as run_cli
from _server import LoopbackServer, free_port
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.server import create_app
from s3seg.server._schemas import PredictIn
from s3seg.types import SegmentationResult, SegmentOptions, from_coco

KEY = "test-key-123"
OPTIONS = SegmentOptions(threshold=0.2)


class Server(LoopbackServer):
    def __init__(self, engine: Sam3Engine, **settings: Any) -> None:
        settings.setdefault("data_dir", Path(tempfile.mkdtemp(prefix="s3seg-server-")))
        self.settings = Settings(**{"api_key": KEY, "threshold": 0.2, **settings})
        super().__init__(create_app(engine, self.settings), headers={"X-API-Key": KEY})

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.settings.data_dir, ignore_errors=True)


@pytest.fixture
def serve(engine: Sam3Engine) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(**settings: Any) -> Server:
        servers.append(Server(engine, **settings))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve(max_body_mb=1, max_prompts=4, max_prompt_chars=40, max_pixels=2_000_000)


@pytest.fixture
def gate(engine: Sam3Engine, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Pause the (real) engine until the test releases it, to line up requests deterministically."""
    opened = threading.Event()
    original = engine.run

    def gated(requests):  # type: ignore[no-untyped-def]
        assert opened.wait(30), "gate never opened"
        return original(requests)

    monkeypatch.setattr(engine, "run", gated)
    return opened


def local(engine: Sam3Engine, image: np.ndarray, prompts: list[str]) -> SegmentationResult:
    return engine.segment([image], prompts, options=OPTIONS)[0]


def envelope_error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["ok"] is False and set(body["error"]) >= {"code", "message"}
    return response.status_code, body["error"]["code"]


def test_requests_before_the_lifespan_has_run_are_503_starting(engine: Sam3Engine, tmp_path: Path) -> None:
    """Between create_app and its lifespan's start (and after it stops) the public API and the model queue
    do not exist yet: their routes answer 503 STARTING; what exists already (the model) answers."""
    import asyncio

    app = create_app(engine, Settings(data_dir=tmp_path))

    async def ask(method: str, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # calls the app without running its lifespan
        async with httpx.AsyncClient(transport=transport, base_url="http://s3seg") as client:
            return await client.request(method, path)

    assert asyncio.run(ask("GET", "/api/v1/model/info")).status_code == 200
    for method, path, part in (("GET", "/api/v1/results", "public API"), ("POST", "/api/v1/predict", "model queue")):
        response = asyncio.run(ask(method, path))
        assert envelope_error(response) == (503, "STARTING")
        assert part in response.json()["error"]["message"]


# --------------------------------------------------------------------------------------- contract
def test_health_needs_no_key_and_reports_the_device(server: Server) -> None:
    body = httpx.get(server.url + "/health").json()
    assert body["ok"] is True
    assert body["data"]["model_loaded"] is True and body["data"]["device"] == "cpu"
    assert body["data"]["gpu_memory"] is None and body["data"]["queue"]["batches"] == 0


def test_model_info(server: Server, tiny_model_dir: Path, photo_path: Path) -> None:
    data = server.http.get("/api/v1/model/info").json()["data"]
    assert data["model"] == tiny_model_dir.name  # its name: the server's paths stay private
    assert str(tiny_model_dir) not in str(data)
    assert data["dtype"] == "float32" and data["image_size"] == 112
    assert data["parameters"] > 1_000_000 and data["limits"]["max_prompts"] == 4
    # the answers name the model as model/info does (one helper: s3seg.server._schemas.public_model)
    photo = ("hopper.jpg", photo_path.read_bytes())
    one = server.http.post("/api/v1/predict", files={"image": photo}, data={"prompts": "dog"}).json()["data"]
    batch = server.http.post("/api/v1/predict/batch", files=[("images", photo)] * 2, data={"prompts": "dog"})
    for doc in (one, batch.json()["data"]):
        assert {image["s3seg"]["model"] for image in doc["images"]} == {tiny_model_dir.name}
        assert str(tiny_model_dir) not in json.dumps(doc)


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}])
def test_api_key_is_required(server: Server, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/api/v1/model/info"), ("POST", "/api/v1/predict"), ("POST", "/api/v1/predict/batch")):
        response = httpx.request(method, server.url + path, headers=headers)
        assert envelope_error(response) == (401, "UNAUTHORIZED")


def test_predict_multipart_equals_local(
    server: Server, engine: Sam3Engine, photo_path: Path, photo: np.ndarray
) -> None:
    response = server.http.post(
        "/api/v1/predict",
        files={"image": ("hopper.jpg", photo_path.read_bytes())},
        data={"prompts": ["person", "tie"], "threshold": "0.2"},
    )
    assert response.status_code == 200, response.text
    [got] = from_coco(response.json()["data"])
    want = local(engine, photo, ["person", "tie"])
    assert got.image == "hopper.jpg" and got.prompts == ("person", "tie")
    assert got.instances == want.instances


def test_predict_json_base64_boxes_and_png_masks(
    server: Server, engine: Sam3Engine, photo_path: Path, photo: np.ndarray
) -> None:
    body = {
        "image": base64.b64encode(photo_path.read_bytes()).decode(),
        "prompts": ["person"],
        "boxes": [{"box": [150, 60, 350, 300]}, {"box": [20, 350, 120, 500], "positive": False}],
        "threshold": 0.2,
        "max_instances": 3,
        "mask_format": "png",
    }
    response = server.http.post("/api/v1/predict", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()["data"]
    assert "mask_png" in doc["annotations"][0] and "segmentation" not in doc["annotations"][0]
    [got] = from_coco(doc)
    want = engine.segment(
        [photo],
        ["person"],
        [s3seg.Box(150, 60, 350, 300), s3seg.Box(20, 350, 120, 500, False)],
        options=SegmentOptions(threshold=0.2, max_instances=3),
    )[0]
    assert got.instances == want.instances


def test_batch_multipart_and_json(server: Server, engine: Sam3Engine, photo_path: Path, photo: np.ndarray) -> None:
    data = photo_path.read_bytes()
    files = [("images", ("a.jpg", data)), ("images", ("b.jpg", data))]
    response = server.http.post("/api/v1/predict/batch", files=files, data={"prompts": "person"})
    assert response.status_code == 200, response.text
    results = from_coco(response.json()["data"])
    assert [r.image for r in results] == ["a.jpg", "b.jpg"]
    want = local(engine, photo, ["person"])
    for r in results:
        np.testing.assert_allclose(r.scores, want.scores, atol=1e-5)  # batched backbone: equal to rounding
    items = [
        {"image": base64.b64encode(data).decode(), "prompts": ["tie"], "name": "x"},
        {"image": base64.b64encode(data).decode(), "prompts": ["person", "tie"], "threshold": 0.99},
    ]
    results = from_coco(server.http.post("/api/v1/predict/batch", json={"items": items}).json()["data"])
    assert [r.prompts for r in results] == [("tie",), ("person", "tie")] and len(results[1]) == 0


def test_openapi_describes_both_body_kinds(server: Server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/health", "/api/v1/model/info", "/api/v1/predict", "/api/v1/predict/batch"} <= set(spec["paths"])
    content = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    ref = content["application/json"]["schema"]["$ref"]  # a reference that resolves in the document
    assert "image_url" in spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    assert httpx.get(server.url + "/docs").status_code == 200
    schemes = spec["components"]["securitySchemes"]  # /docs offers "Authorize" with the key header
    assert any(s["type"] == "apiKey" and s["name"] == "X-API-Key" and s["in"] == "header" for s in schemes.values())


def test_openapi_has_a_schema_for_every_2xx_answer(server: Server) -> None:
    """Every route of the whole document (model, public API, events) says what a success answers."""
    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref", "")
        return resolve(schemas[ref.rsplit("/", 1)[-1]]) if ref else schema

    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            answers = {code: a for code, a in operation["responses"].items() if code.startswith("2")}
            assert answers, (method, path)
            for code, answer in answers.items():
                assert answer.get("content"), (method, path, code)
                for media, body in answer["content"].items():
                    schema = resolve(body.get("schema") or {})
                    assert schema.get("type") or schema.get("properties"), (method, path, code, media)
                    if media == "application/json" and path != "/api/v1/results/{task_id}/files/{name}":
                        data = resolve(schema["properties"]["data"])  # the envelope's payload, typed
                        assert data.get("properties"), (method, path, code)
                    checked += 1
    assert checked >= 11
    envelope = resolve(
        spec["paths"]["/api/v1/tasks/{task_id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    )
    assert {"task_id", "status", "files", "result_url"} <= set(resolve(envelope["properties"]["data"])["properties"])
    multipart = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = set(multipart["properties"])
    assert fields == {"image", *PredictIn.model_fields} - {"image_url", "name"}  # generated from the model


def test_stopping_the_server_closes_its_backends(engine: Sam3Engine, tmp_path: Path) -> None:
    """The lifespan closes what the server was given (store, storage) when it stops."""
    from s3seg.storage import LocalStorage
    from s3seg.store._supabase import SupabaseStore

    # A store that holds connections (its own HTTP client, to a loopback port where nothing listens).
    store = SupabaseStore(f"http://127.0.0.1:{free_port()}", "service-key")
    storage = LocalStorage(tmp_path / "files")
    server = LoopbackServer(create_app(engine, Settings(data_dir=tmp_path), store=store, storage=storage))
    try:
        assert httpx.get(server.url + "/health").json()["data"]["model_loaded"] is True
        assert not store._http.is_closed
    finally:
        server.stop()
    assert store._http.is_closed


# ----------------------------------------------------------------------------------------- errors
def test_error_paths(server: Server, photo_path: Path, tmp_path: Path) -> None:
    def post(**kwargs: Any) -> tuple[int, str]:
        return envelope_error(server.http.post("/api/v1/predict", **kwargs))

    def image(name: str, data: bytes, **fields: Any) -> tuple[int, str]:
        return post(files={"image": (name, data)}, data=fields)

    jpeg = photo_path.read_bytes()
    assert image("x.txt", b"not an image at all", prompts="dog") == (415, "UNSUPPORTED_IMAGE")
    assert image("x.jpg", jpeg[:3000], prompts="dog") == (415, "UNSUPPORTED_IMAGE")
    assert image("big.jpg", b"\0" * 1_200_000, prompts="dog") == (413, "PAYLOAD_TOO_LARGE")
    big = tmp_path / "big.png"
    from PIL import Image

    Image.new("L", (2000, 1500)).save(big)  # 3 MP over the 2 MP limit, but a small file
    assert image("big.png", big.read_bytes(), prompts="dog") == (413, "IMAGE_TOO_LARGE")
    assert image("x.jpg", jpeg, prompts=["a", "b", "c", "d", "e"]) == (422, "INVALID_REQUEST")
    assert image("x.jpg", jpeg, prompts="x" * 41) == (422, "INVALID_REQUEST")
    assert image("x.jpg", jpeg, prompts="dog", threshold="2") == (422, "VALIDATION_ERROR")
    assert image("x.jpg", jpeg, prompts="dog", boxes="1,2,3") == (422, "INVALID_REQUEST")
    assert image("x.jpg", jpeg) == (422, "INVALID_REQUEST")  # nothing to segment
    assert post(json={"image": "***", "prompts": ["dog"]}) == (422, "INVALID_REQUEST")
    assert post(json={"prompts": ["dog"]}) == (422, "INVALID_REQUEST")
    assert post(content=b"{", headers={"Content-Type": "application/json"}) == (422, "INVALID_REQUEST")
    assert post(content=b"x", headers={"Content-Type": "text/plain"}) == (422, "INVALID_REQUEST")
    assert envelope_error(server.http.get("/api/v1/nothing")) == (404, "NOT_FOUND")


def test_batch_image_count_limits(serve: Callable[..., Server], photo_path: Path) -> None:
    server = serve(max_images=2)
    data = photo_path.read_bytes()
    encoded = base64.b64encode(data).decode()
    too_many = {"items": [{"image": encoded, "prompts": ["person"]}] * 3}
    assert envelope_error(server.http.post("/api/v1/predict/batch", json=too_many)) == (422, "INVALID_REQUEST")
    assert envelope_error(server.http.post("/api/v1/predict/batch", json={"items": []})) == (422, "INVALID_REQUEST")
    files = [("images", (f"{i}.jpg", data)) for i in range(3)]
    response = server.http.post("/api/v1/predict/batch", files=files, data={"prompts": "person"})
    assert envelope_error(response) == (422, "INVALID_REQUEST") and "at most 2" in response.json()["error"]["message"]


def test_streamed_body_over_the_limit_without_content_length(server: Server) -> None:
    def chunks() -> Iterator[bytes]:  # a well-formed multipart start, then a file part that never ends
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(20):
            yield b"\0" * 100_000

    response = server.http.post(
        "/api/v1/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert envelope_error(response) == (413, "PAYLOAD_TOO_LARGE")


class _Images(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/photo.jpg")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host(photo_path: Path) -> Iterator[str]:
    _Images.body = photo_path.read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_image_urls(serve: Callable[..., Server], engine: Sam3Engine, image_host: str, photo: np.ndarray) -> None:
    strict, lenient = serve(), serve(allow_private_urls=True)
    for url in (f"{image_host}/photo.jpg", "http://10.0.0.1/x.jpg", "http://localhost/x.jpg"):
        response = strict.http.post("/api/v1/predict", json={"image_url": url, "prompts": ["person"]})
        assert envelope_error(response) == (400, "URL_NOT_ALLOWED")  # loopback and private hosts are refused
    response = strict.http.post("/api/v1/predict", json={"image_url": "file:///etc/passwd", "prompts": ["x"]})
    assert envelope_error(response) == (400, "URL_NOT_ALLOWED")
    for path in ("/photo.jpg", "/redirect"):
        response = lenient.http.post("/api/v1/predict", json={"image_url": image_host + path, "prompts": ["person"]})
        assert response.status_code == 200, response.text
        [got] = from_coco(response.json()["data"])
        assert got.instances == local(engine, photo, ["person"]).instances


# ----------------------------------------------------------------------------------- throughput
def test_parallel_clients_are_batched_and_all_correct(
    serve: Callable[..., Server], engine: Sam3Engine, gate: threading.Event, photo_path: Path, photo: np.ndarray
) -> None:
    server = serve(max_batch=8)
    prompts = [["person"], ["tie"], ["person", "tie"], ["medal"], ["person"], ["tie"]]

    def call(p: list[str]) -> SegmentationResult:
        with s3seg.Client(server_url=server.url, api_key=KEY, settings=Settings(threshold=0.2)) as client:
            return client.segment(photo_path, p)

    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(call, p) for p in prompts]
        deadline = time.monotonic() + 20
        while httpx.get(server.url + "/health").json()["data"]["queue"]["queued"] < len(prompts):
            assert time.monotonic() < deadline, "requests did not queue"
            time.sleep(0.02)
        gate.set()
        results = [f.result() for f in futures]
    stats = httpx.get(server.url + "/health").json()["data"]["queue"]
    assert stats["images"] == len(prompts) and stats["largest_batch"] > 1  # batching happened
    for p, got in zip(prompts, results, strict=True):
        want = local(engine, photo, p)
        assert got.labels == want.labels
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_full_queue_answers_503_with_retry_after(
    serve: Callable[..., Server], gate: threading.Event, photo_path: Path
) -> None:
    server = serve(max_queue=1)
    files = {"image": ("a.jpg", photo_path.read_bytes())}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(server.http.post, "/api/v1/predict", files=files, data={"prompts": "person"})
        deadline = time.monotonic() + 20
        while httpx.get(server.url + "/health").json()["data"]["queue"]["queued"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = server.http.post("/api/v1/predict", files=files, data={"prompts": "person"})
        assert envelope_error(busy) == (503, "BUSY") and busy.headers["retry-after"] == "1"
        gate.set()
        assert first.result().status_code == 200


def test_out_of_memory_fails_only_its_request(
    serve: Callable[..., Server],
    engine: Sam3Engine,
    gate: threading.Event,
    photo_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No GPU here: an out-of-memory error is injected into the real engine for one image size only."""
    import torch

    original = engine._vision

    def vision(pixels):  # type: ignore[no-untyped-def]
        if pixels.shape[0] > 1 or huge.is_set():
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(pixels)

    huge = threading.Event()
    monkeypatch.setattr(engine, "_vision", vision)
    server = serve(max_batch=4)
    data = photo_path.read_bytes()
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                server.http.post, "/api/v1/predict", files={"image": ("a.jpg", data)}, data={"prompts": "person"}
            )
            for _ in range(3)
        ]
        while httpx.get(server.url + "/health").json()["data"]["queue"]["queued"] < 3:
            time.sleep(0.02)
        gate.set()  # the three form one batch, which "runs out of memory"; alone each fits
        assert [f.result().status_code for f in futures] == [200, 200, 200]
    huge.set()
    failed = server.http.post("/api/v1/predict", files={"image": ("a.jpg", data)}, data={"prompts": "person"})
    assert envelope_error(failed) == (503, "OUT_OF_MEMORY")
    huge.clear()
    again = server.http.post("/api/v1/predict", files={"image": ("a.jpg", data)}, data={"prompts": "person"})
    assert again.status_code == 200  # the server kept serving


def test_graceful_shutdown_finishes_in_flight_work(
    serve: Callable[..., Server], gate: threading.Event, photo_path: Path
) -> None:
    server = serve()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            server.http.post,
            "/api/v1/predict",
            files={"image": ("a.jpg", photo_path.read_bytes())},
            data={"prompts": "person"},
        )
        while httpx.get(server.url + "/health").json()["data"]["queue"]["queued"] < 1:
            time.sleep(0.02)
        server.server.should_exit = True  # what SIGTERM does
        time.sleep(0.3)
        gate.set()
        assert pending.result().status_code == 200
    server.thread.join(timeout=30)
    assert not server.thread.is_alive()


# ------------------------------------------------------------------------------- CLI and SDK
def test_cli_remote_equals_local(
    capsys: pytest.CaptureFixture[str],
    server: Server,
    tiny_model_dir: Path,
    photo_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["segment", str(photo_path), "person", "tie", "-t", "0.2", "--max-instances", "5"]
    code, _, _ = run_cli(capsys, *args, "--server", server.url, "--api-key", KEY, "--out", "remote")
    assert code == 0
    code, _, _ = run_cli(capsys, *args, "--model", str(tiny_model_dir), "--out", "local")
    assert code == 0
    for name in ("grace_hopper.json", "grace_hopper.mask.png", "grace_hopper.overlay.jpg"):
        assert (tmp_path / "remote" / name).exists()
    [remote] = from_coco(json.loads((tmp_path / "remote" / "grace_hopper.json").read_text()))
    [here] = from_coco(json.loads((tmp_path / "local" / "grace_hopper.json").read_text()))
    assert remote.model == tiny_model_dir.name and here.model == str(tiny_model_dir)  # the server shows no path
    assert remote == dataclasses.replace(here, model=remote.model)
    assert (tmp_path / "remote" / "grace_hopper.mask.png").read_bytes() == (
        tmp_path / "local" / "grace_hopper.mask.png"
    ).read_bytes()


def test_cli_remote_errors(capsys: pytest.CaptureFixture[str], server: Server, photo_path: Path) -> None:
    code, _, err = run_cli(capsys, "segment", str(photo_path), "dog", "--server", server.url, "--api-key", "nope")
    assert code == s3seg.AuthError.exit_code and "refused" in err and "--api-key" in err and "Traceback" not in err
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    code, _, err = run_cli(capsys, "segment", str(photo_path), "dog", "--server", dead)
    assert code == 8 and "cannot reach the s3seg server" in err


def test_sdk_remote_equals_local(server: Server, engine: Sam3Engine, photo: np.ndarray) -> None:
    with s3seg.Client(server_url=server.url, api_key=KEY, settings=Settings(threshold=0.2)) as client:
        assert client.is_remote
        got = client.segment(photo, ["person"])  # an in-memory array travels as lossless PNG
        assert got.instances == local(engine, photo, ["person"]).instances
        images = [photo, photo[:200].copy(), photo[:, :100].copy()]
        batch = client.segment_batch(images, ["person"])  # sent in flight together
        assert [(r.width, r.height) for r in batch] == [(512, 600), (512, 200), (100, 600)]  # input order kept
        with pytest.raises(s3seg.UsageError, match="at most 4"):
            client.segment(photo, ["a", "b", "c", "d", "e"])
        with pytest.raises(s3seg.ImageError, match="too large"):
            client.segment(np.zeros((1500, 1500, 3), np.uint8), ["a"])


def test_serve_refuses_public_address_without_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("S3SEG_API_KEY", raising=False)
    code, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0")
    assert code == 2 and "refusing to serve on 0.0.0.0 without an API key" in err


def test_the_servers_defaults_apply_unless_the_client_sets_an_option(
    serve: Callable[..., Server], engine: Sam3Engine, photo_path: Path
) -> None:
    import s3seg

    server = serve(threshold=0.0)  # the server's S3SEG_THRESHOLD
    local = s3seg.Client(engine=engine)
    everything, default = local.segment(photo_path, "person", threshold=0.0), local.segment(photo_path, "person")
    assert len(everything) > len(default)  # so the test can tell which threshold applied
    with s3seg.Client(server_url=server.url, api_key=KEY) as remote:
        assert len(remote.segment(photo_path, "person")) == len(everything)
        assert len(remote.segment(photo_path, "person", threshold=0.5)) == len(default)
