# ruff: noqa: E501  (one case per line: the table reads as a table)
"""Hand-made hostile inputs against a real `s3seg serve` on loopback (tiny model, local mode: the API key
for the inference routes and the public API, SQLite store, local storage). Each case has its expected status
and error code, and the server answers /health afterwards; nothing may answer 5xx."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from _server import LoopbackServer
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.server import create_app

KEY = "hostile-key"
MAX_PIXELS = 4_000_000


def _png(width: int = 32, height: int = 24, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A 1-bit PNG of 3000×3000 pixels (a few kB) — over MAX_PIXELS once decoded."""
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


PNG = _png()
B64 = base64.b64encode(PNG).decode()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostileboundary") -> dict[str, Any]:
    """A raw multipart body (name, filename or None, bytes), byte for byte as given: httpx would refuse
    or re-encode some of what these cases send."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n" if filename else b""
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content": out, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


def _json(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def _predict(**fields: Any) -> dict[str, Any]:
    # json.dumps writes a lone surrogate as the escape \ud800, which every JSON parser accepts
    return _json(json.dumps({"image": B64, **fields}))


def _video(**fields: Any) -> dict[str, Any]:
    # a well-formed video id nobody uploaded: the selection is refused before the upload is looked for
    return _json(json.dumps({"video_id": "0" * 32 + ".mp4", "text_prompt": "dog", **fields}))


class Case:
    def __init__(
        self, name: str, method: str, path: str, body: Callable[[], dict[str, Any]], status: int, code: str | None
    ) -> None:
        self.name, self.method, self.path, self.body, self.status, self.code = name, method, path, body, status, code


def _cases() -> list[Case]:
    bomb = _bomb()
    truncated = PNG[: len(PNG) // 2]
    polyglot = PNG + b"<?php system($_GET['c']); ?>" + b"PK\x03\x04" + b"\x00" * 64  # PNG + script + zip head
    html_as_png = b"<html><script>alert(1)</script></html>"
    return [
        # text that is not proper Unicode, control characters, NUL
        Case("surrogate prompt /predict", "POST", "/api/v1/predict", lambda: _predict(prompts=["\ud800"]), 422, "INVALID_TEXT"),
        Case("surrogate prompt /predict/batch", "POST", "/api/v1/predict/batch",
             lambda: _json(json.dumps({"items": [{"image": B64, "prompts": ["a\udfff"]}]})), 422, "INVALID_TEXT"),
        Case("surrogate name /predict", "POST", "/api/v1/predict", lambda: _predict(prompts=["dog"], name="\ud800"), 422, "INVALID_TEXT"),
        Case("surrogate text_prompt /segment", "POST", "/api/v1/segment",
             lambda: _json(json.dumps({"image_url": "https://example.com/a.jpg", "text_prompt": "\ud800"})), 422, "INVALID_TEXT"),
        Case("surrogate project /segment", "POST", "/api/v1/segment",
             lambda: _json(json.dumps({"image_url": "https://example.com/a.jpg", "text_prompt": "dog", "project": "p\ud83d"})), 422, "INVALID_TEXT"),
        Case("NUL in prompt", "POST", "/api/v1/predict", lambda: _predict(prompts=["do\x00g"]), 422, "INVALID_TEXT"),
        Case("control chars in prompt", "POST", "/api/v1/predict", lambda: _predict(prompts=["\x1b[31mdog"]), 422, "INVALID_TEXT"),
        Case("NUL in name", "POST", "/api/v1/predict", lambda: _predict(prompts=["dog"], name="a\x00b"), 422, "INVALID_TEXT"),
        Case("start after end /segment", "POST", "/api/v1/segment", lambda: _video(start="5f", end="3f"), 422, "BAD_RANGE"),
        Case("start equal to end /segment", "POST", "/api/v1/segment", lambda: _video(start="1.5", end="1.5s"), 422, "BAD_RANGE"),
        Case("negative start /segment", "POST", "/api/v1/segment", lambda: _video(start="-1"), 422, "BAD_RANGE"),
        Case("fractional frame /segment", "POST", "/api/v1/segment", lambda: _video(end="2.5f"), 422, "BAD_RANGE"),
        Case("start for an image /segment", "POST", "/api/v1/segment",
             lambda: _json(json.dumps({"image_url": "https://example.com/a.jpg", "text_prompt": "dog", "start": "1"})), 422, "INVALID_REQUEST"),
        Case("NUL in text_prompts /segment", "POST", "/api/v1/segment",
             lambda: _json(json.dumps({"image_url": "https://example.com/a.jpg", "text_prompts": ["a\x00"]})), 422, "INVALID_TEXT"),
        Case("invalid UTF-8 multipart prompt", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "a.png", PNG), ("prompts", None, b"\xff\xfe\xfa")]), 422, "INVALID_TEXT"),
        Case("invalid UTF-8 JSON", "POST", "/api/v1/predict",
             lambda: {"content": b'{"image": "' + B64.encode() + b'", "prompts": ["\xff\xfe"]}', "headers": {"Content-Type": "application/json"}},
             422, "INVALID_REQUEST"),
        # duplicate fields
        Case("two image fields /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "a.png", PNG), ("image", "b.png", PNG), ("prompts", None, b"dog")]), 422, "DUPLICATE_FIELD"),
        Case("two threshold fields /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "a.png", PNG), ("prompts", None, b"dog"), ("threshold", None, b"0.1"), ("threshold", None, b"0.9")]),
             422, "DUPLICATE_FIELD"),
        Case("two file fields /upload", "POST", "/api/v1/upload",
             lambda: _multipart([("file", "a.png", PNG), ("file", "b.png", PNG)]), 422, "DUPLICATE_FIELD"),
        # images: bombs, truncated, polyglots, not images
        Case("decompression bomb /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "bomb.png", bomb), ("prompts", None, b"dog")]), 413, "IMAGE_TOO_LARGE"),
        Case("decompression bomb /upload", "POST", "/api/v1/upload", lambda: _multipart([("file", "bomb.png", bomb)]), 413, "IMAGE_TOO_LARGE"),
        Case("truncated PNG /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "t.png", truncated), ("prompts", None, b"dog")]), 415, "UNSUPPORTED_IMAGE"),
        Case("truncated PNG /upload", "POST", "/api/v1/upload", lambda: _multipart([("file", "t.png", truncated)]), 415, "UNSUPPORTED_IMAGE"),
        Case("HTML named .png /upload", "POST", "/api/v1/upload", lambda: _multipart([("file", "x.png", html_as_png)]), 415, "UNSUPPORTED_IMAGE"),
        Case("HTML as kind=video /upload", "POST", "/api/v1/upload",
             lambda: _multipart([("file", "x.gif", html_as_png), ("kind", None, b"video")]), 415, "UNSUPPORTED_VIDEO"),
        Case("two kind fields /upload", "POST", "/api/v1/upload",
             lambda: _multipart([("file", "a.png", PNG), ("kind", None, b"video"), ("kind", None, b"image")]), 422, "DUPLICATE_FIELD"),
        Case("kind as a file /upload", "POST", "/api/v1/upload",
             lambda: _multipart([("file", "a.png", PNG), ("kind", "k.txt", b"video")]), 422, "INVALID_REQUEST"),
        Case("PNG+PHP+ZIP polyglot /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "p.png", polyglot), ("prompts", None, b"dog")]), 200, None),
        Case("empty image /predict", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "e.png", b""), ("prompts", None, b"dog")]), 415, "UNSUPPORTED_IMAGE"),
        # sizes and numbers
        Case("10,000 prompts", "POST", "/api/v1/predict", lambda: _predict(prompts=[f"p{i}" for i in range(10_000)]), 422, "INVALID_REQUEST"),
        Case("NaN box", "POST", "/api/v1/predict", lambda: _json(f'{{"image": "{B64}", "boxes": [{{"box": [NaN, 0, 5, 5]}}]}}'), 422, None),
        Case("Infinity box", "POST", "/api/v1/predict", lambda: _json(f'{{"image": "{B64}", "boxes": [{{"box": [0, 0, Infinity, 5]}}]}}'), 422, None),
        Case("huge box", "POST", "/api/v1/predict", lambda: _predict(boxes=[{"box": [0, 0, 1e308, 1e308]}]), 200, None),
        Case("1e400 box", "POST", "/api/v1/predict", lambda: _json(f'{{"image": "{B64}", "boxes": [{{"box": [0, 0, 1e400, 5]}}]}}'), 422, None),
        Case("huge max_instances", "POST", "/api/v1/predict", lambda: _predict(prompts=["dog"], max_instances=10**30), 200, None),
        Case("NaN threshold multipart", "POST", "/api/v1/predict",
             lambda: _multipart([("image", "a.png", PNG), ("prompts", None, b"dog"), ("threshold", None, b"nan")]), 422, None),
        Case("deeply nested JSON", "POST", "/api/v1/predict", lambda: _json("[" * 100_000 + "]" * 100_000), 422, None),
        # authentication comes before the body is read
        Case("/segment bad JSON, no key", "POST", "/api/v1/segment", lambda: {**_json("{not json"), "auth": False}, 401, "UNAUTHORIZED"),
        Case("/segment bad JSON, wrong key", "POST", "/api/v1/segment",
             lambda: {"content": b"{not json", "headers": {"Content-Type": "application/json", "X-API-Key": "wrong"}}, 401, "UNAUTHORIZED"),
        Case("/predict bad JSON, no key", "POST", "/api/v1/predict", lambda: {**_json("{not json"), "auth": False}, 401, "UNAUTHORIZED"),
        Case("/upload bad multipart, no key", "POST", "/api/v1/upload", lambda: {**_multipart([("x", None, b"y")]), "auth": False}, 401, "UNAUTHORIZED"),
        # wrong method
        Case("GET /predict", "GET", "/api/v1/predict", lambda: {}, 405, "METHOD_NOT_ALLOWED"),
        Case("DELETE /health", "DELETE", "/health", lambda: {}, 405, "METHOD_NOT_ALLOWED"),
    ] + [
        Case(f"SSRF {url}", "POST", "/api/v1/predict", lambda url=url: _predict(image=None, image_url=url, prompts=["dog"]), 400, "URL_NOT_ALLOWED")
        for url in SSRF_URLS
    ] + [
        Case(f"non-http URL /segment {url}", "POST", "/api/v1/segment",
             lambda url=url: _json(json.dumps({"image_url": url, "text_prompt": "dog"})), 422, "INVALID_REQUEST")
        for url in ("file:///etc/passwd", "gopher://127.0.0.1:25/", "javascript:alert(1)")
    ]  # fmt: skip


SSRF_URLS = [
    "http://127.0.0.1/",
    "http://localhost:22/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://0.0.0.0/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:25/",
    "ftp://127.0.0.1/",
    "http://user@127.0.0.1/",
]


@pytest.fixture(scope="module")
def server(engine: Sam3Engine) -> Iterator[LoopbackServer]:
    data = Path(tempfile.mkdtemp(prefix="s3seg-hostile-"))
    settings = Settings(api_key=KEY, data_dir=data, threshold=0.2, max_pixels=MAX_PIXELS, max_prompts=16)
    s = LoopbackServer(create_app(engine, settings), headers={"X-API-Key": KEY})
    yield s
    s.stop()
    shutil.rmtree(data, ignore_errors=True)


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input(server: LoopbackServer, case: Case) -> None:
    body = case.body()
    headers = {"X-API-Key": KEY, **body.pop("headers", {})}
    if not body.pop("auth", True):
        headers.pop("X-API-Key")
    response = httpx.request(case.method, server.url + case.path, headers=headers, timeout=60, **body)
    assert response.status_code < 500, response.text
    if case.status is not None:
        assert response.status_code == case.status, response.text
    answer = response.json()
    if response.status_code >= 400:
        assert answer["ok"] is False and answer["error"]["message"], answer
        if case.code is not None:
            assert answer["error"]["code"] == case.code, answer
        assert "Traceback" not in response.text
    if response.status_code == 405:
        assert response.headers["Allow"], response.headers
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"]
    health = server.http.get("/health")
    assert health.status_code == 200 and health.json()["data"]["status"] == "ok"


def test_upload_keeps_the_only_file(server: LoopbackServer) -> None:
    """One `file` answers 201 with that file's name (two are refused above, not silently the second kept)."""
    answer = server.http.post("/api/v1/upload", **_multipart([("file", "only.png", PNG)]))
    assert answer.status_code == 201, answer.text
    assert answer.json()["data"]["file_name"] == "only.png"


