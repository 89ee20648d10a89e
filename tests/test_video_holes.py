"""Hole filling and sprinkle removal on track masks (the reference's ``fill_holes_in_mask_scores``,
``fill_hole_area`` 16), against a plain flood fill written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _reference import component_areas
from s3seg.engine._video import fill_holes


def _expected(logits: np.ndarray, max_area: int) -> np.ndarray:
    """What the reference computes, one mask (h, w) at a time."""
    out = logits.copy()
    background = out <= 0
    out[background & (component_areas(background) <= max_area)] = 0.1
    foreground = out > 0
    limit = min(int(foreground.sum()) // 2, max_area)
    out[foreground & (component_areas(foreground) <= limit)] = -0.1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_flood_fill_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # blobs of every size, thin lines and specks: smoothed noise cut at several levels
    noise = rng.normal(size=(5, 1, 40, 52)).astype(np.float32)
    kernel = torch.ones(1, 1, 3, 3) / 9
    smooth = torch.nn.functional.conv2d(torch.from_numpy(noise), kernel, padding=1).numpy()
    logits = smooth - np.linspace(-0.3, 0.3, 5, dtype=np.float32).reshape(5, 1, 1, 1)
    got = fill_holes(torch.from_numpy(logits), max_area=16).numpy()
    changed = 0
    for i in range(5):
        want = _expected(logits[i, 0], 16)
        np.testing.assert_array_equal(got[i, 0], want)
        changed += int((want != logits[i, 0]).sum())
    assert changed > 0  # the masks really have holes and specks to change


def test_a_ring_keeps_its_large_hole_and_loses_its_small_one() -> None:
    logits = -np.ones((1, 1, 30, 30), dtype=np.float32)
    logits[0, 0, 2:28, 2:28] = 1.0
    logits[0, 0, 5:8, 5:8] = -1.0  # 9-pixel hole: filled
    logits[0, 0, 12:20, 12:20] = -1.0  # 64-pixel hole: kept
    logits[0, 0, 0, 29] = 1.0  # a one-pixel speck: removed
    out = fill_holes(torch.from_numpy(logits), max_area=16).numpy()[0, 0]
    assert (out[5:8, 5:8] == np.float32(0.1)).all()
    assert (out[12:20, 12:20] == -1.0).all()
    assert out[0, 29] == np.float32(-0.1)
    np.testing.assert_array_equal(fill_holes(torch.from_numpy(logits), max_area=0).numpy(), logits)


def test_the_video_engine_puts_it_where_transformers_calls_it(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from transformers.models.sam3_video import modeling_sam3_video

    from s3seg.engine._video import Sam3VideoEngine

    engine = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")
    assert modeling_sam3_video.fill_holes_in_mask_scores is fill_holes
    assert engine._m.fill_hole_area == 16  # the reference's value, from the config
