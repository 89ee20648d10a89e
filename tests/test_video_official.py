"""Video from Meta's official checkpoint layout: ``tracker.*`` keys mapped into transformers' ``Sam3VideoModel``.

The checkpoint is a tiny one in the layout of ``sam3.pt``, written from Meta's own classes (tests/_reference.py:
the detector at the video width and the tracker as ``sam3.model_builder.build_tracker`` wires it), so every
key name is Meta's. Needs Meta's ``sam3`` package; skips where it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import _reference as ref
from s3seg._videoio import DecodedFrame
from s3seg.engine import Sam3Engine
from s3seg.engine._convert import convert_state_dict, convert_to_pretrained, load_official_video
from s3seg.engine._video import Sam3VideoEngine
from s3seg.errors import ModelError
from s3seg.video import TrackedFrame

pytest.importorskip("sam3")


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    return ref.build_tiny_reference_model(seed=3, sizes=ref.TINY_VIDEO)


@pytest.fixture(scope="module")
def tracker() -> torch.nn.Module:
    return ref.build_tiny_reference_tracker(seed=4)


def _official(detector: torch.nn.Module, tracker: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"detector.{k}": v for k, v in detector.state_dict().items()} | {
        f"tracker.{k}": v for k, v in tracker.state_dict().items()
    }


def _save(state: dict[str, torch.Tensor], directory: Path) -> Path:
    """``state`` as ``sam3.pt`` with the tiny video config beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, directory / "sam3.pt")
    (directory / "config.json").write_text(ref.tiny_video_config_for_reference().to_json_string())
    return directory / "sam3.pt"


