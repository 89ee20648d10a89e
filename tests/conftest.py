"""Shared fixtures: a tiny random-weight SAM3 checkpoint written with save_pretrained (s3seg.testing) and
loaded through the same code path as real weights, and a real photo (matplotlib ships Grace Hopper's
portrait)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s3seg.testing import write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-sam3"), "tiny")


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from s3seg.engine import Sam3Engine

    return Sam3Engine.load(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def photo_path() -> Path:
    """A real photograph (JPEG, 512×600) shipped with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="session")
def photo(photo_path: Path) -> np.ndarray:
    from s3seg.images import load_image

    return load_image(photo_path).array
