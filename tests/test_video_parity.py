"""Video parity with Meta's reference video predictor, on identical tiny random weights, on CPU.

The reference (``Sam3VideoInferenceWithInstanceInteractivity`` from ``sam3`` 0.1.4, detector + tracker built from
Meta's public classes, tests/_reference.py) and s3seg (the same weights through s3seg's converter, from the
``sam3.pt`` layout) track a clip of crops from a real photo. The reference computes its tracker in bfloat16
(an autocast it enters for the whole process on CUDA, and explicit bfloat16 casts of memory features), so
agreement is bfloat16-close, not bitwise; the figures asserted are the measured ones with a margin
(docs/fidelity.md). Needs Meta's ``sam3`` package; skips where it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _reference as ref
from _video import crops
from s3seg._videoio import DecodedFrame
from s3seg.engine import Fidelity
from s3seg.engine._video import Sam3VideoEngine
from s3seg.video import TrackedFrame

pytest.importorskip("sam3")

N_FRAMES = 5
SIDE = ref.TINY_VIDEO.resolution  # frames at the model's input size: neither side resizes
THRESHOLDS = {"score_threshold_detection": 0.0, "new_det_thresh": 0.0}  # random weights: start tracks


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return crops(N_FRAMES, SIDE, SIDE)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    detector = ref.build_tiny_reference_model(seed=3, sizes=ref.TINY_VIDEO)
    tracker = ref.build_tiny_reference_tracker(seed=4)
    path = ref.save_official_checkpoint(
        detector,
        tmp_path_factory.mktemp("parity") / "sam3.pt",
        tracker_state=dict(tracker.state_dict()),
        config=ref.tiny_video_config_for_reference(),
    )
    return detector, tracker, path


@pytest.fixture(scope="module")
def reference(weights: tuple[Any, Any, Path], frames: list[np.ndarray]) -> dict[str, dict[int, Any]]:
    detector, tracker, _ = weights
    model = ref.build_tiny_reference_video_model(detector, tracker, **THRESHOLDS)
    return ref.reference_track(model, frames, "person")


def _ours(
    path: Path, frames: list[np.ndarray], fidelity: Fidelity | None = None, nms: float | None = None
) -> list[TrackedFrame]:
    engine = Sam3VideoEngine.load(str(path), device="cpu", fidelity=fidelity or Fidelity())
    if nms is not None:
        engine._m.det_nms_thresh = nms
    clip = [DecodedFrame(i, i / 10, f) for i, f in enumerate(frames)]
    return list(engine.track(clip, ["person"], threshold=0.0, new_track_threshold=0.0, max_objects=10_000))


def _compare(ours: list[TrackedFrame], reference: dict[str, dict[int, Any]]) -> tuple[bool, float, float]:
    """(same track ids on every frame, lowest mask IoU of a track, largest score difference).

    Frame 0 is compared with the reference's ``add_prompt`` output: its ``propagate_in_video`` runs the prompted
    frame a second time through the tracker, a second pass s3seg (like transformers) does not make."""
    same_ids, worst_iou, worst_score = True, 1.0, 0.0
    for frame in ours:
        want = reference["prompt" if frame.index == 0 else "propagate"][frame.index]
        ids = [int(i) for i in want["out_obj_ids"]]
        same_ids &= sorted(ids) == sorted(frame.track_ids)
        for j, obj in enumerate(ids):
            if obj not in frame.track_ids:
                continue
            inst = frame.result.instances[frame.track_ids.index(obj)]
            assert inst.mask is not None
            theirs = want["out_binary_masks"][j]
            union = int((inst.mask | theirs).sum())
            worst_iou = min(worst_iou, int((inst.mask & theirs).sum()) / union if union else 1.0)
            worst_score = max(worst_score, abs(inst.score - float(want["out_probs"][j])))
    return same_ids, worst_iou, worst_score


def test_tracks_match_the_reference_video_predictor(
    weights: tuple[Any, Any, Path], frames: list[np.ndarray], reference: dict[str, dict[int, Any]]
) -> None:
    ours = _ours(weights[2], frames)
    assert [f.index for f in ours] == list(range(N_FRAMES))
    assert all(f.track_ids for f in ours), "threshold 0 must start tracks"
    same_ids, iou, score = _compare(ours, reference)
    assert same_ids
    assert iou >= 0.9  # measured 0.963 (bfloat16 in the reference's tracker)
    assert score <= 0.01  # measured 0.0014


@pytest.mark.parametrize(
    "fidelity",
    [Fidelity(geometry_cls=False), Fidelity(vit_layernorm_eps=None)],
    ids=["no-geometry-cls", "transformers-layernorm-eps"],
)
def test_switching_off_a_detector_fix_loses_the_agreement(
    weights: tuple[Any, Any, Path],
    frames: list[np.ndarray],
    reference: dict[str, dict[int, Any]],
    fidelity: Fidelity,
) -> None:
    """Measured: without the CLS token the ids differ (IoU 0.04); with transformers' epsilon, IoU 0.85."""
    same_ids, iou, score = _compare(_ours(weights[2], frames, fidelity), reference)
    assert not same_ids or iou < 0.9 or score > 0.01


def test_hotstart_drops_the_same_duplicate_tracks(weights: tuple[Any, Any, Path], frames: list[np.ndarray]) -> None:
    """With a looser detection NMS (IoU 0.8 instead of 0.1) frame 0 starts six tracks in both; during hotstart
    both remove the same five as duplicates. Compared from frame 1 on: the reference's second pass over the
    prompted frame shows no track there at all. Measured: same ids, mask IoU >= 0.848, |dscore| <= 0.0007."""
    detector, tracker, path = weights
    model = ref.build_tiny_reference_video_model(detector, tracker, det_nms_thresh=0.8, **THRESHOLDS)
    reference = ref.reference_track(model, frames, "person")
    assert len(reference["prompt"][0]["out_obj_ids"]) > 1  # duplicates to remove
    ours = _ours(path, frames, nms=0.8)
    same_ids, iou, score = _compare(ours[1:], reference)
    assert same_ids and all(len(f.track_ids) < len(reference["prompt"][0]["out_obj_ids"]) for f in ours)
    assert iou >= 0.8 and score <= 0.01
