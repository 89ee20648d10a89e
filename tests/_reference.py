"""Test-only helpers for parity checks against Meta's reference package ``sam3`` (0.1.4).

Nothing here is imported by ``s3seg`` itself. ``sam3`` is imported lazily, inside the functions
that need it, so this module can be imported (and the transformers-side helpers used) where
``sam3`` is not installed.

What lives here:

* :func:`build_tiny_reference_model` composes Meta's image model (``Sam3Image``) from its public
  classes the way ``sam3/model_builder.py`` wires them, but at tiny sizes, on CPU, and with every
  floating tensor of the state dict set to non-trivial random values.
* :func:`tiny_config_for_reference` is the matching ``transformers.Sam3Config``.
* :func:`save_official_checkpoint` writes a state dict in the layout of Meta's ``sam3.pt``.
* :func:`reference_predict` runs Meta's ``Sam3Processor`` flow and returns raw per-query outputs.

CPU workarounds (all local to this module, nothing in site-packages is patched):

* ``PositionEmbeddingSine(precompute_resolution=None)`` - the precompute path allocates on "cuda".
* ``TransformerDecoder(resolution=None, stride=None)`` - the coordinate cache is built on "cuda";
  with ``None`` it is built lazily on the features' device, with identical values.
* ``SequenceGeometryEncoder._encode_boxes`` calls ``Tensor.pin_memory()``, which raises without
  a CUDA driver; :func:`_no_pin_memory` turns it into a no-op while the reference runs.
* ``Sam3Processor(device="cpu")``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

BoxPrompt = tuple[float, float, float, float, bool]


@dataclass(frozen=True)
class TinySizes:
    """One place for every size the tiny reference model and its transformers config share."""

    resolution: int = 112  # input side; 112 / 14 = 8 patches per side
    patch_size: int = 14
    pretrain_image_size: int = 42  # 3x3 abs-pos grid, tiled up to 8x8 (exercises tiling)
    vit_dim: int = 64
    vit_heads: int = 4  # head_dim 16 (2D RoPE needs a multiple of 4)
    vit_depth: int = 3
    vit_mlp_ratio: float = 4.625  # as in SAM3: 64 * 4.625 = 296
    vit_window: int = 3  # 8 is not a multiple of 3: exercises window padding
    vit_global_blocks: tuple[int, ...] = (2,)  # the last block must be global (reference returns it)
    d_model: int = 32  # GroupNorm(8, d) in the pixel decoder needs a multiple of 8
    heads: int = 4
    ffn: int = 64
    text_width: int = 64
    text_heads: int = 4
    text_layers: int = 2
    text_context: int = 32
    text_proj_dim: int = 512  # reference TextTransformer's fixed default output_dim
    vocab_size: int = 49408
    num_queries: int = 12
    encoder_layers: int = 2
    decoder_layers: int = 2
    geometry_layers: int = 2


TINY = TinySizes()

#: The video model's detector: its FPN width is the tracker's hidden size, which transformers' tracker needs to
#: be a multiple of 64 above 64 (object pointers are split into 64-wide memory tokens).
TINY_VIDEO = TinySizes(d_model=128)


def bpe_path() -> Path:
    """open_clip ships the same BPE vocabulary that sam3 expects."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


# --------------------------------------------------------------------------------------------
# Reference model (Meta's sam3)
# --------------------------------------------------------------------------------------------


