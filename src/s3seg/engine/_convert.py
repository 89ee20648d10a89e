"""Load Meta's official SAM3 checkpoint (``sam3.pt``) into transformers' ``Sam3Model`` (images) or
``Sam3VideoModel`` (video: detector + tracker).

This is our own key mapping; it does not import Meta's ``sam3`` package.

File layout
-----------
``sam3.pt`` is a ``torch.save`` pickle. The state dict may sit at the top level or be wrapped
under ``"model"`` (or ``"state_dict"``). The official file holds the *video* model: detector keys
are prefixed ``detector.`` and the tracker's ``tracker.``. A plain ``Sam3Image.state_dict()``
(no prefix) and the ``sam3_model.`` prefix are accepted too. For the image model everything under
``tracker.`` and the detector's second neck ``sam2_convs`` are left out on purpose (``Sam3Model`` has
no place for them). For the video model the detector keys go under ``detector_model.``, the
``sam2_convs`` neck becomes ``tracker_neck`` and the tracker keys ``tracker_model.`` (see below).

Key layout, reference -> transformers
-------------------------------------
Vision trunk (``backbone.vision_backbone.trunk.*`` -> ``vision_encoder.backbone.*``):
``patch_embed.proj`` becomes ``embeddings.patch_embeddings.projection`` (no bias in either);
``pos_embed`` (1, 1 + N, C) carries a leading CLS position that the reference drops at run time,
so its first row is removed to give ``embeddings.position_embeddings`` (1, N, C); ``ln_pre`` is
``layer_norm``; in ``blocks.<i>``, ``norm1``/``norm2`` are ``layers.<i>.layer_norm1``/``2``, the
fused ``attn.qkv`` (3C, C) is cut into equal thirds ``attention.q_proj``/``k_proj``/``v_proj``
(the reference reshapes its output as (…, 3, heads, head_dim), i.e. q, k, v blocks in that
order), ``attn.proj`` is ``attention.o_proj`` and ``mlp.fc1``/``fc2`` keep their names. The
complex RoPE table ``attn.freqs_cis`` is a persistent buffer in the reference; transformers
recomputes it (``rotary_emb``), so it is skipped.

FPN neck (``backbone.vision_backbone.convs.<j>.*`` -> ``vision_encoder.neck.fpn_layers.<j>.*``):
``dconv_2x2_0`` -> ``scale_layers.0``, ``dconv_2x2_1`` -> ``scale_layers.2`` (index 1 is the GELU),
``dconv_2x2`` -> ``scale_layers.0``, ``conv_1x1`` -> ``proj1``, ``conv_3x3`` -> ``proj2``. The
second neck ``sam2_convs.*`` only feeds the tracker / SAM1-style interactive predictor and is
skipped.

Text encoder (``backbone.language_backbone.encoder.*`` -> ``text_encoder.text_model.*``, a CLIP
text model): ``token_embedding`` -> ``embeddings.token_embedding``; ``positional_embedding`` (a
bare parameter) -> ``embeddings.position_embedding.weight``; in ``transformer.resblocks.<i>``,
``attn.in_proj_weight/bias`` (PyTorch ``nn.MultiheadAttention``, q/k/v stacked on dim 0) is cut
into ``self_attn.q_proj``/``k_proj``/``v_proj``, ``attn.out_proj`` -> ``self_attn.out_proj``,
``ln_1``/``ln_2`` -> ``layer_norm1``/``2``, ``mlp.c_fc``/``c_proj`` -> ``mlp.fc1``/``fc2``;
``ln_final`` -> ``final_layer_norm``. The CLIP ``text_projection`` parameter is stored (width,
out) and is transposed into ``text_encoder.text_projection.weight`` (it is unused by SAM3 but
present in both models). ``backbone.language_backbone.resizer`` (width -> d_model) is
``Sam3Model.text_projection``.

Every ``nn.MultiheadAttention`` elsewhere follows one rule: ``<m>.in_proj_weight/bias`` ->
``<m'>.q_proj``/``k_proj``/``v_proj`` and ``<m>.out_proj`` -> ``<m'>.o_proj``.

Geometry encoder (``geometry_encoder.*``, same prefix in transformers): ``label_embed``,
``cls_embed``, ``boxes_direct_project``, ``boxes_pool_project``, ``boxes_pos_enc_project``,
``final_proj`` keep their names; ``norm`` -> ``prompt_layer_norm``, ``img_pre_norm`` ->
``vision_layer_norm``, ``encode_norm`` -> ``output_layer_norm``; ``encode.<i>`` ->
``layers.<i>`` with ``self_attn``, ``cross_attn_image`` -> ``cross_attn``, ``linear1``/``linear2``
-> ``mlp.fc1``/``fc2``, ``norm1``/``2``/``3`` -> ``layer_norm1``/``2``/``3``. The point-prompt
projections (``points_direct_project``, ``points_pool_project``, ``points_pos_enc_project``) are
skipped: transformers' ``Sam3Model`` takes boxes only, and the reference's SAM3 image path never
fills points either.

DETR encoder (``transformer.encoder.layers.<i>`` -> ``detr_encoder.layers.<i>``): as the geometry
encoder layers.

DETR decoder (``transformer.decoder.*`` -> ``detr_decoder.*``): per layer ``self_attn`` +
``norm2`` -> ``self_attn`` + ``self_attn_layer_norm``; ``ca_text`` + ``catext_norm`` ->
``text_cross_attn`` + ``text_cross_attn_layer_norm``; ``cross_attn`` + ``norm1`` ->
``vision_cross_attn`` + ``vision_cross_attn_layer_norm``; ``linear1``/``2`` -> ``mlp.fc1``/``2``,
``norm3`` -> ``mlp_layer_norm``. Top level: ``norm`` -> ``output_layer_norm``; the reference's
``MLP.layers.<k>`` become ``layer<k+1>`` in ``bbox_embed`` -> ``box_head``,
``presence_token_head`` -> ``presence_head``, ``ref_point_head``, ``boxRPB_embed_x``/``y`` ->
``box_rpb_embed_x``/``y``; ``presence_token_out_norm`` -> ``presence_layer_norm``;
``query_embed``, ``reference_points``, ``presence_token`` keep their names.

Scoring (``dot_prod_scoring.*`` -> ``dot_product_scoring.*``): ``prompt_mlp.layers.0``/``1`` ->
``text_mlp.layer1``/``2``, ``prompt_mlp.out_norm`` -> ``text_mlp_out_norm``, ``prompt_proj`` ->
``text_proj``, ``hs_proj`` -> ``query_proj``.

Mask head (``segmentation_head.*`` -> ``mask_decoder.*``): ``pixel_decoder.conv_layers``/``norms``
keep their names; ``mask_predictor.mask_embed.layers.<k>`` -> ``mask_embedder.layers.<k>``;
``instance_seg_head`` -> ``instance_projection``; ``semantic_seg_head`` -> ``semantic_projection``;
``cross_attend_prompt`` -> ``prompt_cross_attn``; ``cross_attn_norm`` -> ``prompt_cross_attn_norm``.

Video tracker (``tracker.*`` -> ``tracker_model.*``; Meta's ``Sam3TrackerPredictor`` as
``sam3.model_builder.build_tracker`` wires it). Parameters: ``maskmem_tpos_enc`` ->
``memory_temporal_positional_encoding``, ``no_mem_embed``/``no_mem_pos_enc`` ->
``no_memory_embedding``/``no_memory_positional_encoding``, ``no_obj_ptr`` -> ``no_object_pointer``,
``no_obj_embed_spatial`` -> ``occlusion_spatial_embedding_parameter``; ``obj_ptr_tpos_proj`` ->
``temporal_positional_encoding_projection_layer``. SAM-style MLPs (``obj_ptr_proj``, the mask decoder's
``output_hypernetworks_mlps.<i>``, ``iou_prediction_head``, ``pred_obj_score_head``): ``layers.0`` ->
``proj_in``, ``layers.<k>`` -> ``layers.<k-1>``, the last -> ``proj_out``. Attention there has separate
``q_proj``/``k_proj``/``v_proj`` (kept) and ``out_proj`` -> ``o_proj``.
Memory attention: ``transformer.encoder.layers.<i>`` -> ``memory_attention.layers.<i>`` (``norm<n>`` ->
``layer_norm<n>``), ``transformer.encoder.norm`` -> ``memory_attention.layer_norm``.
Memory encoder: ``maskmem_backbone`` -> ``memory_encoder``; ``mask_downsampler.encoder.<3k>``/``<3k+1>``
-> ``mask_downsampler.layers.<k>.conv``/``.layer_norm`` for the builder's 4 stages and ``encoder.12`` ->
``final_conv``; ``pix_feat_proj`` -> ``feature_projection``; ``out_proj`` -> ``projection``; in
``fuser.layers.<i>``: ``gamma`` -> ``scale``, ``dwconv`` -> ``depthwise_conv``, ``norm`` -> ``layer_norm``,
``pwconv1``/``2`` -> ``pointwise_conv1``/``2`` (under ``memory_fuser``).
Prompt encoder (``sam_prompt_encoder`` -> ``prompt_encoder``): ``pe_layer.positional_encoding_gaussian_matrix``
-> ``shared_embedding.positional_embedding`` and, the same tensor, the model's
``shared_image_embedding.positional_embedding``; ``point_embeddings.<i>`` (four (1, D) tables) are joined
into ``point_embed`` (4, D); ``mask_downscaling.0/1/3/4/6`` -> ``mask_embed.conv1/layer_norm1/conv2/
layer_norm2/conv3``. Mask decoder (``sam_mask_decoder`` -> ``mask_decoder``): in ``transformer.layers.<i>``
``norm<n>`` -> ``layer_norm<n>`` and ``mlp.lin1``/``lin2`` -> ``mlp.proj_in``/``proj_out``;
``transformer.norm_final_attn`` -> ``transformer.layer_norm_final_attn``; ``output_upscaling.0/1/3`` ->
``upscale_conv1``/``upscale_layer_norm``/``upscale_conv2``; tokens and ``conv_s0``/``conv_s1`` keep names.
Tracker neck: ``backbone.vision_backbone.sam2_convs.<j>`` -> ``tracker_neck.fpn_layers.<j>``, renamed as the
detector's neck.

Anything else is an error (:class:`s3seg.errors.ModelError`), so a checkpoint with a different
architecture never loads half-mapped; for video, a checkpoint without tracker keys is one too.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from s3seg.errors import ModelError

if TYPE_CHECKING:
    from transformers import Sam3Config, Sam3Model, Sam3VideoConfig, Sam3VideoModel

__all__ = ["convert_state_dict", "is_official_checkpoint", "load_official", "load_official_video"]

#: Prefixes in front of the detector (image model) keys. Tried in order; no prefix is also fine.
_DETECTOR_PREFIXES = ("detector.", "sam3_model.")

#: Official keys that are intentionally not loaded, with the reason.
_SKIPPED: tuple[tuple[re.Pattern[str], str], ...] = (
    # RoPE tables: a persistent (complex) buffer in the reference; transformers recomputes them.
    (re.compile(r"^backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis$"), "rope table"),
    # Second FPN neck feeding the tracker (mapped for the video model before this list is read).
    (re.compile(r"^backbone\.vision_backbone\.sam2_convs\."), "tracker neck"),
    # Point-prompt projections: transformers' Sam3Model has no point prompts.
    (re.compile(r"^geometry_encoder\.points_(direct_project|pool_project|pos_enc_project)\."), "point prompts"),
    # SAM1-task interactive predictor (a tracker copy), only in image models built with it.
    (re.compile(r"^inst_interactive_predictor\."), "interactive predictor"),
)

#: Keys of ``Sam3Model.state_dict()`` that transformers computes itself and that may be absent
#: from a converted official checkpoint. (In transformers 5.x the RoPE tables and position ids
#: are non-persistent buffers, so this matches nothing there; kept for other versions.)
_COMPUTED_BY_TRANSFORMERS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\.rotary_emb\.(inv_freq|original_inv_freq|rope_embeddings)$"),
    re.compile(r"\.position_ids$"),
)

_Convert = Callable[[torch.Tensor], list[torch.Tensor]]


def _keep(t: torch.Tensor) -> list[torch.Tensor]:
    return [t]


def _split3(t: torch.Tensor) -> list[torch.Tensor]:
    if t.shape[0] % 3:
        raise ModelError(f"cannot split a fused q/k/v tensor of shape {tuple(t.shape)} into three")
    return [c.contiguous() for c in torch.chunk(t, 3, dim=0)]


def _drop_cls_position(t: torch.Tensor) -> list[torch.Tensor]:
    if t.dim() != 3 or t.shape[1] < 2:
        raise ModelError(f"unexpected pos_embed shape {tuple(t.shape)}")
    return [t[:, 1:, :].contiguous()]


def _transpose(t: torch.Tensor) -> list[torch.Tensor]:
    return [t.t().contiguous()]


_QKV = ("q_proj", "k_proj", "v_proj")


class _Rule:
    """``pattern`` (anchored, on the un-prefixed key) -> one or three target keys.

    ``target`` is a ``re`` replacement template; when ``split`` is set, the template holds
    ``{qkv}``, filled with q_proj, k_proj, v_proj for the three equal chunks of the tensor.
    ``copies`` are further templates that receive the same tensor (one weight, two places).
    """

    __slots__ = ("convert", "copies", "pattern", "split", "target")

    def __init__(
        self, pattern: str, target: str, convert: _Convert = _keep, split: bool = False, copies: tuple[str, ...] = ()
    ) -> None:
        self.pattern = re.compile("^" + pattern + "$")
        self.target = target
        self.convert = convert
        self.split = split
        self.copies = copies

    def apply(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor] | None:
        match = self.pattern.match(key)
        if match is None:
            return None
        parts = self.convert(tensor)
        if self.split:
            return {
                match.expand(self.target.replace("{qkv}", name)): part for name, part in zip(_QKV, parts, strict=True)
            }
        return {match.expand(target): parts[0] for target in (self.target, *self.copies)}


_WB = r"(weight|bias)"


def _mha(src: str, dst: str, out_name: str = "o_proj") -> list[_Rule]:
    """An ``nn.MultiheadAttention`` at ``src`` -> separate projections at ``dst``."""
    group = src.count("(") + 1  # the (weight|bias) group comes after the ones in ``src``
    return [
        _Rule(src + r"\.in_proj_" + _WB, f"{dst}.{{qkv}}.\\{group}", _split3, split=True),
        _Rule(src + r"\.out_proj\." + _WB, f"{dst}.{out_name}.\\{group}"),
    ]


def _same(src: str, dst: str) -> _Rule:
    """A module whose parameters keep their names: ``src.(weight|bias)`` -> ``dst.(weight|bias)``."""
    return _Rule(src + r"\." + _WB, f"{dst}.\\{src.count('(') + 1}")


def _mlp(src: str, dst: str, num_layers: int) -> list[_Rule]:
    """Reference ``MLP.layers.<k>`` -> transformers ``Sam3DecoderMLP.layer<k+1>``."""
    return [_same(f"{src}\\.layers\\.{k}", f"{dst}.layer{k + 1}") for k in range(num_layers)]


def _renamed(src: str, dst: str, names: tuple[tuple[str, str], ...]) -> list[_Rule]:
    """Modules under ``src`` that move under ``dst``: (reference name, transformers name) pairs, plain names."""
    return [_same(f"{src}\\.{re.escape(a)}", f"{dst}.{b}") for a, b in names]


_NORMS_123 = (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("norm3", "layer_norm3"))


def _encoder_layer(src: str, dst: str) -> list[_Rule]:
    """Reference ``TransformerEncoderLayer`` -> transformers geometry/DETR encoder layer."""
    return [
        *_mha(src + r"\.self_attn", dst + ".self_attn"),
        *_mha(src + r"\.cross_attn_image", dst + ".cross_attn"),
        *_renamed(src, dst, (("linear1", "mlp.fc1"), ("linear2", "mlp.fc2"), *_NORMS_123)),
    ]


def _neck(src: str, dst: str) -> list[_Rule]:
    """One reference FPN level (``convs.<j>`` or ``sam2_convs.<j>``) -> transformers' ``fpn_layers.<j>``."""
    return _renamed(
        src,
        dst,
        (
            ("dconv_2x2_0", "scale_layers.0"),
            ("dconv_2x2_1", "scale_layers.2"),
            ("dconv_2x2", "scale_layers.0"),
            ("conv_1x1", "proj1"),
            ("conv_3x3", "proj2"),
        ),
    )


