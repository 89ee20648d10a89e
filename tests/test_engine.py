"""The engine on the tiny random-weight checkpoint, loaded from disk like real weights."""

from __future__ import annotations

import numpy as np
import pytest

from s3seg.engine import VISUAL_PROMPT, Sam3Engine, SegmentOptions
from s3seg.errors import UsageError
from s3seg.types import Box

ALL = SegmentOptions(threshold=0.0)


def test_loads_from_save_pretrained_dir(engine: Sam3Engine, tiny_model_dir) -> None:
    info = engine.info
    assert info.model == str(tiny_model_dir)
    assert (info.device, info.dtype, info.image_size) == ("cpu", "float32", 112)
    assert info.parameters > 1_000_000


def test_result_shapes_and_order(engine: Sam3Engine, photo: np.ndarray) -> None:
    [r] = engine.segment([photo], ["person", "tie"], options=ALL, names=["hopper.jpg"])
    h, w = photo.shape[:2]
    assert (r.width, r.height, r.prompts, r.image) == (w, h, ("person", "tie"), "hopper.jpg")
    assert len(r) == 40  # 20 queries per prompt, nothing thresholded away
    assert r.labels == ["person"] * 20 + ["tie"] * 20
    for p in r.prompts:
        scores = [i.score for i in r.for_prompt(p)]
        assert scores == sorted(scores, reverse=True)
    assert r.masks.shape == (40, h, w) and r.masks.dtype == bool
    boxes = r.boxes
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
    assert r.timings.inference_ms > 0 and r.timings.total_ms >= r.timings.inference_ms


def test_several_prompts_equal_each_prompt_alone(engine: Sam3Engine, photo: np.ndarray) -> None:
    """Prompts share one head batch, so equal to float rounding (bit for bit: tests/test_heads.py)."""
    prompts = ["person", "uniform", "a medal on a jacket", "tie"]
    [together] = engine.segment([photo], prompts, options=ALL)
    for p in prompts:
        [alone] = engine.segment([photo], [p], options=ALL)
        mine = together.for_prompt(p)
        assert len(alone) == len(mine) == 20, p
        np.testing.assert_allclose(alone.scores, [i.score for i in mine], rtol=0, atol=1e-5)
        assert (alone.masks == np.stack([i.mask for i in mine])).mean() >= 0.9999


def test_batched_images_match_single_images(engine: Sam3Engine, photo: np.ndarray) -> None:
    """Images share one backbone batch; the backbone's GEMMs round differently per batch size (BLAS
    chooses kernels by shape), so equality here is to float rounding, not bit for bit."""
    images = [photo, np.ascontiguousarray(photo[100:300, 50:400]), photo[::2, ::2].copy()]
    batch = engine.segment(images, ["person", "tie"], options=ALL)
    for image, result in zip(images, batch, strict=True):
        [alone] = engine.segment([image], ["person", "tie"], options=ALL)
        assert (alone.width, alone.height, alone.labels) == (result.width, result.height, result.labels)
        np.testing.assert_allclose(alone.scores, result.scores, atol=1e-5)
        np.testing.assert_allclose(alone.boxes, result.boxes, atol=1e-3)
        assert (alone.masks == result.masks).mean() > 0.9999


def test_one_backbone_pass_for_all_prompts(engine: Sam3Engine, photo: np.ndarray, monkeypatch) -> None:
    calls = []
    original = engine._vision

    def counting(pixels):  # type: ignore[no-untyped-def]
        calls.append(pixels.shape[0])
        return original(pixels)

    monkeypatch.setattr(engine, "_vision", counting)
    engine.segment([photo, photo], ["a", "b", "c", "d"], options=ALL)
    assert calls == [2]  # one pass, both images, four prompts each


def test_thresholds_cap_and_nms(engine: Sam3Engine, photo: np.ndarray) -> None:
    raw = engine.predict_raw(photo, "person")
    cut = float(np.median(raw.scores))
    [r] = engine.segment([photo], ["person"], options=SegmentOptions(threshold=cut))
    assert len(r) == int((raw.scores > cut).sum())
    assert all(i.score > cut for i in r.instances)
    [capped] = engine.segment([photo], ["person"], options=SegmentOptions(threshold=0.0, max_instances=3))
    [full] = engine.segment([photo], ["person"], options=ALL)
    assert capped.instances == full.instances[:3]
    [nms] = engine.segment([photo], ["person"], options=SegmentOptions(threshold=0.0, nms_iou=0.5))
    assert 0 < len(nms) < len(full)
    masks = nms.masks.reshape(len(nms), -1).astype(np.float64)
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5 + 0.05  # NMS runs on low-res masks; full-res IoU may move slightly