def build_tiny_reference_model(seed: int = 0, *, with_sam2_neck: bool = True, sizes: TinySizes = TINY) -> nn.Module:
    """Meta's ``Sam3Image`` at tiny sizes, eval mode, on CPU, with random non-trivial weights.

    ``with_sam2_neck`` adds the second ("sam2") FPN neck that the official checkpoint carries for
    the tracker / instance-interactivity path, so converter tests see those keys too.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as MultiheadAttention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    t = sizes
    torch.manual_seed(seed)
    d = t.d_model

    def pos_enc() -> nn.Module:
        # precompute_resolution=None: the precompute path allocates on "cuda".
        return PositionEmbeddingSine(
            num_pos_feats=d, normalize=True, scale=None, temperature=10000, precompute_resolution=None
        )

    vit = ViT(
        img_size=t.resolution,
        pretrain_img_size=t.pretrain_image_size,
        patch_size=t.patch_size,
        embed_dim=t.vit_dim,
        depth=t.vit_depth,
        num_heads=t.vit_heads,
        mlp_ratio=t.vit_mlp_ratio,
        norm_layer="LayerNorm",
        drop_path_rate=0.0,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=t.vit_global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=t.vit_window,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        compile_mode=None,
    )
    neck = Sam3DualViTDetNeck(
        position_encoding=pos_enc(),
        d_model=d,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=with_sam2_neck,
    )
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=str(bpe_path())),
        d_model=d,
        width=t.text_width,
        heads=t.text_heads,
        layers=t.text_layers,
        context_length=t.text_context,
        vocab_size=t.vocab_size,
    )
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    def mha(batch_first: bool, dropout: float = 0.1) -> nn.Module:
        return MultiheadAttention(num_heads=t.heads, dropout=dropout, embed_dim=d, batch_first=batch_first)

    enc_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=t.ffn,
        dropout=0.1,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=mha(True),
        cross_attention=mha(True),
    )
    encoder = TransformerEncoderFusion(
        layer=enc_layer,
        num_layers=t.encoder_layers,
        d_model=d,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    dec_layer = TransformerDecoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=t.ffn,
        dropout=0.1,
        cross_attention=mha(False),
        n_heads=t.heads,
        use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=dec_layer,
        num_layers=t.decoder_layers,
        num_queries=t.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=d,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=None,  # CPU: the eager coord cache would be allocated on "cuda"
        stride=None,
        use_act_checkpoint=True,
        presence_token=True,
    )
    transformer = TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)
    scoring = DotProductScoring(
        d_model=d,
        d_proj=d,
        prompt_mlp=MLP(
            input_dim=d,
            hidden_dim=t.ffn,
            output_dim=d,
            num_layers=2,
            dropout=0.1,
            residual=True,
            out_norm=nn.LayerNorm(d),
        ),
    )
    seg_head = UniversalSegmentationHead(
        hidden_dim=d,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=True,
        cross_attend_prompt=mha(False, dropout=0.0),
        pixel_decoder=PixelDecoder(
            num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d, compile_mode=None
        ),
    )
    geo_layer = TransformerEncoderLayer(
        activation="relu",
        d_model=d,
        dim_feedforward=t.ffn,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=mha(False),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=mha(False),
    )
    geometry = SequenceGeometryEncoder(
        pos_enc=pos_enc(),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=d,
        num_layers=t.geometry_layers,
        layer=geo_layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )
    model = Sam3Image(
        backbone=backbone,
        transformer=transformer,
        input_geometry_encoder=geometry,
        segmentation_head=seg_head,
        num_feature_levels=1,
        o2m_mask_predict=True,
        dot_prod_scoring=scoring,
        use_instance_query=False,
        multimask_output=True,
        inst_interactive_predictor=None,
        matcher=None,
    )
    model.eval()
    randomize_(model, seed)
    return model


def randomize_(model: nn.Module, seed: int) -> None:
    """Give every floating tensor of ``model.state_dict()`` deterministic non-trivial values.

    Random init leaves text-encoder tensors uninitialised (``torch.empty``) and every norm at
    weight=1 / bias=0; a swapped parameter would then go unnoticed. Norm weights become
    1 +- 0.1, other matrices get std 1/sqrt(fan_in) (keeps activations O(1)), vectors std 0.05,
    embeddings std 0.5; the ViT patch embedding and its abs-pos table are scaled down (see
    ``_SMALL_INPUT_SCALE``).
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    norm_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            norm_params.add(id(module.weight))
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not torch.is_floating_point(tensor):
                continue
            shape = tensor.shape
            if id(tensor) in norm_params:
                new = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            elif tensor.dim() >= 2 and not _is_embedding_like(name):
                fan_in = int(np.prod(shape[1:]))
                new = torch.randn(shape, generator=gen) / math.sqrt(max(fan_in, 1))
            elif _is_embedding_like(name):
                new = 0.5 * torch.randn(shape, generator=gen)
            else:
                new = 0.05 * torch.randn(shape, generator=gen)
            if any(part in name for part in _SMALL_INPUT_SCALE):
                new = new * 0.015
            tensor.copy_(new.to(tensor.dtype))


#: Inputs of the ViT's first LayerNorm are kept small (variance ~1e-4) so that its eps
#: (1e-5 in the reference vs 1e-6 in transformers' config) changes the output measurably.
_SMALL_INPUT_SCALE = ("trunk.patch_embed.", "trunk.pos_embed")