def _attn(src: str, dst: str) -> list[_Rule]:
    """SAM-style attention (separate ``q_proj``/``k_proj``/``v_proj``, ``out_proj``) -> ``o_proj``."""
    group = src.count("(") + 1
    return [
        _Rule(src + r"\.(q_proj|k_proj|v_proj)\." + _WB, f"{dst}.\\g<{group}>.\\g<{group + 1}>"),
        _same(src + r"\.out_proj", dst + ".o_proj"),
    ]


def _sam_mlp(src: str, dst: str, num_layers: int) -> list[_Rule]:
    """SAM's ``MLP.layers.<k>`` -> transformers' ``proj_in``, ``layers.<k-1>`` ..., ``proj_out``."""
    names = ["proj_in", *(f"layers.{k}" for k in range(num_layers - 2)), "proj_out"]
    return [_same(f"{src}\\.layers\\.{k}", f"{dst}.{name}") for k, name in enumerate(names)]


def _build_tracker_rules() -> tuple[_Rule, ...]:
    """Meta's tracker (``tracker.*`` without the prefix) -> ``Sam3VideoModel.tracker_model.*``."""
    ml, tl = r"transformer\.encoder\.layers\.(\d+)", r"memory_attention.layers.\1"
    mem, down = r"maskmem_backbone", r"maskmem_backbone\.mask_downsampler\.encoder"
    pe, dec = r"sam_prompt_encoder", r"sam_mask_decoder"
    tw, twl = dec + r"\.transformer", dec + r"\.transformer\.layers\.(\d+)"
    dl = r"mask_decoder.transformer.layers.\1"
    parameters = (
        ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        ("no_mem_embed", "no_memory_embedding"),
        ("no_mem_pos_enc", "no_memory_positional_encoding"),
        ("no_obj_ptr", "no_object_pointer"),
        ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    )
    rules: list[_Rule] = [
        # --- top level
        *(_Rule(a, b) for a, b in parameters),
        _same(r"mask_downsample", "mask_downsample"),
        _same(r"obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
        *_sam_mlp(r"obj_ptr_proj", "object_pointer_proj", 3),
        # --- memory attention
        *_attn(ml + r"\.self_attn", tl + ".self_attn"),
        *_attn(ml + r"\.cross_attn_image", tl + ".cross_attn_image"),
        *_renamed(ml, tl, (("linear1", "linear1"), ("linear2", "linear2"), *_NORMS_123)),
        _same(r"transformer\.encoder\.norm", "memory_attention.layer_norm"),
        # --- memory encoder. Meta's builder fixes the mask downsampler at 4 stride-2 stages (Sequential
        # indices: conv 3k, norm 3k+1, GELU 3k+2), then a 1x1 conv at index 12.
        *_renamed(
            down,
            "memory_encoder.mask_downsampler",
            (
                *((str(3 * k), f"layers.{k}.conv") for k in range(4)),
                *((str(3 * k + 1), f"layers.{k}.layer_norm") for k in range(4)),
                ("12", "final_conv"),
            ),
        ),
        *_renamed(mem, "memory_encoder", (("pix_feat_proj", "feature_projection"), ("out_proj", "projection"))),
        _Rule(mem + r"\.fuser\.layers\.(\d+)\.gamma", r"memory_encoder.memory_fuser.layers.\1.scale"),
        *_renamed(
            mem + r"\.fuser\.layers\.(\d+)",
            r"memory_encoder.memory_fuser.layers.\1",
            (
                ("dwconv", "depthwise_conv"),
                ("norm", "layer_norm"),
                ("pwconv1", "pointwise_conv1"),
                ("pwconv2", "pointwise_conv2"),
            ),
        ),
        # --- SAM prompt encoder; the four point embeddings are joined into one (4, D) table afterwards
        _Rule(
            pe + r"\.pe_layer\.positional_encoding_gaussian_matrix",
            "prompt_encoder.shared_embedding.positional_embedding",
            copies=("shared_image_embedding.positional_embedding",),
        ),
        _Rule(pe + r"\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
        *_renamed(
            pe,
            "prompt_encoder",
            (
                ("not_a_point_embed", "not_a_point_embed"),
                ("no_mask_embed", "no_mask_embed"),
                *(
                    (f"mask_downscaling.{i}", f"mask_embed.{name}")
                    for i, name in ((0, "conv1"), (1, "layer_norm1"), (3, "conv2"), (4, "layer_norm2"), (6, "conv3"))
                ),
            ),
        ),
        # --- SAM mask decoder
        *(
            rule
            for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
            for rule in _attn(twl + rf"\.{name}", f"{dl}.{name}")
        ),
        *_renamed(
            twl,
            dl,
            (
                *((f"norm{i}", f"layer_norm{i}") for i in (1, 2, 3, 4)),
                ("mlp.lin1", "mlp.proj_in"),
                ("mlp.lin2", "mlp.proj_out"),
            ),
        ),
        *_attn(tw + r"\.final_attn_token_to_image", "mask_decoder.transformer.final_attn_token_to_image"),
        _same(tw + r"\.norm_final_attn", "mask_decoder.transformer.layer_norm_final_attn"),
        *_renamed(
            dec,
            "mask_decoder",
            (
                *((name, name) for name in ("iou_token", "mask_tokens", "obj_score_token", "conv_s0", "conv_s1")),
                ("output_upscaling.0", "upscale_conv1"),
                ("output_upscaling.1", "upscale_layer_norm"),
                ("output_upscaling.3", "upscale_conv2"),
            ),
        ),
        *_sam_mlp(dec + r"\.output_hypernetworks_mlps\.(\d+)", r"mask_decoder.output_hypernetworks_mlps.\1", 3),
        *_sam_mlp(dec + r"\.iou_prediction_head", "mask_decoder.iou_prediction_head", 3),
        *_sam_mlp(dec + r"\.pred_obj_score_head", "mask_decoder.pred_obj_score_head", 3),
    ]
    return tuple(rules)


def _build_rules() -> tuple[_Rule, ...]:
    trunk, vit = r"backbone\.vision_backbone\.trunk", "vision_encoder.backbone"
    blk, lyr = trunk + r"\.blocks\.(\d+)", vit + r".layers.\1"
    neck = r"backbone\.vision_backbone\.convs\.(\d+)"
    fpn = r"vision_encoder.neck.fpn_layers.\1"
    txt, clip = r"backbone\.language_backbone\.encoder", "text_encoder.text_model"
    res, enc = txt + r"\.transformer\.resblocks\.(\d+)", clip + r".encoder.layers.\1"
    geo, dec = r"geometry_encoder", r"transformer\.decoder"
    dl, hl = dec + r"\.layers\.(\d+)", r"detr_decoder.layers.\1"
    seg = r"segmentation_head"
    rules: list[_Rule] = [
        # --- vision trunk
        _Rule(trunk + r"\.pos_embed", vit + ".embeddings.position_embeddings", _drop_cls_position),
        _Rule(trunk + r"\.patch_embed\.proj\.weight", vit + ".embeddings.patch_embeddings.projection.weight"),
        _same(trunk + r"\.ln_pre", vit + ".layer_norm"),
        _Rule(blk + r"\.attn\.qkv\." + _WB, lyr + r".attention.{qkv}.\2", _split3, split=True),
        *_renamed(
            blk,
            lyr,
            (*_NORMS_123[:2], ("attn.proj", "attention.o_proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")),
        ),
        # --- FPN neck
        *_neck(neck, fpn),
        # --- text encoder
        _Rule(txt + r"\.token_embedding\.weight", clip + ".embeddings.token_embedding.weight"),
        _Rule(txt + r"\.positional_embedding", clip + ".embeddings.position_embedding.weight"),
        *_mha(res + r"\.attn", enc + ".self_attn", out_name="out_proj"),
        *_renamed(
            res,
            enc,
            (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")),
        ),
        _same(txt + r"\.ln_final", clip + ".final_layer_norm"),
        _Rule(txt + r"\.text_projection", "text_encoder.text_projection.weight", _transpose),
        _same(r"backbone\.language_backbone\.resizer", "text_projection"),
        # --- geometry encoder
        *(
            _same(geo + r"\." + name, "geometry_encoder." + name)
            for name in (
                "label_embed",
                "cls_embed",
                "boxes_direct_project",
                "boxes_pool_project",
                "boxes_pos_enc_project",
                "final_proj",
            )
        ),
        _same(geo + r"\.norm", "geometry_encoder.prompt_layer_norm"),
        _same(geo + r"\.img_pre_norm", "geometry_encoder.vision_layer_norm"),
        _same(geo + r"\.encode_norm", "geometry_encoder.output_layer_norm"),
        *_encoder_layer(geo + r"\.encode\.(\d+)", r"geometry_encoder.layers.\1"),
        # --- DETR encoder
        *_encoder_layer(r"transformer\.encoder\.layers\.(\d+)", r"detr_encoder.layers.\1"),
        # --- DETR decoder
        *_mha(dl + r"\.self_attn", hl + ".self_attn"),
        _same(dl + r"\.norm2", hl + ".self_attn_layer_norm"),
        *_mha(dl + r"\.ca_text", hl + ".text_cross_attn"),
        _same(dl + r"\.catext_norm", hl + ".text_cross_attn_layer_norm"),
        *_mha(dl + r"\.cross_attn", hl + ".vision_cross_attn"),
        *_renamed(
            dl,
            hl,
            (
                ("norm1", "vision_cross_attn_layer_norm"),
                ("linear1", "mlp.fc1"),
                ("linear2", "mlp.fc2"),
                ("norm3", "mlp_layer_norm"),
            ),
        ),
        _same(dec + r"\.norm", "detr_decoder.output_layer_norm"),
        _same(dec + r"\.query_embed", "detr_decoder.query_embed"),
        _same(dec + r"\.reference_points", "detr_decoder.reference_points"),
        _same(dec + r"\.presence_token", "detr_decoder.presence_token"),
        _same(dec + r"\.presence_token_out_norm", "detr_decoder.presence_layer_norm"),
        *_mlp(dec + r"\.bbox_embed", "detr_decoder.box_head", 3),
        *_mlp(dec + r"\.presence_token_head", "detr_decoder.presence_head", 3),
        *_mlp(dec + r"\.ref_point_head", "detr_decoder.ref_point_head", 2),
        *_mlp(dec + r"\.boxRPB_embed_x", "detr_decoder.box_rpb_embed_x", 2),
        *_mlp(dec + r"\.boxRPB_embed_y", "detr_decoder.box_rpb_embed_y", 2),
        # --- scoring
        *_mlp(r"dot_prod_scoring\.prompt_mlp", "dot_product_scoring.text_mlp", 2),
        _same(r"dot_prod_scoring\.prompt_mlp\.out_norm", "dot_product_scoring.text_mlp_out_norm"),
        _same(r"dot_prod_scoring\.prompt_proj", "dot_product_scoring.text_proj"),
        _same(r"dot_prod_scoring\.hs_proj", "dot_product_scoring.query_proj"),
        # --- mask head
        _same(seg + r"\.pixel_decoder\.conv_layers\.(\d+)", r"mask_decoder.pixel_decoder.conv_layers.\1"),
        _same(seg + r"\.pixel_decoder\.norms\.(\d+)", r"mask_decoder.pixel_decoder.norms.\1"),
        _same(seg + r"\.mask_predictor\.mask_embed\.layers\.(\d+)", r"mask_decoder.mask_embedder.layers.\1"),
        _same(seg + r"\.instance_seg_head", "mask_decoder.instance_projection"),
        _same(seg + r"\.semantic_seg_head", "mask_decoder.semantic_projection"),
        *_mha(seg + r"\.cross_attend_prompt", "mask_decoder.prompt_cross_attn"),
        _same(seg + r"\.cross_attn_norm", "mask_decoder.prompt_cross_attn_norm"),
    ]
    return tuple(rules)


_RULES = _build_rules()
_TRACKER_RULES = _build_tracker_rules()
#: The detector's second FPN neck (``sam2_convs``) feeds the tracker: ``Sam3VideoModel.tracker_neck``.
_TRACKER_NECK_RULES = tuple(_neck(r"backbone\.vision_backbone\.sam2_convs\.(\d+)", r"tracker_neck.fpn_layers.\1"))
_TRACKER_PREFIX = "tracker."
_POINT_EMBED = re.compile(r"^tracker_model\.prompt_encoder\.point_embed\.(\d+)\.weight$")


def _strip_detector_prefix(key: str) -> str:
    for prefix in _DETECTOR_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _is_skipped(key: str) -> bool:
    return any(pattern.search(key) for pattern, _ in _SKIPPED)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _apply(rules: tuple[_Rule, ...], key: str, tensor: torch.Tensor, prefix: str) -> dict[str, torch.Tensor] | None:
    for rule in rules:
        mapped = rule.apply(key, tensor)
        if mapped is not None:
            return {prefix + k: v for k, v in mapped.items()}
    return None


def _map(raw_key: str, tensor: torch.Tensor, video: bool) -> dict[str, torch.Tensor] | None:
    """The model entries for one official entry: ``{}`` when it is left out on purpose, None when unknown."""
    if raw_key.startswith(_TRACKER_PREFIX):
        return _apply(_TRACKER_RULES, raw_key[len(_TRACKER_PREFIX) :], tensor, "tracker_model.") if video else {}
    key = _strip_detector_prefix(raw_key)
    if video and (neck := _apply(_TRACKER_NECK_RULES, key, tensor, "")) is not None:
        return neck
    if _is_skipped(key):
        return {}
    return _apply(_RULES, key, tensor, "detector_model." if video else "")


def convert_state_dict(official: Mapping[str, torch.Tensor], *, video: bool = False) -> dict[str, torch.Tensor]:
    """Map an official SAM3 state dict onto the keys of ``transformers.Sam3Model.state_dict()``, or with
    ``video`` onto those of ``Sam3VideoModel`` (``detector_model.*``, ``tracker_model.*``, ``tracker_neck.*``).

    ``official`` is the (unwrapped) dict of ``sam3.pt``: ``detector.*`` / ``tracker.*`` keys, or
    un-prefixed ``Sam3Image`` keys. For the image model the tracker keys and the tracker neck are dropped;
    the documented skip list is dropped for both. Every other key must match a rule, otherwise
    :class:`ModelError` names a few of the offenders. Fused q/k/v tensors are split, the ViT CLS position
    is removed, the CLIP text projection transposed and (video) the tracker's four point embeddings joined
    into one table. Tensors are not copied unless a conversion needs it.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    detector = tracker = False
    for raw_key, tensor in official.items():
        if not isinstance(tensor, torch.Tensor):
            raise ModelError(f"checkpoint entry {raw_key!r} is not a tensor ({type(tensor).__name__})")
        mapped = _map(raw_key, tensor, video)
        if mapped is None:
            unknown.append(raw_key)
            continue
        for new_key, value in mapped.items():
            if new_key in out:
                raise ModelError(f"two checkpoint entries map to {new_key!r} (second: {raw_key!r})")
            out[new_key] = value
            tracker |= new_key.startswith("tracker_model.")
            detector |= not new_key.startswith(("tracker_model.", "tracker_neck."))
    if unknown:
        kind = "video" if video else "image"
        raise ModelError(
            f"the checkpoint has {len(unknown)} key(s) that do not belong to a SAM3 {kind} model: {_few(unknown)}",
            hint="is this an official SAM3 checkpoint (sam3.pt)?",
        )
    if not detector:
        raise ModelError("the checkpoint holds no SAM3 detector weights")
    if video and not tracker:
        raise ModelError(
            "the checkpoint holds no video tracker weights (tracker.*): it serves images only",
            hint="for video use Meta's full sam3.pt, facebook/sam3 or a Sam3VideoModel save_pretrained folder",
        )
    return _join_point_embeddings(out) if video else out


def _join_point_embeddings(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference keeps the SAM prompt encoder's point embeddings as separate ``(1, D)`` tables
    (``point_embeddings.<i>``); transformers has one ``(N, D)`` table (``point_embed``)."""
    parts = {int(m.group(1)): k for k in state if (m := _POINT_EMBED.match(k))}
    if not parts:
        return state
    if sorted(parts) != list(range(len(parts))):
        raise ModelError(f"the tracker's point embeddings are not numbered 0..n: {_few(list(parts.values()))}")
    table = torch.cat([state.pop(parts[i]) for i in range(len(parts))], dim=0)
    state["tracker_model.prompt_encoder.point_embed.weight"] = table
    return state


def _load_pickle(path: Path) -> Any:
    """``torch.load`` with weights_only=True, memory-mapped when the file allows it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, ValueError):  # e.g. legacy (non-zip) serialization cannot be mmapped
        return torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict inside a loaded checkpoint object, or None if it does not look like one."""
    if not isinstance(obj, Mapping):
        return None
    for wrapper in ("model", "state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            obj = inner
            break
    if not obj or not all(isinstance(k, str) for k in obj):
        return None
    return {str(k): v for k, v in obj.items()}


_SIGNATURE = re.compile(r"^(detector\.|sam3_model\.)?(backbone\.vision_backbone\.trunk\.|transformer\.decoder\.)")


def is_official_checkpoint(path: Path) -> bool:
    """True for a single-file torch pickle holding Meta's SAM3 weights (e.g. ``sam3.pt``).

    Never raises: unreadable files, directories and other pickles are simply ``False``. The
    tensors are memory-mapped, not read, so this is cheap even for the 3 GB file.
    """
    path = Path(path)
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        state = _unwrap(_load_pickle(path))
    except Exception:
        return False
    if state is None:
        return False
    return any(_SIGNATURE.match(key) for key in state)


def _read_config(path: Path, video: bool) -> Sam3Config | Sam3VideoConfig:
    """The transformers config beside ``path``: the video model's (``sam3_video``) or, for images, that or the
    image model's (``sam3``); without one, the full-size default."""
    import json

    from transformers import Sam3Config, Sam3VideoConfig

    beside = path.parent / "config.json"
    if not beside.is_file():
        return Sam3VideoConfig() if video else Sam3Config()
    try:
        model_type = json.loads(beside.read_text()).get("model_type")
        if model_type == "sam3_video":
            config = Sam3VideoConfig.from_json_file(str(beside))
            if video:
                return config
            if isinstance(config.detector_config, Sam3Config):
                return config.detector_config
        if model_type in ("sam3", None) and not video:
            return Sam3Config.from_json_file(str(beside))
    except Exception as e:
        raise ModelError(f"cannot read {beside}: {e}") from e
    needed = "sam3_video" if video else "sam3 or sam3_video"
    raise ModelError(
        f"{beside} describes a {model_type!r} model; {path.name} needs a model_type {needed} config",
        hint="put the config.json of a matching transformers SAM3 model beside the checkpoint, or none for full size",
    )


def load_official(path: Path, config: Sam3Config | None = None) -> Sam3Model:
    """Build ``Sam3Model`` and load Meta's official checkpoint at ``path`` into it, strictly.

    The config is, in order: ``config`` if given, else a transformers ``config.json`` next to the
    ``.pt`` file (an image or a video model's), else the full-size default ``Sam3Config()``. Every key of
    the model's state dict must be filled (apart from :data:`_COMPUTED_BY_TRANSFORMERS`) and every
    converted key must exist with the right shape; otherwise :class:`ModelError` names the offending keys.
    The model is returned on CPU in eval mode.
    """
    from transformers import Sam3Model

    return _load_strict(Sam3Model, path, config, video=False)  # type: ignore[no-any-return]


def load_official_video(path: Path, config: Sam3VideoConfig | None = None) -> Sam3VideoModel:
    """Build ``Sam3VideoModel`` (detector + tracker) and load Meta's official checkpoint into it, strictly:
    :func:`load_official` for the video model, with the ``tracker.*`` keys and the tracker neck mapped too.
    The config beside the file must be a ``sam3_video`` one (default: ``Sam3VideoConfig()``, full size)."""
    from transformers import Sam3VideoModel

    return _load_strict(Sam3VideoModel, path, config, video=True)  # type: ignore[no-any-return]


def _load_strict(cls: Any, path: Path, config: Any, *, video: bool) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no checkpoint file at {path}")
    try:
        raw = _load_pickle(path)
    except Exception as e:
        raise ModelError(
            f"{path} is not a SAM3 checkpoint: it cannot be read as a PyTorch file",
            hint="pass Meta's sam3.pt, a save_pretrained folder or a Hub id such as facebook/sam3",
        ) from e
    official = _unwrap(raw)
    if official is None:
        raise ModelError(f"{path} does not hold a state dict", hint="expected Meta's sam3.pt")
    converted = convert_state_dict(official, video=video)

    cfg = config if config is not None else _read_config(path, video)
    model = cls(cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted and not any(p.search(k) for p in _COMPUTED_BY_TRANSFORMERS)]
    unexpected = [k for k in converted if k not in expected]
    if missing:
        raise ModelError(f"the checkpoint lacks {len(missing)} weight(s) the model needs: {_few(missing)}")
    if unexpected:
        raise ModelError(f"the checkpoint has {len(unexpected)} weight(s) the model does not: {_few(unexpected)}")
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise ModelError(
            f"{len(mismatched)} weight(s) have the wrong shape for this config: {_few(mismatched, 3)}",
            hint="the config.json beside the checkpoint must describe the same model size",
        )
    try:
        model.load_state_dict(converted, strict=False)
    except RuntimeError as e:
        raise ModelError(f"cannot load {path}: {e}") from e
    model.train(False)
    return model


def convert_to_pretrained(path: Path, out_dir: Path) -> Path:
    """Write the official checkpoint at ``path`` as a standard ``save_pretrained`` directory.

    The video model (``Sam3VideoModel``, the layout of ``facebook/sam3``: images and videos) when the checkpoint
    holds the tracker and the config beside it, if any, is a ``sam3_video`` one; the image model (``Sam3Model``)
    otherwise. The result loads with ``from_pretrained`` anywhere. Its config carries the reference's ViT
    LayerNorm epsilon (1e-5), so plain transformers users get it too. Written into a temporary sibling first
    and renamed, so a failure leaves nothing half-written.
    """
    import shutil
    import tempfile

    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoProcessor

    from s3seg.engine._load import quiet_transformers
    from s3seg.engine._tokenizer import build_clip_tokenizer

    path = Path(path)
    model: Any
    if _converts_to_video(path):
        model = load_official_video(path)
        visions = [model.config.detector_config.vision_config, model.config.tracker_config.vision_config]
    else:
        model = load_official(path)
        visions = [model.config.vision_config]
    for vision in visions:
        vision.backbone_config.layer_norm_eps = 1e-5
    size = int(model.config.image_size)
    images = Sam3ImageProcessor(size={"height": size, "width": size})
    processor: Any = Sam3Processor(image_processor=images, tokenizer=build_clip_tokenizer())
    if len(visions) > 1:
        from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

        frames = Sam2VideoVideoProcessor(
            size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        processor = Sam3VideoProcessor(image_processor=images, video_processor=frames, tokenizer=build_clip_tokenizer())
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except OSError as e:
        raise ModelError(f"cannot write {out_dir}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _converts_to_video(path: Path) -> bool:
    """The checkpoint has tracker keys and no image-model config sits beside it."""
    import json

    beside = path.parent / "config.json"
    if beside.is_file():
        try:
            if json.loads(beside.read_text()).get("model_type") != "sam3_video":
                return False
        except (OSError, ValueError, AttributeError):
            return False  # load_official names the problem
    try:
        state = _unwrap(_load_pickle(path)) or {}
    except Exception:
        return False
    return any(key.startswith(_TRACKER_PREFIX) for key in state)
