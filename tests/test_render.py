"""Tests for s3seg.render: label map, mask PNG encoding, overlay and colours."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from s3seg.render import color, encode_jpeg, label_map, mask_png, outputs, overlay
from s3seg.types import Instance, SegmentationResult


def rect_mask(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def inst(prompt: str, score: float, h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> Instance:
    return Instance(prompt, score, (x0, y0, x1, y1), rect_mask(h, w, y0, x0, y1, x1))


def result(h: int, w: int, *instances: Instance) -> SegmentationResult:
    prompts = tuple(dict.fromkeys(i.prompt for i in instances)) or ("thing",)
    return SegmentationResult(width=w, height=h, prompts=prompts, instances=instances)


def read_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        copy: Image.Image = im.copy()
        return copy


# --- label_map -----------------------------------------------------------------------------------


def test_label_map_numbers_and_overlap() -> None:
    # Grouped by prompt: "a" (0.3) comes before "b" (0.8), so the later instance must win the overlap.
    r = result(10, 10, inst("a", 0.3, 10, 10, 0, 0, 6, 6), inst("b", 0.8, 10, 10, 4, 4, 10, 10))
    labels = label_map(r)
    assert labels.dtype == np.uint16 and labels.shape == (10, 10)
    assert labels[0, 0] == 1
    assert labels[9, 9] == 2
    assert labels[5, 5] == 2  # overlap → higher score
    assert labels[0, 9] == 0


def test_label_map_first_higher_score_wins_and_ties() -> None:
    r = result(
        8,
        8,
        inst("a", 0.9, 8, 8, 0, 0, 5, 5),
        inst("a", 0.5, 8, 8, 3, 3, 8, 8),
        inst("a", 0.5, 8, 8, 4, 4, 8, 8),
    )
    labels = label_map(r)
    assert labels[4, 4] == 1  # 0.9 beats both 0.5s
    assert labels[6, 6] == 2  # tie: the earlier instance
    assert labels[3, 7] == 2


def test_label_map_empty() -> None:
    labels = label_map(result(3, 4))
    assert labels.shape == (3, 4) and not labels.any()


# --- mask_png ------------------------------------------------------------------------------------


def test_mask_png_palette_round_trip() -> None:
    r = result(12, 16, inst("a", 0.9, 12, 16, 0, 0, 5, 5), inst("b", 0.6, 12, 16, 3, 3, 12, 16))
    im = read_png(mask_png(r))
    assert im.mode == "P"
    assert np.array_equal(np.array(im), label_map(r))
    palette = im.getpalette()
    assert palette is not None
    assert tuple(palette[0:3]) == (0, 0, 0)
    assert tuple(palette[3:6]) == color(1)
    assert tuple(palette[6:9]) == color(2)


def test_mask_png_255_is_palette() -> None:
    h, w = 16, 16
    instances = [inst("a", 0.5, h, w, k // w, k % w, k // w + 1, k % w + 1) for k in range(255)]
    r = result(h, w, *instances)
    im = read_png(mask_png(r))
    assert im.mode == "P"
    assert np.array_equal(np.array(im), label_map(r))
    assert np.array(im).max() == 255


def test_mask_png_16bit_for_many_instances() -> None:
    h, w = 20, 20
    instances = [inst("a", 0.5, h, w, k // w, k % w, k // w + 1, k % w + 1) for k in range(300)]
    r = result(h, w, *instances)
    im = read_png(mask_png(r))
    assert im.mode in ("I;16", "I")
    got = np.array(im)
    assert np.array_equal(got.astype(np.int64), label_map(r).astype(np.int64))
    assert got.max() == 300


def test_mask_png_empty() -> None:
    im = read_png(mask_png(result(5, 7)))
    assert im.mode == "P" and im.size == (7, 5)
    assert not np.array(im).any()


# --- overlay -------------------------------------------------------------------------------------


def test_overlay_changes_only_masked_pixels() -> None:
    h, w = 200, 300
    image = np.full((h, w, 3), 100, dtype=np.uint8)
    # Mask and box in the right half; the box's label sits at its top-left, going right.
    r = result(h, w, inst("cat", 0.87, h, w, 80, 180, 180, 280))
    out = overlay(image, r)
    assert out.mode == "RGB" and out.size == (w, h)
    arr = np.asarray(out)
    assert not np.array_equal(arr[130, 230], image[130, 230])  # inside the mask
    assert np.array_equal(arr[:, :170], image[:, :170])  # left half: untouched
    assert np.array_equal(arr[190:, :], image[190:, :])  # below the box: untouched
    assert np.array_equal(image, np.full((h, w, 3), 100, dtype=np.uint8))  # input not modified


def test_overlay_alpha_extremes() -> None:
    h, w = 100, 100
    image = np.full((h, w, 3), 50, dtype=np.uint8)
    r = result(h, w, inst("cat", 0.5, h, w, 40, 40, 90, 90))
    assert tuple(np.asarray(overlay(image, r, alpha=1.0))[65, 65]) == color(1)
    assert tuple(np.asarray(overlay(image, r, alpha=0.0))[65, 65]) == (50, 50, 50)
    half = np.asarray(overlay(image, r, alpha=0.5))[65, 65].astype(int)
    expected = (np.array(color(1)) + 50) / 2
    assert np.all(np.abs(half - expected) <= 1)


def test_overlay_overlap_uses_winner_colour() -> None:
    h, w = 100, 100
    image = np.zeros((h, w, 3), dtype=np.uint8)
    r = result(h, w, inst("a", 0.4, h, w, 20, 20, 80, 80), inst("b", 0.9, h, w, 40, 40, 90, 90))
    arr = np.asarray(overlay(image, r, alpha=1.0))
    assert tuple(arr[60, 60]) == color(2)
    assert tuple(arr[30, 30]) == color(1)


def test_overlay_outlines_are_solid_and_interiors_blended() -> None:
    h, w = 60, 80
    image = np.full((h, w, 3), 200, dtype=np.uint8)
    # Two touching squares, their boxes (drawn on top) out of the way in the bottom-right corner: each
    # outline in its own colour, also where they meet.
    a, b = rect_mask(h, w, 10, 10, 40, 30), rect_mask(h, w, 10, 30, 40, 50)
    r = result(h, w, Instance("a", 0.9, (76, 56, 79, 59), a), Instance("b", 0.8, (76, 56, 79, 59), b))
    arr = np.asarray(overlay(image, r, alpha=0.5)).astype(int)
    assert tuple(arr[25, 10]) == color(1) and tuple(arr[39, 20]) == color(1)  # left edge, bottom edge
    assert tuple(arr[25, 29]) == color(1) and tuple(arr[25, 30]) == color(2)  # where a meets b
    assert np.all(np.abs(arr[25, 40] - (np.array(color(2)) + 200) / 2) <= 1)  # inside b
    assert tuple(arr[5, 5]) == (200, 200, 200)


def test_overlay_beyond_255_instances() -> None:
    h, w = 60, 400
    image = np.zeros((h, w, 3), dtype=np.uint8)
    # One column each; boxes and labels in the top-left corner, away from row 50.
    r = result(h, w, *(Instance("a", 0.5, (0, 0, 1, 1), rect_mask(h, w, 20, x, h, x + 1)) for x in range(300)))
    arr = np.asarray(overlay(image, r, alpha=1.0))
    assert [tuple(arr[50, x]) for x in (0, 254, 255, 299)] == [color(1), color(255), color(256), color(300)]
    assert not arr[:, 300:].any()


def test_outputs_are_the_single_renderers_at_once() -> None:
    rng = np.random.default_rng(3)
    h, w = 90, 120
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    r = result(
        h,
        w,
        inst("a", 0.6, h, w, 5, 5, 60, 70),
        inst("b", 0.7, h, w, 30, 40, 90, 120),
        Instance("b", 0.2, (0, 0, 1, 1), rng.random((h, w)) > 0.5),
    )
    files = outputs(image, r)
    assert files.mask_png == mask_png(r)
    assert files.overlay_jpeg == encode_jpeg(overlay(image, r))
    assert json.loads(files.coco_json) == json.loads(json.dumps(r.to_coco()))


def test_overlay_tiny_and_edge_boxes() -> None:
    # Labels larger than the image and boxes at / beyond the edges must not fail.
    r = result(
        6,
        8,
        Instance("a very long prompt indeed " * 3, 0.5, (0, 0, 8, 6), np.ones((6, 8), bool)),
        Instance("a", 0.4, (-5, -5, 20, 20), np.zeros((6, 8), bool)),
    )
    out = overlay(np.zeros((6, 8, 3), np.uint8), r)
    assert out.size == (8, 6)


def test_overlay_gray_image_and_no_instances() -> None:
    image = np.full((4, 5), 7, dtype=np.uint8)
    out = overlay(image, result(4, 5))
    assert out.mode == "RGB" and np.all(np.asarray(out) == 7)


def test_overlay_shape_mismatch() -> None:
    r = result(10, 20)
    with pytest.raises(ValueError, match=r"\(20, 10, 3\).*\(10, 20\)"):
        overlay(np.zeros((20, 10, 3), np.uint8), r)
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((10, 20, 3), np.float32), r)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((10, 20, 3), np.uint8), r, alpha=1.5)


# --- colours -------------------------------------------------------------------------------------


def test_colors() -> None:
    assert color(0) == (0, 0, 0)
    palette = [color(k) for k in range(1, 256)]
    assert len(set(palette)) == 255
    assert all(all(0 <= c <= 255 for c in rgb) for rgb in palette)
    assert color(7) == color(7)
    with pytest.raises(ValueError):
        color(-1)
