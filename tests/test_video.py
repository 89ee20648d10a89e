"""Video tracking end to end on the tiny random-weight checkpoint and clips cut from a real photo.

Random weights find nothing at the default thresholds, so most tests run with threshold 0: every query
counts and the tracker has objects to follow (their masks are meaningless; shapes, ids, files are real).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from _cli import run
from _video import make_clip
from s3seg.config import load_settings
from s3seg.engine import Fidelity
from s3seg.engine._video import Sam3VideoEngine
from s3seg.video import TrackedFrame, open_video, read_tracks


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _frames(engine: Sam3VideoEngine, path: Path, prompts: list[str], **kw: object) -> list[TrackedFrame]:
    settings = load_settings(threshold=0.0)
    return list(open_video(path, prompts, engine, settings, **kw))  # type: ignore[arg-type]


def test_cli_writes_tracks_json_and_overlay(capsys, tmp_path: Path, tiny_model_dir: Path, clip: Path) -> None:
    code, out, err = run(
        capsys, "segment", str(clip), "person", "tie", "--model", str(tiny_model_dir), "--out", "out", "-t", "0"
    )
    assert code == 0, err
    assert "clip.mp4: 8 frame(s) at 96×72" in out
    doc = json.loads((tmp_path / "out" / "clip.tracks.json").read_text())
    video = doc["videos"][0]
    assert (video["width"], video["height"], video["length"], video["fps"]) == (96, 72, 8, 10.0)
    assert video["frame_indices"] == list(range(8))
    assert video["timestamps"] == pytest.approx([i / 10 for i in range(8)])
    assert [c["name"] for c in doc["categories"]] == ["person", "tie"]
    assert doc["annotations"], "threshold 0 must start tracks"
    for ann in doc["annotations"]:
        assert {"track_id", "category_id", "score"} <= ann.keys()
        assert len(ann["segmentations"]) == len(ann["bboxes"]) == len(ann["areas"]) == 8
        for rle, box, area in zip(ann["segmentations"], ann["bboxes"], ann["areas"], strict=True):
            if rle is None:
                assert box is None and area is None
                continue
            mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert mask.shape == (72, 96) and int(mask.sum()) == area > 0
            assert coco_mask.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist() == box
    with av.open(str(tmp_path / "out" / "clip.overlay.mp4")) as overlay:
        stream = overlay.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in overlay.decode(stream)]
    assert len(frames) == 8 and frames[0].shape == (72, 96, 3)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.overlay.mp4", "clip.tracks.json"]


def test_cli_json_mot_and_frame_selection(capsys, tiny_model_dir: Path, clip: Path) -> None:
    code, out, err = run(
        capsys, "segment", str(clip), "person", "--model", str(tiny_model_dir), "-t", "0", "--json", "--every", "2"
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["videos"][0]["frame_indices"] == [0, 2, 4, 6]
    assert doc["videos"][0]["fps"] == 5.0
    code, out, err = run(
        capsys, "segment", str(clip), "person", "--model", str(tiny_model_dir), "-t", "0", "--mot",
        "--start", "2f", "--end", "0.5",
    )  # fmt: skip
    assert code == 0, err
    lines = [line.split(",") for line in out.splitlines()]
    assert lines and {int(f[0]) for f in lines} <= {1, 2, 3}  # frames 2, 3, 4 (end 0.5 s is exclusive)
    assert all(len(f) == 10 and f[7:] == ["-1", "-1", "-1"] for f in lines)
    assert not Path("s3seg-out").exists()  # --json / --mot write no files unless --out is given


def test_sdk_frames_round_trip_through_tracks_json(video_engine: Sam3VideoEngine, clip: Path, tmp_path: Path) -> None:
    video = open_video(clip, ["person", "tie"], video_engine, load_settings(threshold=0.0))
    frames = []
    for frame in video:  # frames arrive as they are processed
        frames.append(frame)
        for track_id, inst in frame.tracks():
            assert isinstance(track_id, int) and inst.mask.shape == (72, 96)
    assert len(frames) == 8 and any(f.track_ids for f in frames)
    ids = {t for f in frames for t in f.track_ids}
    assert all(any(t in f.track_ids for f in frames[1:]) for t in ids if t in frames[0].track_ids)  # ids persist
    path = video.write_tracks(tmp_path / "t.json")
    assert read_tracks(path) == frames
    assert read_tracks(video.to_tracks()) == frames
    expected = [  # MOT lines: one per track present in a frame, its xywh box and score, frames numbered from 1
        (position + 1, track_id, inst.box[0], inst.box[1], inst.box[2] - inst.box[0], inst.box[3] - inst.box[1])
        for position, frame in enumerate(read_tracks(video.to_tracks()))
        for track_id, inst in sorted(frame.tracks(), key=lambda t: t[0])
    ]
    got = [line.split(",") for line in video.mot_lines()]
    assert expected and len(got) == len(expected)
    for fields, want in zip(got, expected, strict=True):
        assert (int(fields[0]), int(fields[1])) == want[:2]
        assert [float(v) for v in fields[2:6]] == pytest.approx(want[2:], rel=1e-5, abs=1e-3)
    assert all(f[7:] == ["-1", "-1", "-1"] for f in got)


def test_segment_video_passes_the_options_and_loads_the_model_once(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, clip: Path
) -> None:
    import s3seg
    from s3seg import client as client_module

    monkeypatch.setattr(client_module, "_clients", {})
    model = str(tiny_model_dir)
    video = s3seg.segment_video(clip, "person", model=model, device="cpu", threshold=0.0, every=2)
    assert [f.index for f in video] == [0, 2, 4, 6]
    [client] = client_module._clients.values()
    engine = client.video_engine
    later = s3seg.segment_video(clip, ["person"], model=model, device="cpu", start="2f", end="5f", max_objects=1)
    assert [f.index for f in later] == [2, 3, 4]
    assert list(client_module._clients.values()) == [client] and client.video_engine is engine


def test_max_objects_caps_live_tracks(video_engine: Sam3VideoEngine, clip: Path) -> None:
    """Random weights with every threshold at 0 would start a track for every query on every frame."""
    settings = load_settings(threshold=0.0)
    frames = list(
        video_engine.track(
            _decoded(clip), ["person", "tie", "dog"], threshold=0.0, new_track_threshold=0.0, max_objects=2
        )
    )
    assert max(len(f.track_ids) for f in frames) <= 2
    assert settings.max_objects == 16  # the default cap


def _decoded(path: Path):  # type: ignore[no-untyped-def]
    from s3seg import _videoio

    return _videoio.read(path, max_pixels=10**8, max_seconds=3600)[1]


def test_trimmed_session_tracks_exactly_like_the_full_one(video_engine: Sam3VideoEngine, tmp_path: Path) -> None:
    """The session keeps only the tracker's window (16 frames); over a longer clip the output is identical
    to transformers' session keeping everything, and the session does not grow."""
    long = make_clip(tmp_path / "long.mp4", n=24, width=64, height=48)
    trimmed = list(
        video_engine.track(_decoded(long), ["person"], threshold=0.0, new_track_threshold=0.0, max_objects=3)
    )
    sizes = []
    original = video_engine._trim

    def keep_all(session, k):  # type: ignore[no-untyped-def]
        sizes.append(sum(len(o["non_cond_frame_outputs"]) for o in session.output_dict_per_obj.values()))

    video_engine._trim = keep_all  # type: ignore[method-assign]
    try:
        full = list(
            video_engine.track(_decoded(long), ["person"], threshold=0.0, new_track_threshold=0.0, max_objects=3)
        )
    finally:
        video_engine._trim = original  # type: ignore[method-assign]
    assert [f.track_ids for f in trimmed] == [f.track_ids for f in full]
    for a, b in zip(trimmed, full, strict=True):
        assert a.result.instances == b.result.instances
    objects = len({t for f in full for t in f.track_ids})
    assert sizes[-1] >= 23 * objects > 16 * objects  # untrimmed: every tracked frame of every object kept

    def measure(session, k):  # type: ignore[no-untyped-def]
        original(session, k)
        sizes.append(sum(len(o["non_cond_frame_outputs"]) for o in session.output_dict_per_obj.values()))
        assert len(session.processed_frames) == 0

    sizes.clear()
    video_engine._trim = measure  # type: ignore[method-assign]
    try:
        list(video_engine.track(_decoded(long), ["person"], threshold=0.0, new_track_threshold=0.0, max_objects=3))
    finally:
        video_engine._trim = original  # type: ignore[method-assign]
    assert max(sizes) <= 16 * objects  # trimmed: the tracker's window (max_object_pointers_in_encoder)