@pytest.fixture(scope="module")
def official_video_file(
    detector: torch.nn.Module, tracker: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return ref.save_official_checkpoint(
        detector,
        tmp_path_factory.mktemp("official-video") / "sam3.pt",
        tracker_state=dict(tracker.state_dict()),
        config=ref.tiny_video_config_for_reference(),
    )


def test_every_official_tensor_lands_in_the_video_model(detector: torch.nn.Module, tracker: torch.nn.Module) -> None:
    from transformers import Sam3VideoModel

    converted = convert_state_dict(_official(detector, tracker), video=True)
    model = Sam3VideoModel(ref.tiny_video_config_for_reference())
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    state = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(state[key], value), key
    src = tracker.state_dict()
    # the places where names alone do not say it: joined, copied, re-indexed and renamed tensors
    points = torch.cat([src[f"sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)])
    assert torch.equal(state["tracker_model.prompt_encoder.point_embed.weight"], points)
    gauss = src["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    assert torch.equal(state["tracker_model.shared_image_embedding.positional_embedding"], gauss)
    assert torch.equal(state["tracker_model.prompt_encoder.shared_embedding.positional_embedding"], gauss)
    renamed = {  # transformers key: Meta's key
        "memory_encoder.mask_downsampler.layers.3.layer_norm.bias": "maskmem_backbone.mask_downsampler.encoder.10.bias",
        "memory_encoder.mask_downsampler.final_conv.weight": "maskmem_backbone.mask_downsampler.encoder.12.weight",
        "mask_decoder.iou_prediction_head.layers.0.weight": "sam_mask_decoder.iou_prediction_head.layers.1.weight",
        "memory_attention.layers.0.cross_attn_image.o_proj.bias": (
            "transformer.encoder.layers.0.cross_attn_image.out_proj.bias"
        ),
        "memory_encoder.memory_fuser.layers.1.scale": "maskmem_backbone.fuser.layers.1.gamma",
    }
    for ours, theirs in renamed.items():
        assert torch.equal(state[f"tracker_model.{ours}"], src[theirs]), ours
    neck = detector.state_dict()["backbone.vision_backbone.sam2_convs.1.conv_3x3.weight"]
    assert torch.equal(state["tracker_neck.fpn_layers.1.proj2.weight"], neck)


def _clip(photo: np.ndarray) -> list[DecodedFrame]:
    return [
        DecodedFrame(index=i, time=i / 10, array=np.ascontiguousarray(photo[8 * i : 8 * i + 200, 4 * i : 4 * i + 240]))
        for i in range(3)
    ]


def _track(model: str, photo: np.ndarray) -> list[TrackedFrame]:
    engine = Sam3VideoEngine.load(model, device="cpu")
    assert engine.source == model
    return list(engine.track(_clip(photo), ["person"], threshold=0.0, new_track_threshold=0.0, max_objects=4))


def test_official_checkpoint_tracks_a_clip_and_segments_images(official_video_file: Path, photo: np.ndarray) -> None:
    out = _track(str(official_video_file), photo)
    assert [f.index for f in out] == [0, 1, 2]
    assert all(f.result.width == 240 and f.result.height == 200 for f in out)
    assert any(f.track_ids for f in out), "threshold 0 must start tracks"
    for f in out:
        assert len(f.track_ids) == len(f.result.instances) <= 4
        assert all(i.mask is not None and i.mask.shape == (200, 240) for i in f.result.instances)
    # the same file serves images: the video config beside it gives the detector's
    [result] = Sam3Engine.load(str(official_video_file), device="cpu").segment([photo], ["person"])
    assert (result.width, result.height) == (photo.shape[1], photo.shape[0])


def test_video_model_weights_are_the_checkpoints(official_video_file: Path, tracker: torch.nn.Module) -> None:
    model: Any = load_official_video(official_video_file)
    assert not model.training
    assert torch.equal(
        model.tracker_model.memory_temporal_positional_encoding.detach(), tracker.state_dict()["maskmem_tpos_enc"]
    )


def test_a_missing_tracker_key_is_an_error_naming_it(
    detector: torch.nn.Module, tracker: torch.nn.Module, tmp_path: Path
) -> None:
    state = _official(detector, tracker)
    del state["tracker.maskmem_backbone.pix_feat_proj.weight"]
    path = _save(state, tmp_path)
    with pytest.raises(ModelError, match=r"lacks 1 weight\(s\).*tracker_model\.memory_encoder\.feature_projection"):
        Sam3VideoEngine.load(str(path), device="cpu")


def test_an_unknown_tracker_key_is_an_error_naming_it(
    detector: torch.nn.Module, tracker: torch.nn.Module, tmp_path: Path
) -> None:
    state = _official(detector, tracker)
    state["tracker.maskmem_backbone.new_head.weight"] = torch.zeros(2)
    with pytest.raises(ModelError, match=r"1 key\(s\) that do not belong to a SAM3 video model: tracker\.maskmem"):
        Sam3VideoEngine.load(str(_save(state, tmp_path)), device="cpu")


def test_an_image_only_official_checkpoint_cannot_track(detector: torch.nn.Module, tmp_path: Path) -> None:
    state = {f"detector.{k}": v for k, v in detector.state_dict().items()}
    with pytest.raises(ModelError, match=r"no video tracker weights \(tracker\.\*\): it serves images only"):
        Sam3VideoEngine.load(str(_save(state, tmp_path)), device="cpu")


def test_an_image_config_beside_the_checkpoint_is_an_error_for_video(official_video_file: Path, tmp_path: Path) -> None:
    (tmp_path / "sam3.pt").symlink_to(official_video_file)
    (tmp_path / "config.json").write_text(ref.tiny_config_for_reference(ref.TINY_VIDEO).to_json_string())
    with pytest.raises(ModelError, match=r"describes a 'sam3' model; sam3\.pt needs a model_type sam3_video config"):
        Sam3VideoEngine.load(str(tmp_path / "sam3.pt"), device="cpu")


def test_converting_an_official_video_checkpoint_writes_the_video_layout(
    official_video_file: Path, tmp_path: Path, photo: np.ndarray
) -> None:
    """``s3seg convert`` on a checkpoint with its tracker: the facebook/sam3 layout, tracking as the .pt does."""
    import json

    out = convert_to_pretrained(official_video_file, tmp_path / "converted")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "sam3_video"
    assert config["detector_config"]["vision_config"]["backbone_config"]["layer_norm_eps"] == 1e-5
    assert "video_processor" in json.loads((out / "processor_config.json").read_text())
    converted = _track(str(out), photo)
    direct = _track(str(official_video_file), photo)
    assert [f.track_ids for f in converted] == [f.track_ids for f in direct]
    for a, b in zip(converted, direct, strict=True):
        for x, y in zip(a.result.instances, b.result.instances, strict=True):
            assert x.mask is not None and y.mask is not None
            assert abs(x.score - y.score) < 1e-5 and (x.mask == y.mask).mean() > 0.999