def test_valid_unicode_passes(server: LoopbackServer) -> None:
    """Proper Unicode (accents, CJK, emoji, tabs collapsed) is not mistaken for hostile text."""
    answer = server.http.post("/api/v1/predict", **_predict(prompts=["chien à l'œil", "狗", "🐕\tdog"], name="ü.png"))
    assert answer.status_code == 200, answer.text
    doc = answer.json()["data"]
    assert doc["images"][0]["s3seg"]["prompts"] == ["chien à l'œil", "狗", "🐕 dog"]
    assert doc["images"][0]["file_name"] == "ü.png"


def test_a_500_keeps_the_connection_usable(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected failure answers the 500 envelope, and the keep-alive connection serves the next request
    (or the answer says Connection: close)."""
    import s3seg.server._predict as app_module

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "_coco", broken)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        body = json.dumps({"image": B64, "prompts": ["dog"]})
        for _ in range(2):
            conn.request("POST", "/api/v1/predict", body, {"Content-Type": "application/json", "X-API-Key": KEY})
            answer = conn.getresponse()
            text = answer.read()
            assert answer.status == 500
            error = json.loads(text)["error"]
            assert error["code"] == "INTERNAL_ERROR" and "boom" not in error["message"]
            if (answer.getheader("Connection") or "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_client_sees_a_clear_error(server: LoopbackServer) -> None:
    """The SDK turns the new codes back into UsageError with the server's message."""
    from s3seg.errors import UsageError, error_from_response

    answer = server.http.post("/api/v1/predict", **_predict(prompts=["\ud800"]))
    error = answer.json()["error"]
    raised = error_from_response(answer.status_code, error["code"], error["message"], error.get("hint"), where="s")
    assert isinstance(raised, UsageError)
    assert httpx.codes.is_client_error(answer.status_code)


def test_openapi_refs_resolve_and_bodies_are_declared(server: LoopbackServer) -> None:
    """Every $ref of /openapi.json resolves in the document itself (no pydantic `#/$defs/...` left), and the
    routes that read their body themselves still declare it."""
    spec = httpx.get(server.url + "/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if isinstance(node.get("$ref"), str) else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"], ref
    for path in ("/api/v1/predict", "/api/v1/predict/batch", "/api/v1/segment"):
        assert "application/json" in spec["paths"][path]["post"]["requestBody"]["content"], path


# Each operation's refusals, as the routes answer them (the error envelope each time); 2xx not listed.
REFUSALS = {
    ("get", "/health"): set(),
    ("get", "/api/v1/model/info"): {401},
    ("post", "/api/v1/predict"): {400, 401, 413, 415, 422, 503},
    ("post", "/api/v1/predict/batch"): {400, 401, 413, 415, 422, 503},
    ("post", "/api/v1/predict/video"): {401, 413, 415, 422, 503},
    ("get", "/api/v1/me"): {401, 403, 503},
    ("post", "/api/v1/upload"): {401, 413, 415, 422, 429, 503},
    ("post", "/api/v1/segment"): {401, 402, 403, 404, 413, 422, 429, 503},
    ("get", "/api/v1/tasks/{task_id}"): {401, 404, 422, 503},
    ("get", "/api/v1/tasks/{task_id}/events"): {401, 404, 503},
    ("get", "/api/v1/results"): {401, 422, 503},
    ("get", "/api/v1/results/{task_id}"): {401, 404, 503},
    ("get", "/api/v1/results/{task_id}/files/{name}"): {401, 404, 422, 503},
}


def test_openapi_declares_each_routes_refusals(server: LoopbackServer) -> None:
    """Every operation lists the error statuses it answers (per route, not per router), each with the error
    envelope; and every status the hostile table gets from a documented operation is declared there."""
    spec = httpx.get(server.url + "/openapi.json").json()
    declared = {
        (method, path): {int(status) for status in op["responses"] if not status.startswith("2")}
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    assert declared == REFUSALS
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                if not status.startswith("2"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
    for case in CASES:
        op = spec["paths"].get(case.path, {}).get(case.method.lower())
        if op is not None and case.status is not None:
            assert str(case.status) in op["responses"], (case.name, case.status)


def test_openapi_says_what_the_server_enforces(server: LoopbackServer) -> None:
    """Exactly one of image/image_url (image_id/video_id/image_url), at least one prompt or box, threshold
    ranges: the bodies' schemas refuse what the server refuses."""
    import jsonschema

    spec = httpx.get(server.url + "/openapi.json").json()

    def valid(schema: dict[str, Any], value: Any) -> bool:
        root = {**schema, "components": spec["components"]}
        return jsonschema.Draft202012Validator(root).is_valid(value)

    predict = {"$ref": "#/components/schemas/PredictIn"}
    box = {"box": [0, 0, 5, 5]}
    assert valid(predict, {"image": B64, "prompts": ["dog"]})
    assert valid(predict, {"image_url": "https://example.com/a.jpg", "image": None, "boxes": [box]})
    assert not valid(predict, {"image": B64, "image_url": "https://example.com/a.jpg", "prompts": ["dog"]})
    assert not valid(predict, {"prompts": ["dog"]})
    assert not valid(predict, {"image": B64})
    assert not valid(predict, {"image": B64, "prompts": []})
    assert not valid(predict, {"image": B64, "prompts": ["dog"], "threshold": 1.5})
    segment = {"$ref": "#/components/schemas/SegmentIn"}
    assert valid(segment, {"image_id": "x", "text_prompt": "dog"})
    assert not valid(segment, {"image_id": "x", "image_url": "https://example.com/a.jpg", "text_prompt": "dog"})
    assert not valid(segment, {"image_id": "x", "text_prompt": ""})
    form = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert valid(form, {"image": "bytes", "prompts": ["dog"]})
    assert valid(form, {"image": "bytes", "boxes": ["0,0,5,5"]})
    assert not valid(form, {"image": "bytes"})
    assert not valid(form, {"image": "bytes", "prompts": ["dog"], "threshold": -0.5})
    assert not valid(form, {"prompts": ["dog"]})