def test_video_detector_computes_what_the_image_engine_computes(
    video_engine: Sam3VideoEngine, tiny_model_dir: Path, photo: np.ndarray
) -> None:
    """Same detector weights, same frame: the video path's scores equal the image engine's (which follows
    Meta's reference); turning a fix off in the video path changes them."""
    import torch

    from s3seg.engine import Sam3Engine

    image = Sam3Engine.load(str(tiny_model_dir), device="cpu")
    expected = image.predict_raw(photo, "person").scores

    def video_scores(engine: Sam3VideoEngine) -> np.ndarray:
        session = engine._session(["person"])
        captured = {}
        with torch.inference_mode():
            vision = engine._m.detector_model.get_vision_features(pixel_values=engine._preprocess(photo)[None])
            engine._m.score_threshold_detection = -1.0
            engine._m.det_nms_thresh = 0.0
            try:
                captured = engine._detect(session, vision)[0]
            finally:
                engine._m.det_nms_thresh = 0.1
        return captured["scores"].numpy()

    np.testing.assert_allclose(video_scores(video_engine), expected, rtol=1e-5, atol=1e-6)
    no_cls = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu", fidelity=Fidelity(geometry_cls=False))
    assert np.abs(video_scores(no_cls) - expected).max() > 1e-4


def test_a_video_engine_shares_the_image_engines_detector(tiny_model_dir: Path, clip: Path) -> None:
    """The server's video model takes the image model as its detector (one copy of those weights) only when
    the weights and fixes are the same; tracking through the shared detector gives the same tracks, and the
    image engine still answers the same afterwards (the two engines' decoder patches do not clash)."""
    import torch

    from s3seg.engine import Sam3Engine

    image = Sam3Engine.load(str(tiny_model_dir), device="cpu")
    photo = next(iter(_decoded(clip))).array
    before = image.predict_raw(photo, "person").scores
    alone = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")
    expected = _frames(alone, clip, ["person"])
    shared = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu")
    assert shared.share_detector(image)
    assert shared._m.detector_model is image.model
    got = _frames(shared, clip, ["person"])
    assert [f.track_ids for f in got] == [f.track_ids for f in expected]
    assert [f.result.instances for f in got] == [f.result.instances for f in expected]
    np.testing.assert_array_equal(image.predict_raw(photo, "person").scores, before)

    other = Sam3VideoEngine.load(str(tiny_model_dir), device="cpu", fidelity=Fidelity(geometry_cls=False))
    assert not other.share_detector(image)  # other fixes: not the same detector
    with torch.no_grad():
        next(alone._m.detector_model.parameters()).add_(1.0)
    assert not alone.share_detector(image)  # other weights: kept apart
    assert alone._m.detector_model is not image.model


def test_poster_jpeg_is_scaled_to_at_most_480_wide() -> None:
    import io

    from PIL import Image

    from s3seg.video import POSTER_WIDTH, poster_jpeg

    wide = np.zeros((600, 1000, 3), dtype=np.uint8)
    wide[:, :500] = (200, 30, 30)  # left half red: still there, scaled
    small = np.full((72, 96, 3), 128, dtype=np.uint8)
    with Image.open(io.BytesIO(poster_jpeg(wide))) as big, Image.open(io.BytesIO(poster_jpeg(small))) as kept:
        assert (big.format, big.size, kept.format, kept.size) == ("JPEG", (POSTER_WIDTH, 288), "JPEG", (96, 72))
        left, right = big.getpixel((100, 100)), big.getpixel((400, 100))
    assert left[0] > 150 and left[1] < 80 and max(right) < 10, (left, right)
