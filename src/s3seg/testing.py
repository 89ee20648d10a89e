"""Random-weight SAM3 checkpoints for trying pipelines and testing without downloading the real weights.

``write_random_checkpoint(path, "tiny")`` writes a standard ``save_pretrained`` directory (weights,
config, processor, tokenizer) that loads through exactly the code path of real weights. By default it is
the layout of ``facebook/sam3``: a ``Sam3VideoModel`` (detector ``detector_model.*`` + tracker), which
serves images and videos; ``layout="image"`` writes a plain ``Sam3Model`` (images only). Its masks are
meaningless; its shapes, files and speed characteristics are real. Needs ``open_clip_torch`` for the
tokenizer vocabulary (``pip install 's3seg[official]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from transformers import Sam3Config, Sam3VideoConfig

Size = Literal["tiny", "small", "full"]
Layout = Literal["video", "image"]


def random_config(size: Size = "tiny") -> Sam3Config:
    """``tiny``: 112 px input, ~3 M parameters (tests); ``small``: 336 px, 8-layer 256-wide ViT,
    100 queries (CPU benchmarks); ``full``: SAM3's real architecture (1008 px, ~840 M parameters).

    The detector width is 128 in ``tiny`` too: the video tracker shares the detector's FPN features and
    needs a width that is a multiple of 64 and above 64 (its object pointers are split into 64-wide tokens).
    """
    from transformers import Sam3Config

    if size == "full":
        return Sam3Config()
    tiny = size == "tiny"
    image = 112 if tiny else 336
    p = image // 14
    vit = 32 if tiny else 256
    d = 128  # DETR / mask decoder / FPN width (see above)
    heads = 2 if tiny else 4
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=vit,
                intermediate_size=64 if tiny else 1184,
                num_hidden_layers=2 if tiny else 8,
                num_attention_heads=2 if tiny else 8,
                image_size=image,
                patch_size=14,
                window_size=4 if tiny else 8,
                global_attn_indexes=[1] if tiny else [3, 7],
                pretrain_image_size=image // 2,
            ),
            fpn_hidden_size=d,
            backbone_feature_sizes=[[4 * p, 4 * p], [2 * p, 2 * p], [p, p]],
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=49408,
            hidden_size=vit,
            intermediate_size=vit * 2 if tiny else 1024,
            projection_dim=vit,
            num_hidden_layers=1 if tiny else 4,
            num_attention_heads=heads,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(
            hidden_size=d,
            num_layers=1 if tiny else 2,
            num_attention_heads=heads,
            intermediate_size=256 if tiny else 512,
        ),
        detr_encoder_config=dict(
            hidden_size=d,
            num_layers=1 if tiny else 3,
            num_attention_heads=heads,
            intermediate_size=256 if tiny else 512,
        ),
        detr_decoder_config=dict(
            hidden_size=d,
            num_layers=1 if tiny else 3,
            num_attention_heads=heads,
            intermediate_size=256 if tiny else 512,
            num_queries=20 if tiny else 100,
        ),
        mask_decoder_config=dict(hidden_size=d, num_attention_heads=heads),
    )


def random_video_config(size: Size = "tiny") -> Sam3VideoConfig:
    """The video model (detector + memory tracker) around :func:`random_config`'s detector."""
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig

    detector = random_config(size)
    if size == "full":
        return Sam3VideoConfig()
    vision = detector.vision_config
    assert vision is not None and not isinstance(vision, dict)
    d = int(vision.fpn_hidden_size)
    image = detector.image_size
    tracker = Sam3TrackerVideoConfig(  # type: ignore[call-arg]  # image_size is a property set in __post_init__
        vision_config=vision.to_dict(),
        prompt_encoder_config=dict(hidden_size=d),
        mask_decoder_config=dict(hidden_size=d, mlp_dim=2 * d, num_attention_heads=2, iou_head_hidden_dim=d),
        memory_attention_hidden_size=d,
        memory_attention_num_layers=1 if size == "tiny" else 2,
        memory_attention_feed_forward_hidden_size=2 * d,
        memory_encoder_hidden_size=d,
        mask_downsampler_embed_dim=d,
        memory_fuser_embed_dim=d,
        memory_fuser_intermediate_dim=2 * d,
        image_size=image,
    )
    return Sam3VideoConfig(
        detector_config=detector.to_dict(),
        tracker_config=tracker.to_dict(),
        low_res_mask_size=4 * image // 14,
    )


def write_random_checkpoint(path: str | Path, size: Size = "tiny", seed: int = 0, layout: Layout = "video") -> Path:
    """Write a random-weight SAM3 in the ``save_pretrained`` layout to ``path`` and return it.

    ``layout="video"`` (default): ``Sam3VideoModel``, as ``facebook/sam3`` on the Hub (images and videos);
    ``"image"``: ``Sam3Model`` (images only). The detector weights are the same for one ``seed``.
    Every parameter gets a non-trivial random value (default init leaves norms constant and biases zero,
    which would hide a swapped or ignored parameter).
    """
    import torch
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor, Sam3VideoModel

    from s3seg.engine._load import quiet_transformers
    from s3seg.engine._tokenizer import build_clip_tokenizer

    path = Path(path)
    config = random_config(size)
    torch.manual_seed(seed)
    detector = Sam3Model(config).eval()  # type: ignore[no-untyped-call]
    _randomise(detector, seed)
    model: torch.nn.Module = detector
    if layout == "video":
        model = Sam3VideoModel(random_video_config(size)).eval()  # type: ignore[no-untyped-call]
        _randomise(model, seed + 1)
        model.detector_model.load_state_dict(detector.state_dict())  # type: ignore[union-attr]
    image = config.image_size
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": image, "width": image}),
        tokenizer=build_clip_tokenizer(),
    )
    with quiet_transformers():
        model.save_pretrained(path)  # type: ignore[operator]
        processor.save_pretrained(path)
    return path


def _randomise(model: torch.nn.Module, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def main(argv: list[str] | None = None) -> None:
    """``python -m s3seg.testing OUT_DIR [tiny|small|full]``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if (
        not args
        or args[0] in {"-h", "--help"}
        or len(args) > 2
        or (len(args) == 2 and args[1] not in ("tiny", "small", "full"))
    ):
        print("usage: python -m s3seg.testing OUT_DIR [tiny|small|full]  (random weights, for trying s3seg)")
        raise SystemExit(0 if args and args[0] in {"-h", "--help"} else 2)
    size: Size = args[1] if len(args) == 2 else "tiny"  # type: ignore[assignment]
    out = write_random_checkpoint(args[0], size)
    print(f"wrote a random-weight SAM3 ({size}) to {out}")


if __name__ == "__main__":
    main()