def test_mask_threshold_is_a_probability_on_upsampled_logits(engine: Sam3Engine, photo: np.ndarray) -> None:
    raw = engine.predict_raw(photo, "person")
    order = np.argsort(-raw.scores, kind="stable")
    for t in (0.3, 0.5, 0.7):
        [r] = engine.segment([photo], ["person"], options=SegmentOptions(threshold=0.0, mask_threshold=t))
        expected = raw.mask_logits[order[0]] > np.log(t / (1 - t))
        assert (r.instances[0].mask == expected).mean() > 0.9999


def test_exemplar_boxes(engine: Sam3Engine, photo: np.ndarray) -> None:
    pos, neg = Box(150, 60, 350, 300), Box(20, 350, 120, 500, positive=False)
    [text] = engine.segment([photo], ["person"], options=ALL)
    [with_box] = engine.segment([photo], ["person"], [pos], options=ALL)
    [with_both] = engine.segment([photo], ["person"], [pos, neg], options=ALL)
    assert with_box.prompts == ("person",)
    assert not np.allclose(text.scores, with_box.scores)
    assert not np.allclose(with_box.scores, with_both.scores)  # the negative exemplar counts
    [only_boxes] = engine.segment([photo], [], [pos, neg], options=ALL)
    assert only_boxes.prompts == (VISUAL_PROMPT,) and len(only_boxes) == 20


def test_nothing_to_segment_is_a_usage_error(engine: Sam3Engine, photo: np.ndarray) -> None:
    with pytest.raises(UsageError, match="nothing to segment"):
        engine.segment([photo], [])
    with pytest.raises(UsageError, match="prompt is empty"):
        engine.segment([photo], ["  "])
    with pytest.raises(UsageError, match="threshold"):
        SegmentOptions(threshold=1.5)
    with pytest.raises(UsageError, match="RGB uint8"):
        engine.segment([photo.astype(np.float32)], ["person"])


def test_text_features_are_cached(engine: Sam3Engine, photo: np.ndarray) -> None:
    engine._text_cache.clear()
    engine.segment([photo], ["person", "tie"], options=ALL)
    first = engine._text_cache["person"][0]
    engine.segment([photo], ["person"], options=ALL)
    assert engine._text_cache["person"][0] is first


def test_independent_requests_share_a_backbone_batch(engine: Sam3Engine, photo: np.ndarray, monkeypatch) -> None:
    from s3seg.engine import Request

    requests = [
        Request(photo, ("person",), options=SegmentOptions(threshold=0.0, max_instances=2), name="a"),
        Request(photo[:300].copy(), ("tie", "medal"), (Box(10, 10, 100, 100),), "b", ALL),
        Request(photo, (), (Box(150, 60, 350, 300, positive=True),), "c", SegmentOptions(threshold=0.0)),
    ]
    calls = []
    original = engine._vision
    monkeypatch.setattr(engine, "_vision", lambda px: calls.append(px.shape[0]) or original(px))
    a, b, c = engine.run(requests)
    assert calls == [3]
    assert (a.image, a.labels) == ("a", ["person", "person"])
    assert b.prompts == ("tie", "medal") and b.height == 300 and len(b) == 40
    assert c.prompts == (VISUAL_PROMPT,)
    [b_alone] = engine.segment([photo[:300].copy()], ["tie", "medal"], [Box(10, 10, 100, 100)], options=ALL)
    np.testing.assert_allclose(b.scores, b_alone.scores, atol=1e-5)


def test_bfloat16_path_stays_close_to_float32(engine: Sam3Engine, tiny_model_dir, photo: np.ndarray) -> None:
    """bf16 is the CUDA default; its rounding moves scores by ~1e-3 and a few boundary pixels."""
    bf16 = Sam3Engine.load(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert bf16.info.dtype == "bfloat16"
    [want] = engine.segment([photo], ["person"], options=ALL)
    [got] = bf16.segment([photo], ["person"], options=ALL)
    np.testing.assert_allclose(np.sort(got.scores), np.sort(want.scores), atol=5e-3)
    assert (got.masks == want.masks).mean() > 0.97