def _is_embedding_like(name: str) -> bool:
    return any(
        part in name
        for part in (
            "token_embedding",
            "positional_embedding",
            "pos_embed",
            "query_embed",
            "reference_points",
            "presence_token.",
            "label_embed",
            "cls_embed",
        )
    )


def tiny_config_for_reference(sizes: TinySizes = TINY) -> Any:
    """The ``transformers.Sam3Config`` matching :func:`build_tiny_reference_model`.

    The ViT ``layer_norm_eps`` is left at transformers' default (1e-6) on purpose, like the
    published config; the reference uses 1e-5 and :func:`apply_reference_fixes` corrects it.
    """
    from transformers import Sam3Config

    t = sizes
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": t.vit_dim,
                "intermediate_size": int(t.vit_dim * t.vit_mlp_ratio),
                "num_hidden_layers": t.vit_depth,
                "num_attention_heads": t.vit_heads,
                "image_size": t.resolution,
                "patch_size": t.patch_size,
                "window_size": t.vit_window,
                "global_attn_indexes": list(t.vit_global_blocks),
                "pretrain_image_size": t.pretrain_image_size,
            },
            "fpn_hidden_size": t.d_model,
            "backbone_feature_sizes": [
                [t.resolution // t.patch_size * 4] * 2,
                [t.resolution // t.patch_size * 2] * 2,
                [t.resolution // t.patch_size] * 2,
            ],
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.text_width,
            "intermediate_size": t.text_width * 4,
            "projection_dim": t.text_proj_dim,
            "num_hidden_layers": t.text_layers,
            "num_attention_heads": t.text_heads,
            "max_position_embeddings": t.text_context,
            "hidden_act": "gelu",
        },
        geometry_encoder_config={
            "hidden_size": t.d_model,
            "num_layers": t.geometry_layers,
            "num_attention_heads": t.heads,
            "intermediate_size": t.ffn,
        },
        detr_encoder_config={
            "hidden_size": t.d_model,
            "num_layers": t.encoder_layers,
            "num_attention_heads": t.heads,
            "intermediate_size": t.ffn,
        },
        detr_decoder_config={
            "hidden_size": t.d_model,
            "num_layers": t.decoder_layers,
            "num_queries": t.num_queries,
            "num_attention_heads": t.heads,
            "intermediate_size": t.ffn,
        },
        mask_decoder_config={
            "hidden_size": t.d_model,
            "num_upsampling_stages": 3,
            "num_attention_heads": t.heads,
        },
    )


#: The tracker's sizes that Meta's builder hard-wires (``sam3/model_builder.py``: ``build_tracker`` and the SAM
#: heads in ``sam3_tracker_base``); the tiny tracker keeps them so that only its width and depth shrink.
_TRACKER_MEM_DIM = 64
_TRACKER_SAM_MLP = 2048
_TRACKER_SAM_HEADS = 8
_TRACKER_IOU_HIDDEN = 256


def build_tiny_reference_tracker(seed: int = 0, *, sizes: TinySizes = TINY_VIDEO, memory_layers: int = 1) -> nn.Module:
    """Meta's video tracker (``Sam3TrackerPredictor``) as ``build_tracker`` wires it, at tiny sizes, on CPU,
    randomised; no backbone (in the video model the tracker reads the detector's ``sam2`` neck).

    Its ``state_dict()`` keys are exactly those under ``tracker.`` in Meta's ``sam3.pt``.
    """
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    t = sizes
    d = t.d_model
    grid = [t.resolution // t.patch_size] * 2
    torch.manual_seed(seed)
    maskmem = SimpleMaskEncoder(
        out_dim=_TRACKER_MEM_DIM,
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=_TRACKER_MEM_DIM, normalize=True, scale=None, temperature=10000, precompute_resolution=None
        ),
        mask_downsampler=SimpleMaskDownSampler(
            embed_dim=d, kernel_size=3, stride=2, padding=1, interpol_size=[t.resolution * 8 // 7] * 2
        ),
        fuser=SimpleFuser(
            layer=CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True),
            num_layers=2,
        ),
        in_dim=d,
    )

    def rope(**extra: Any) -> nn.Module:
        return RoPEAttention(
            embedding_dim=d,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            rope_theta=10000.0,
            feat_sizes=grid,
            use_fa3=False,
            use_rope_real=False,
            **extra,
        )

    layer = TransformerDecoderLayerv2(
        cross_attention_first=False,
        activation="relu",
        dim_feedforward=2 * d,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=rope(),
        d_model=d,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope(kv_in_dim=_TRACKER_MEM_DIM, rope_k_repeat=True),
    )
    encoder = TransformerEncoderCrossAttention(
        remove_cross_attention_layers=[],
        batch_first=True,
        d_model=d,
        frozen=False,
        pos_enc_at_input=True,
        layer=layer,
        num_layers=memory_layers,
        use_act_checkpoint=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker = Sam3TrackerPredictor(
            image_size=t.resolution,
            num_maskmem=7,
            backbone=None,
            backbone_stride=t.patch_size,
            transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=d),
            maskmem_backbone=maskmem,
            multimask_output_in_sam=True,
            forward_backbone_per_frame_for_eval=True,
            trim_past_non_cond_mem_for_eval=False,
            multimask_output_for_tracking=True,
            multimask_min_pt_num=0,
            multimask_max_pt_num=1,
            always_start_from_first_ann_frame=False,
            non_overlap_masks_for_mem_enc=False,
            non_overlap_masks_for_output=False,
            max_cond_frames_in_attn=4,
            offload_output_to_cpu_for_eval=False,
            sam_mask_decoder_extra_args={
                "dynamic_multimask_via_stability": True,
                "dynamic_multimask_stability_delta": 0.05,
                "dynamic_multimask_stability_thresh": 0.98,
            },
            clear_non_cond_mem_around_input=True,
            fill_hole_area=0,
            use_memory_selection=True,
        )
    tracker.eval()
    randomize_(tracker, seed)
    return tracker


def tiny_video_config_for_reference(sizes: TinySizes = TINY_VIDEO, memory_layers: int = 1) -> Any:
    """The ``transformers.Sam3VideoConfig`` matching :func:`build_tiny_reference_model` (with ``sizes``) plus
    :func:`build_tiny_reference_tracker`."""
    from transformers import Sam3TrackerVideoConfig, Sam3VideoConfig

    detector = tiny_config_for_reference(sizes)
    d = sizes.d_model
    tracker = Sam3TrackerVideoConfig(
        vision_config=detector.vision_config.to_dict(),
        prompt_encoder_config={"hidden_size": d},
        mask_decoder_config={
            "hidden_size": d,
            "mlp_dim": _TRACKER_SAM_MLP,
            "num_attention_heads": _TRACKER_SAM_HEADS,
            "iou_head_hidden_dim": _TRACKER_IOU_HIDDEN,
        },
        memory_attention_hidden_size=d,
        memory_attention_num_layers=memory_layers,
        memory_attention_feed_forward_hidden_size=2 * d,
        memory_encoder_hidden_size=d,
        memory_encoder_output_channels=_TRACKER_MEM_DIM,
        mask_downsampler_embed_dim=d,
        memory_fuser_embed_dim=d,
        memory_fuser_intermediate_dim=4 * d,  # Meta's CXBlock: 4 x its width, fixed
        image_size=sizes.resolution,
    )
    return Sam3VideoConfig(
        detector_config=detector.to_dict(),
        tracker_config=tracker.to_dict(),
        low_res_mask_size=4 * sizes.resolution // sizes.patch_size,
    )


def build_tiny_reference_video_model(detector: nn.Module, tracker: nn.Module, **overrides: Any) -> nn.Module:
    """Meta's video model (``Sam3VideoInferenceWithInstanceInteractivity``) around a tiny detector from
    :func:`build_tiny_reference_model` (``sizes=TINY_VIDEO``) and a tracker from
    :func:`build_tiny_reference_tracker`, with ``build_sam3_video_model``'s settings unless ``overrides``.

    The detector becomes the video builder's ``Sam3ImageOnVideoMultiGPU`` (a subclass of ``Sam3Image`` that adds
    only multi-GPU bookkeeping: one process here) with its joint box scores (score × presence).
    """
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    detector.__class__ = Sam3ImageOnVideoMultiGPU
    detector.rank, detector.world_size = 0, 1
    detector.async_all_gather, detector.gather_backbone_out = True, True
    detector.supervise_joint_box_scores = True
    settings: dict[str, Any] = {
        "score_threshold_detection": 0.5,
        "assoc_iou_thresh": 0.1,
        "det_nms_thresh": 0.1,
        "new_det_thresh": 0.7,
        "hotstart_delay": 15,
        "hotstart_unmatch_thresh": 8,
        "hotstart_dup_thresh": 8,
        "suppress_unmatched_only_within_hotstart": True,
        "min_trk_keep_alive": -1,
        "max_trk_keep_alive": 30,
        "init_trk_keep_alive": 30,
        "suppress_overlapping_based_on_recent_occlusion_threshold": 0.7,
        "suppress_det_close_to_boundary": False,
        "fill_hole_area": 16,
        "recondition_every_nth_frame": 16,
        "masklet_confirmation_enable": False,
        "decrease_trk_keep_alive_for_empty_masklets": False,
        "image_mean": (0.5, 0.5, 0.5),
        "image_std": (0.5, 0.5, 0.5),
        "compile_model": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Sam3VideoInferenceWithInstanceInteractivity(
            detector=detector, tracker=tracker, image_size=int(tracker.image_size), **(settings | overrides)
        )
    return model.eval()


@contextlib.contextmanager
def _reference_video_on_cpu(tracker: nn.Module) -> Iterator[None]:
    """The video reference's CUDA-only spots, made to run on CPU for the duration of the block.

    * ``Tensor.cuda()`` (tracker memory, frames) and ``Tensor.pin_memory()`` become no-ops;
    * the tracker's per-object state is kept on the CPU (``offload_state_to_cpu``: its default storage device
      is a hard-coded "cuda");
    * connected components (hole filling, ``fill_hole_area``) on CPU need scikit-image, which is not installed
      here: a flood fill stands in (8-connected, as skimage's ``label``), and an empty batch (no objects yet),
      which the reference's CPU path cannot stack, gives empty results.
    """
    import sam3.perflib.connected_components as cc

    def flood(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        areas = torch.from_numpy(component_areas(values.cpu().numpy().astype(bool)))
        return (areas > 0).long(), areas

    original_batch = cc.connected_components_cpu

    def batch(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if values.shape[0] == 0:
            empty = torch.zeros(values.shape, dtype=torch.int64)
            return empty, empty.clone()
        return original_batch(values)  # type: ignore[no-any-return]

    original_init = tracker.init_state

    def init_state(*args: Any, **kwargs: Any) -> Any:
        return original_init(*args, **{**kwargs, "offload_state_to_cpu": True})

    saved = (torch.Tensor.cuda, torch.Tensor.pin_memory, cc.connected_components_cpu_single)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign,assignment]
    torch.Tensor.pin_memory = lambda self, *a, **k: self  # type: ignore[method-assign,assignment]
    cc.connected_components_cpu_single = flood
    cc.connected_components_cpu = batch
    tracker.init_state = init_state  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.pin_memory, cc.connected_components_cpu_single = saved  # type: ignore[method-assign]
        cc.connected_components_cpu = original_batch
        del tracker.init_state


def reference_track(model: nn.Module, frames: Sequence[np.ndarray], text: str) -> dict[str, dict[int, Any]]:
    """Meta's video flow on RGB uint8 frames (side = the model's input size, so no resize happens): ``init_state``
    on the frames as PIL images, ``add_prompt`` on frame 0, then ``propagate_in_video`` over the clip.

    The tracker runs under bfloat16 autocast, as the reference runs everywhere on CUDA (its tracker enters a
    bfloat16 autocast for the whole process and casts memory features to bfloat16 explicitly; on CPU the same
    casts need CPU autocast to run at all). Returns ``{"prompt": {0: out}, "propagate": {frame: out}}`` with
    the reference's per-frame outputs (``out_obj_ids``, ``out_probs``, ``out_binary_masks``).
    """
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with warnings.catch_warnings(), _reference_video_on_cpu(model.tracker):
        warnings.simplefilter("ignore")
        with torch.inference_mode():
            state = model.init_state(images, offload_video_to_cpu=True)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, first = model.add_prompt(state, 0, text_str=text)
            propagated = dict(model.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=len(frames)))
    return {"prompt": {0: first}, "propagate": propagated}


def component_areas(binary: np.ndarray) -> np.ndarray:
    """Each pixel's 8-connected component area (0 off ``binary``), by breadth-first flood fill."""
    from collections import deque

    h, w = binary.shape
    out = np.zeros((h, w), dtype=np.int64)
    seen = np.zeros((h, w), dtype=bool)
    for y0, x0 in zip(*np.nonzero(binary), strict=True):
        if seen[y0, x0]:
            continue
        component, queue = [], deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            component.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        for y, x in component:
            out[y, x] = len(component)
    return out


def save_official_checkpoint(
    model: nn.Module,
    path: Path,
    *,
    tracker_state: dict[str, torch.Tensor] | None = None,
    config: Any | None = None,
) -> Path:
    """Write ``model``'s state dict in the layout of Meta's ``sam3.pt``.

    Layout: ``{"model": {"detector.<Sam3Image key>": tensor, ..., "tracker.<key>": tensor}}``
    (what ``sam3.model_builder`` reads back: it strips ``detector.`` for the image model and loads
    the whole dict strictly into the video model). ``tracker_state`` adds ``tracker.*`` entries
    (keys given without the prefix). A transformers ``config.json`` (the tiny config unless
    ``config`` is given) is written beside the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {f"detector.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in (tracker_state or {}).items():
        state[f"tracker.{k}"] = v.detach().clone()
    torch.save({"model": state}, path)
    cfg = config if config is not None else tiny_config_for_reference()
    (path.parent / "config.json").write_text(cfg.to_json_string())
    return path


@contextlib.contextmanager
def _cpu_buildable_builder() -> Iterator[None]:
    """Let ``sam3.model_builder`` build full-size models without CUDA, then undo the changes.

    Two constructors allocate on "cuda" unconditionally: ``PositionEmbeddingSine`` (its
    precompute cache) and ``TransformerDecoder`` (its box-RPB coordinate cache). The class
    attributes are swapped for the duration of the ``with`` block only; no file is touched.
    """
    import sam3.model.decoder as decoder_mod
    import sam3.model.position_encoding as pe_mod

    original_init = pe_mod.PositionEmbeddingSine.__init__
    original_coords = decoder_mod.TransformerDecoder.__dict__["_get_coords"]

    def init_without_precompute(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["precompute_resolution"] = None
        original_init(self, *args, **kwargs)

    def coords_on_cpu(h: int, w: int, device: Any) -> Any:
        return original_coords.__func__(h, w, "cpu")

    pe_mod.PositionEmbeddingSine.__init__ = init_without_precompute  # type: ignore[method-assign]
    decoder_mod.TransformerDecoder._get_coords = staticmethod(coords_on_cpu)
    try:
        yield
    finally:
        pe_mod.PositionEmbeddingSine.__init__ = original_init  # type: ignore[method-assign]
        decoder_mod.TransformerDecoder._get_coords = original_coords


def full_size_official_state_dict() -> dict[str, torch.Tensor]:
    """The state dict of Meta's full-size video model, i.e. exactly the key set of ``sam3.pt``.

    Built with ``sam3.model_builder.build_sam3_video_model`` (random init, no download): keys
    ``detector.*`` (the image model, incl. the sam2 neck) and ``tracker.*``. Takes ~25 s and
    ~5 GB of RAM.
    """
    with warnings.catch_warnings():
        # importing the video modules runs @torch.autocast(device_type="cuda"), which warns on CPU
        warnings.simplefilter("ignore")
        from sam3.model_builder import build_sam3_video_model

    with _cpu_buildable_builder(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam3_video_model(checkpoint_path=None, load_from_HF=False, device="cpu", bpe_path=str(bpe_path()))
    return dict(model.state_dict())


def build_full_size_reference_model(seed: int = 0) -> nn.Module:
    """Meta's full-size SAM3 image model (1008 px, ~840 M parameters), randomised, on CPU (~5 GB)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sam3.model_builder import build_sam3_image_model

    with _cpu_buildable_builder(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam3_image_model(checkpoint_path=None, load_from_HF=False, device="cpu", bpe_path=str(bpe_path()))
    randomize_(model, seed)
    model.s3seg_resolution = 1008  # read by reference_predict
    return model.eval()


@contextlib.contextmanager
def _no_pin_memory() -> Iterator[None]:
    """Make ``Tensor.pin_memory`` a no-op (it raises without a CUDA driver)."""
    original = torch.Tensor.pin_memory

    def _identity(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.pin_memory = _identity  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.pin_memory = original  # type: ignore[method-assign]


def _boxes_to_cxcywh_norm(boxes: Sequence[BoxPrompt], width: int, height: int) -> list[tuple[list[float], bool]]:
    out = []
    for x0, y0, x1, y1, positive in boxes:
        cx = (x0 + x1) / 2.0 / width
        cy = (y0 + y1) / 2.0 / height
        w = (x1 - x0) / width
        h = (y1 - y0) / height
        out.append(([cx, cy, w, h], bool(positive)))
    return out


def reference_predict(
    model: nn.Module,
    image_rgb_uint8: np.ndarray,
    text: str | None,
    boxes_xyxy_pixels: Sequence[BoxPrompt] = (),
) -> dict[str, np.ndarray]:
    """Run Meta's ``Sam3Processor`` flow; return raw outputs for ALL queries (no threshold).

    Prompts go through the processor exactly as a user would send them (``set_image`` with a PIL
    image, ``set_text_prompt``, ``add_geometric_prompt`` per box; box-only prompts get the text
    "visual" from the processor itself). The final ``model.forward_grounding`` call is made here
    so that nothing is thresholded; post-processing mirrors ``Sam3Processor._forward_grounding``.

    Returns ``scores`` (Q,), ``boxes`` (Q, 4) xyxy pixels of the original image, ``mask_logits``
    (Q, H, W) float32 logits bilinearly upsampled (align_corners=False) to the original size.
    """
    from PIL import Image
    from sam3.model import box_ops
    from sam3.model.data_misc import interpolate
    from sam3.model.sam3_image_processor import Sam3Processor

    if text is None and not boxes_xyxy_pixels:
        raise ValueError("need a text or at least one box")
    height, width = image_rgb_uint8.shape[:2]
    resolution = int(getattr(model, "s3seg_resolution", TINY.resolution))
    processor = Sam3Processor(model, resolution=resolution, device="cpu", confidence_threshold=0.5)
    with _no_pin_memory(), torch.inference_mode():
        # PIL on purpose: Sam3Processor.set_image reads (H, W) from ndarray.shape[-2:], which is
        # (W, C) for an HWC numpy array.
        state = processor.set_image(Image.fromarray(image_rgb_uint8))
        if text is not None:
            state = processor.set_text_prompt(text, state)
        for box, positive in _boxes_to_cxcywh_norm(boxes_xyxy_pixels, width, height):
            state = processor.add_geometric_prompt(box, positive, state)
        outputs = model.forward_grounding(
            backbone_out=state["backbone_out"],
            find_input=processor.find_stage,
            geometric_prompt=state["geometric_prompt"],
            find_target=None,
        )
        out_logits = outputs["pred_logits"]
        presence = outputs["presence_logit_dec"].sigmoid().unsqueeze(1)
        scores = (out_logits.sigmoid() * presence).squeeze(-1)[0]
        boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"])[0]
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype)
        boxes = boxes * scale[None, :]
        masks = interpolate(
            outputs["pred_masks"][0].unsqueeze(1), (height, width), mode="bilinear", align_corners=False
        )[:, 0]
    return {
        "scores": scores.float().numpy().copy(),
        "boxes": boxes.float().numpy().copy(),
        "mask_logits": masks.float().numpy().copy(),
    }


def synthetic_photo(width: int = 300, height: int = 217, seed: int = 0) -> np.ndarray:
    """A photo-like RGB uint8 image: gradients, a few filled shapes, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 60 + 120 * xx / width
    img[..., 1] = 90 + 100 * yy / height
    img[..., 2] = 140 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    # a disc, a rectangle, a triangle
    disc = (xx - 0.3 * width) ** 2 + (yy - 0.4 * height) ** 2 < (0.15 * height) ** 2
    img[disc] = (220, 60, 40)
    rect = (xx > 0.55 * width) & (xx < 0.85 * width) & (yy > 0.55 * height) & (yy < 0.9 * height)
    img[rect] = (30, 160, 70)
    tri = (yy > 0.1 * height) & (yy < 0.45 * height) & (np.abs(xx - 0.7 * width) < (yy - 0.1 * height) * 0.6)
    img[tri] = (240, 220, 60)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / max(||b||, tiny)."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    return float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30))
