"""Model loading errors users hit: gated, missing, offline, bad paths.

The Hugging Face Hub cannot be reached from here, so a small HTTP server on loopback stands in for it
(HF_ENDPOINT): it answers the Hub's real error codes (`X-Error-Code: GatedRepo`, `RepoNotFound`), which is
what huggingface_hub turns into its exceptions. Everything from huggingface_hub down is real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from s3seg.engine import Sam3Engine
from s3seg.errors import DeviceError, ModelError


class _FakeHub(BaseHTTPRequestHandler):
    seen_auth: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization"))
        if "gated" in self.path:
            self._error(403, "GatedRepo", "Access to model org/gated is restricted. You must have access to it.")
        else:
            self._error(404, "RepoNotFound", "Repository not found")

    do_HEAD = do_GET

    def _error(self, status: int, code: str, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeHub.seen_auth = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _segment(model: str, photo: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "S3SEG_"))}
    return subprocess.run(
        [sys.executable, "-m", "s3seg", "segment", str(photo), "dog", "--model", model],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            **clean,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5",
            **env,
        },
    )


def test_gated_model_says_accept_licence_and_set_token(fake_hub: str, photo_path: Path, tmp_path: Path) -> None:
    proc = _segment("org/gated", photo_path, tmp_path, HF_ENDPOINT=fake_hub, HF_TOKEN="hf_secret123")
    assert proc.returncode == ModelError.exit_code
    assert "org/gated is a gated model" in proc.stderr
    assert "accept the licence at https://huggingface.co/org/gated" in proc.stderr and "HF_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr and "hf_secret123" not in proc.stderr
    assert "Bearer hf_secret123" in _FakeHub.seen_auth  # the token from the environment was sent


def test_missing_model_says_check_id_or_pass_a_path(fake_hub: str, photo_path: Path, tmp_path: Path) -> None:
    proc = _segment("org/nothing-here", photo_path, tmp_path, HF_ENDPOINT=fake_hub)
    assert proc.returncode == ModelError.exit_code
    assert "'org/nothing-here' not found on the Hub" in proc.stderr
    assert "pass a local directory" in proc.stderr and "Traceback" not in proc.stderr


def test_offline_and_not_cached(photo_path: Path, tmp_path: Path) -> None:
    proc = _segment("facebook/sam3", photo_path, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == ModelError.exit_code
    assert "not in the local cache and offline mode is on" in proc.stderr


def test_offline_setting_reaches_the_hub_client(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="offline mode is on"):
        Sam3Engine.load("facebook/sam3", device="cpu", offline=True)


def test_paths_that_do_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model path not found"):
        Sam3Engine.load(str(tmp_path / "weights" / "sam3.pt"), device="cpu")
    with pytest.raises(ModelError, match="model path not found"):
        Sam3Engine.load("./my-model", device="cpu")


def test_directory_with_broken_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load SAM3 weights"):
        Sam3Engine.load(str(broken), device="cpu")


def test_unavailable_devices() -> None:
    from s3seg.engine._load import pick_device, pick_dtype

    with pytest.raises(DeviceError, match="no CUDA GPU"):
        pick_device("cuda:0")
    assert pick_device("auto").type == "cpu"  # this machine has no accelerator
    assert str(pick_dtype("auto", pick_device("cpu"))) == "torch.float32"
