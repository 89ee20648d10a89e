"""The release artefacts, as a user installs them: `python -m build` makes an sdist and a wheel; the wheel
alone (the light client: no torch, no transformers) installs into a clean virtualenv and segments through a
real `s3seg serve` on loopback, with the same result as this process's engine; local inference there fails
with one line naming the extra. Needs PyPI for the light dependencies, as any `pip install` does."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from _server import LoopbackServer
from s3seg import from_coco
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.images import load_image
from s3seg.server import create_app
from s3seg.types import SegmentOptions

ROOT = Path(__file__).resolve().parent.parent
KEY = "packaging-key"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def light_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with only the wheel and its base dependencies."""
    env_dir = tmp_path_factory.mktemp("light") / "venv"
    venv.create(env_dir, with_pip=True)
    [wheel] = dist.glob("s3seg-*.whl")
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    return env_dir / "bin"


@pytest.fixture(scope="module")
def server(engine: Sam3Engine) -> Iterator[LoopbackServer]:
    srv = LoopbackServer(create_app(engine, Settings(api_key=KEY)))
    yield srv
    srv.stop()


def test_sdist_and_wheel_carry_the_package(dist: Path) -> None:
    [wheel] = dist.glob("s3seg-*.whl")
    [sdist] = dist.glob("s3seg-*.tar.gz")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    assert "s3seg/py.typed" in names and "s3seg/engine/_sam3.py" in names
    assert {"s3seg/web/index.html", "s3seg/web/main.js", "s3seg/web/style.css"} <= set(names)  # the web app
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("src/s3seg/cli/__init__.py") for m in members)
    assert any(m.endswith("supabase/migrations/20261122000000_init.sql") for m in members)


def test_light_install_has_no_torch_and_segments_on_a_server(
    light_venv: Path, server: LoopbackServer, engine: Sam3Engine, photo_path: Path, tmp_path: Path
) -> None:
    listed = subprocess.run(
        [str(light_venv / "python"), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True
    ).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "s3seg" in installed
    assert not installed & {"torch", "torchvision", "transformers", "huggingface-hub"}

    args = [str(light_venv / "s3seg"), "segment", str(photo_path), "person", "--threshold", "0.2"]
    done = subprocess.run(
        [*args, "--server", server.url, "--api-key", KEY, "--out", str(tmp_path / "remote")],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    [remote] = from_coco(json.loads((tmp_path / "remote" / "grace_hopper.json").read_text()))
    [here] = engine.segment([load_image(photo_path).array], ["person"], options=SegmentOptions(threshold=0.2))
    assert remote.instances == here.instances


def test_light_install_says_which_extra_brings_local_inference(
    light_venv: Path, photo_path: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(light_venv / "s3seg"), "segment", str(photo_path), "person", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 5, done.stderr
    assert "local inference needs torch" in done.stderr
    assert "pip install 's3seg[local]'" in done.stderr  # the brackets survive the console
    assert "Traceback" not in done.stderr
