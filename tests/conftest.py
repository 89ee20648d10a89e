"""Shared fixtures: a tiny random-weight SAM3 checkpoint written with save_pretrained, loaded through the
same code path as real weights, and a real photo (matplotlib ships Grace Hopper's portrait)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TINY_IMAGE_SIZE = 112  # must be a multiple of 14 (the patch size) and give 8×8 patches for window 4


def tiny_sam3_config():  # type: ignore[no-untyped-def]
    from transformers import Sam3Config

    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=14, window_size=4,
                global_attn_indexes=[1], pretrain_image_size=56,
            ),
            fpn_hidden_size=32,
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        ),
        text_config=dict(
            model_type="clip_text_model", vocab_size=49408, hidden_size=32, intermediate_size=64,
            projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=2, intermediate_size=64,
                                 num_queries=20),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight SAM3 in the standard save_pretrained layout (weights, config, processor, tokenizer)."""
    import torch
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    from s3seg.engine._tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config()).eval()
    with torch.no_grad():  # default init leaves norms constant; spread every tensor so all of them matter
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(path)
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}),
        tokenizer=build_clip_tokenizer(),
    )
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3"))


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
