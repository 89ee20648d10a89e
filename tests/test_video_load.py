"""Strict loading of both checkpoint layouts, for images and for video.

The image layout is ``Sam3Model.save_pretrained`` (``model_type`` sam3); the video layout is
``Sam3VideoModel.save_pretrained`` (sam3_video: ``detector_model.*`` + ``tracker_model.*``), as facebook/sam3 on
the Hub. Both are written by s3seg.testing with the same detector weights for one seed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from s3seg.engine import Sam3Engine
from s3seg.errors import ModelError
from s3seg.testing import write_random_checkpoint


@pytest.fixture(scope="module")
def image_layout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-image"), "tiny", layout="image")


def _rewrite(src: Path, dst: Path, rename: dict[str, str] | None = None, drop: str | None = None) -> Path:
    """A copy of the checkpoint at ``src`` with ``rename``'s name prefixes replaced and names containing ``drop``
    removed."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    out = {}
    for key, value in tensors.items():
        if drop is not None and drop in key:
            continue
        for old, new in (rename or {}).items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_tiny_checkpoint_is_the_video_layout(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "sam3_video"
    names = load_file(tiny_model_dir / "model.safetensors").keys()
    assert any(k.startswith("detector_model.text_encoder.") for k in names)
    assert any(k.startswith("tracker_model.") and ".memory_encoder." in k for k in names)


def test_both_layouts_serve_images_with_the_same_weights(
    engine: Sam3Engine, image_layout_dir: Path, photo: np.ndarray
) -> None:
    """The image engine on the video layout (the tiny fixture) and on the image layout: same detector, same output."""
    other = Sam3Engine.load(str(image_layout_dir), device="cpu")
    a = engine.predict_raw(photo, "person")
    b = other.predict_raw(photo, "person")
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)  # other weights would differ by ~1e-2
    np.testing.assert_allclose(a.mask_logits, b.mask_logits, rtol=1e-4, atol=1e-4)


def test_video_needs_the_video_layout(image_layout_dir: Path) -> None:
    from s3seg.engine._video import Sam3VideoEngine

    with pytest.raises(ModelError, match="image-only SAM3 checkpoint"):
        Sam3VideoEngine.load(str(image_layout_dir), device="cpu")


@pytest.mark.parametrize("which", ["image", "video"])
def test_text_encoder_under_another_prefix_is_an_error_naming_the_keys(
    which: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """transformers would load this with exit 0 and a randomly initialised text encoder (only logging it)."""
    from s3seg.engine._video import Sam3VideoEngine

    broken = _rewrite(
        tiny_model_dir,
        tmp_path / "broken",
        rename={"detector_model.text_encoder.": "detector_model.language_backbone."},
    )
    load = Sam3Engine.load if which == "image" else Sam3VideoEngine.load
    with pytest.raises(ModelError, match=r"lacks \d+ weight\(s\).*text_encoder\.text_model") as info:
        load(str(broken), device="cpu")
    assert "left random" in info.value.message


def test_missing_tracker_weights_are_an_error_for_video(tiny_model_dir: Path, tmp_path: Path) -> None:
    from s3seg.engine._video import Sam3VideoEngine

    broken = _rewrite(tiny_model_dir, tmp_path / "broken", drop=".memory_encoder.")
    with pytest.raises(ModelError, match=r"lacks .*tracker_model\.memory_encoder"):
        Sam3VideoEngine.load(str(broken), device="cpu")
    Sam3Engine.load(str(broken), device="cpu")  # images do not need the tracker


def test_unprefixed_image_keys_in_an_image_directory_still_load(
    image_layout_dir: Path, tmp_path: Path, photo: np.ndarray, engine: Sam3Engine
) -> None:
    """An image-layout folder whose text encoder carries the video prefix (detector_model.text_encoder.*):
    transformers maps it, and the weights really are the checkpoint's (same output as the clean copy)."""
    mixed = _rewrite(image_layout_dir, tmp_path / "mixed", rename={"text_encoder.": "detector_model.text_encoder."})
    got = Sam3Engine.load(str(mixed), device="cpu").predict_raw(photo, "person")
    np.testing.assert_allclose(got.scores, engine.predict_raw(photo, "person").scores, rtol=1e-5)


def test_not_a_sam3_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ModelError, match="'bert' model, not SAM3"):
        Sam3Engine.load(str(other), device="cpu")
