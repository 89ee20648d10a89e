"""The Python API: `s3seg.segment()` one-liner and `s3seg.Client`, with every image kind users pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import s3seg


@pytest.fixture
def client(engine) -> s3seg.Client:  # type: ignore[no-untyped-def]
    return s3seg.Client(engine=engine, settings=s3seg.Settings(threshold=0.2))


def test_every_image_kind_gives_the_same_result(client: s3seg.Client, photo_path: Path) -> None:
    from_path = client.segment(photo_path, "person")
    with Image.open(photo_path) as im:
        from_pil = client.segment(im, "person")
        from_array = client.segment(np.asarray(im), "person")
    from_bytes = client.segment(photo_path.read_bytes(), "person")
    assert from_path.image == str(photo_path) and from_bytes.image is None
    for other in (from_pil, from_array, from_bytes):
        assert other.instances == from_path.instances


def test_call_options_override_settings(client: s3seg.Client, photo_path: Path) -> None:
    assert len(client.segment(photo_path, "person")) == 20
    assert len(client.segment(photo_path, "person", threshold=0.99)) == 0
    capped = client.segment(photo_path, ["person", "tie"], max_instances=2, boxes=[(150, 60, 350, 300)])
    assert capped.labels == ["person", "person", "tie", "tie"]


def test_batch(client: s3seg.Client, photo_path: Path, photo: np.ndarray) -> None:
    results = client.segment_batch([photo_path, photo[:200]], ["person"])
    assert [(r.width, r.height) for r in results] == [(512, 600), (512, 200)]


def test_one_liner_loads_the_model_once(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, photo_path: Path
) -> None:
    from s3seg import client as client_module
    from s3seg.engine import Sam3Engine

    loads = []
    original = Sam3Engine.from_config.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        Sam3Engine, "from_config", classmethod(lambda cls, c: loads.append(c.model) or original(cls, c))
    )
    monkeypatch.setattr(client_module, "_clients", {})
    first = s3seg.segment(photo_path, "person", model=str(tiny_model_dir), device="cpu", threshold=0.2)
    second = s3seg.segment(photo_path, ["person"], model=str(tiny_model_dir), device="cpu", threshold=0.2)
    assert loads == [str(tiny_model_dir)]
    assert first.instances == second.instances and len(first) == 20


def test_errors_are_s3seg_errors(client: s3seg.Client, tmp_path: Path) -> None:
    with pytest.raises(s3seg.ImageError, match="not found"):
        client.segment(tmp_path / "nope.jpg", "dog")
    with pytest.raises(s3seg.UsageError, match="nothing to segment"):
        client.segment(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(s3seg.UsageError, match="threshold"):
        client.segment(np.zeros((8, 8, 3), np.uint8), "dog", threshold=2.0)


def test_public_names() -> None:
    for name in s3seg.__all__:
        assert getattr(s3seg, name) is not None
    assert isinstance(s3seg.S3SegError("m", hint="h"), Exception)
    assert str(s3seg.S3SegError("m", hint="h")) == "m (hint: h)"


def test_segment_paths_gives_one_outcome_per_file(client: s3seg.Client, photo_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    other = tmp_path / "other.jpg"
    other.write_bytes(photo_path.read_bytes())
    request = client.request("person")
    outcomes = list(client.segment_paths([photo_path, broken, other], request, out=tmp_path / "out", batch_size=2))
    by_name = {Path(o.image).name: o for o in outcomes}
    assert sorted(by_name) == ["broken.jpg", "grace_hopper.jpg", "other.jpg"]
    assert isinstance(by_name["broken.jpg"].error, s3seg.ImageError) and by_name["broken.jpg"].result is None
    for name in ("grace_hopper.jpg", "other.jpg"):
        assert by_name[name].error is None and by_name[name].task_id is None
        got, alone = by_name[name].result, client.segment(photo_path, "person")
        assert got is not None and got.labels == alone.labels  # batched with another image: same findings
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        f"{stem}.{kind}" for stem in ("grace_hopper", "other") for kind in ("json", "mask.png", "overlay.jpg")
    ]


def test_segment_paths_retries_a_failed_batch_image_by_image(
    engine,
    photo_path: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A batch that runs out of memory as a whole is split, so only the image too big on its own is skipped.
    (Running out of memory cannot be caused on purpose here: the backend refuses as the device would.)"""
    from s3seg.client import LocalBackend

    huge = tmp_path / "huge.jpg"
    huge.write_bytes(photo_path.read_bytes())
    calls: list[int] = []

    class SmallDevice(LocalBackend):
        def segment(self, images, request, *, project=None):  # type: ignore[no-untyped-def]
            calls.append(len(images))
            if len(images) > 1 or images[0].name == str(huge):
                raise s3seg.DeviceError("out of memory")
            return super().segment(images, request, project=project)

    settings = s3seg.Settings(threshold=0.2)
    client = s3seg.Client(settings=settings, backend=SmallDevice(settings.engine_config(), engine))
    outcomes = list(client.segment_paths([photo_path, huge], client.request("person"), batch_size=2))
    assert calls == [2, 1, 1]
    assert [(o.image, o.result is not None, type(o.error)) for o in outcomes] == [
        (str(photo_path), True, type(None)),
        (str(huge), False, s3seg.DeviceError),
    ]


def test_a_project_needs_somewhere_to_keep_it(client: s3seg.Client, photo_path: Path) -> None:
    with pytest.raises(s3seg.UsageError, match="project needs save"):
        list(client.segment_paths([photo_path], client.request("person"), project="p"))
