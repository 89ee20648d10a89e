"""docs/api.md's curl walkthrough, run as written (bash, curl, jq) against a real local-mode server: an image,
then a video followed with `curl -N` on its events."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from _server import LoopbackServer
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.server import create_app

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def walkthrough() -> str:
    found = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", DOC.read_text(), re.S)
    assert found, "docs/api.md lost its walkthrough block"
    return found.group(1)


@pytest.mark.integration
def test_curl_walkthrough_works(engine: Sam3Engine, photo_path: Path, tmp_path: Path) -> None:
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    from _video import make_clip

    (tmp_path / "examples").mkdir()
    shutil.copy(photo_path, tmp_path / "examples" / "grace_hopper.jpg")
    make_clip(tmp_path / "examples" / "clip.mp4", n=6)
    settings = Settings(api_key="secret", threshold=0.0, data_dir=tmp_path / "data")
    server = LoopbackServer(create_app(engine, settings))
    try:
        env = {"PATH": os.environ["PATH"], "API": server.url, "KEY": "secret"}
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", walkthrough()],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr
    status, listed, instances, _, last_event, frames = run.stdout.split()
    assert status == "done" and re.fullmatch(r"[0-9a-f-]{36}", listed) and int(instances) > 0, run.stdout
    assert (tmp_path / "mask.png").read_bytes().startswith(b"\x89PNG")
    assert (last_event, frames) == ("done", "6"), run.stdout  # the video's events end with done; its tracks
    assert (tmp_path / "overlay.mp4").read_bytes()[4:8] == b"ftyp"
