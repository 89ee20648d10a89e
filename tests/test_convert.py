"""Official-checkpoint conversion (s3seg.engine._convert).

The pure converter tests at the top run everywhere; the ones on a real (tiny) reference model need
Meta's ``sam3`` package and skip where it is missing. Numerical parity is in test_fidelity.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import _reference as ref  # tests/ is on sys.path (pytest rootdir conftest)
from s3seg.engine._convert import convert_state_dict, is_official_checkpoint, load_official
from s3seg.errors import ModelError

# --------------------------------------------------------------------------------------------
# Converter tests that need no reference package
# --------------------------------------------------------------------------------------------


def _minimal_official() -> dict[str, torch.Tensor]:
    return {
        "detector.backbone.vision_backbone.trunk.ln_pre.weight": torch.ones(4),
        "detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight": torch.arange(24.0).view(6, 4),
        "detector.backbone.vision_backbone.trunk.blocks.0.attn.freqs_cis": torch.zeros(2, 2, dtype=torch.complex64),
        "detector.backbone.vision_backbone.trunk.pos_embed": torch.arange(15.0).view(1, 5, 3),
        "detector.backbone.language_backbone.encoder.text_projection": torch.arange(6.0).view(2, 3),
        "detector.transformer.decoder.bbox_embed.layers.2.bias": torch.zeros(4),
        "detector.geometry_encoder.points_direct_project.weight": torch.zeros(4, 2),
        "tracker.maskmem_tpos_enc": torch.zeros(7, 1, 1, 4),
        "tracker.sam_mask_decoder.anything.weight": torch.zeros(1),
    }


def test_convert_renames_splits_and_skips() -> None:
    official = _minimal_official()
    out = convert_state_dict(official)
    assert set(out) == {
        "vision_encoder.backbone.layer_norm.weight",
        "vision_encoder.backbone.layers.0.attention.q_proj.weight",
        "vision_encoder.backbone.layers.0.attention.k_proj.weight",
        "vision_encoder.backbone.layers.0.attention.v_proj.weight",
        "vision_encoder.backbone.embeddings.position_embeddings",
        "text_encoder.text_projection.weight",
        "detr_decoder.box_head.layer3.bias",
    }
    qkv = official["detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight"]
    assert torch.equal(out["vision_encoder.backbone.layers.0.attention.q_proj.weight"], qkv[0:2])
    assert torch.equal(out["vision_encoder.backbone.layers.0.attention.k_proj.weight"], qkv[2:4])
    assert torch.equal(out["vision_encoder.backbone.layers.0.attention.v_proj.weight"], qkv[4:6])
    pos = official["detector.backbone.vision_backbone.trunk.pos_embed"]
    assert torch.equal(out["vision_encoder.backbone.embeddings.position_embeddings"], pos[:, 1:])
    proj = official["detector.backbone.language_backbone.encoder.text_projection"]
    assert torch.equal(out["text_encoder.text_projection.weight"], proj.t())


def test_unprefixed_keys_are_accepted() -> None:
    official = {k.removeprefix("detector."): v for k, v in _minimal_official().items()}
    assert "vision_encoder.backbone.layer_norm.weight" in convert_state_dict(official)


@pytest.mark.parametrize(
    "bad_key",
    [
        "detector.backbone.vision_backbone.trunk.blocks.0.attn.bogus.weight",
        "detector.some_new_head.weight",
        "backbone.vision_backbone.trunk.class_embedding",
    ],
)
def test_unknown_key_raises_model_error(bad_key: str) -> None:
    official = _minimal_official()
    official[bad_key] = torch.zeros(1)
    with pytest.raises(ModelError) as info:
        convert_state_dict(official)
    assert bad_key in str(info.value)


def test_only_tracker_keys_raise() -> None:
    with pytest.raises(ModelError, match="no SAM3 detector weights"):
        convert_state_dict({"tracker.maskmem_tpos_enc": torch.zeros(1)})


def test_is_official_checkpoint_negatives(tmp_path: Path) -> None:
    assert not is_official_checkpoint(tmp_path)  # a directory
    assert not is_official_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "config.json").write_text("{}")
    assert not is_official_checkpoint(tmp_path / "config.json")
    torch.save({"model": {"encoder.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    assert not is_official_checkpoint(tmp_path / "other.pt")
    torch.save({"model": _minimal_official()}, tmp_path / "sam3.pt")
    assert is_official_checkpoint(tmp_path / "sam3.pt")


# --------------------------------------------------------------------------------------------
# Against Meta's reference model (tiny, random, CPU)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(official_file: Path) -> Any:
    return load_official(official_file)


def test_round_trip_is_strict(reference_model: torch.nn.Module) -> None:
    from transformers import Sam3Model

    official = {f"detector.{k}": v for k, v in reference_model.state_dict().items()}
    converted = convert_state_dict(official)
    model = Sam3Model(ref.tiny_config_for_reference())
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # every converted tensor really landed (no silent dtype/shape games)
    state = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(state[key], value), key


def test_load_official_file(official_file: Path, reference_model: torch.nn.Module, hf_model: Any) -> None:
    assert is_official_checkpoint(official_file)
    assert not hf_model.training
    assert hf_model.config.vision_config.backbone_config.hidden_size == ref.TINY.vit_dim  # config.json beside
    src = reference_model.state_dict()
    dst = hf_model.state_dict()
    d = ref.TINY.d_model
    assert torch.equal(
        dst["detr_decoder.layers.1.text_cross_attn.v_proj.weight"],
        src["transformer.decoder.layers.1.ca_text.in_proj_weight"][2 * d :],
    )
    assert torch.equal(dst["mask_decoder.prompt_cross_attn_norm.bias"], src["segmentation_head.cross_attn_norm.bias"])


def test_load_official_missing_key_names_it(reference_model: torch.nn.Module, tmp_path: Path) -> None:
    state = {f"detector.{k}": v for k, v in reference_model.state_dict().items()}
    del state["detector.transformer.decoder.presence_token.weight"]
    torch.save({"model": state}, tmp_path / "sam3.pt")
    (tmp_path / "config.json").write_text(ref.tiny_config_for_reference().to_json_string())
    with pytest.raises(ModelError, match=r"detr_decoder\.presence_token\.weight"):
        load_official(tmp_path / "sam3.pt")


def test_load_official_wrong_size_config(official_file: Path) -> None:
    config = ref.tiny_config_for_reference()
    config.detr_decoder_config.num_queries = ref.TINY.num_queries + 1
    with pytest.raises(ModelError, match="wrong shape"):
        load_official(official_file, config=config)


@pytest.mark.slow
def test_full_size_official_layout_matches_default_config() -> None:
    """Meta's full-size video model (the exact key set of sam3.pt) converts onto Sam3Config() for images and,
    tracker included, onto Sam3VideoConfig() for video."""
    pytest.importorskip("sam3")
    from transformers import Sam3Config, Sam3Model, Sam3VideoConfig, Sam3VideoModel

    official = ref.full_size_official_state_dict()
    assert any(k.startswith("tracker.") for k in official)
    assert any(".sam2_convs." in k for k in official)
    for video, build in ((False, lambda: Sam3Model(Sam3Config())), (True, lambda: Sam3VideoModel(Sam3VideoConfig()))):
        converted = convert_state_dict(official, video=video)
        with torch.device("meta"):
            expected = build().state_dict()
        assert sorted(converted) == sorted(expected)
        wrong = {
            k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in converted.items() if v.shape != expected[k].shape
        }
        assert not wrong
