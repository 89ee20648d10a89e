"""The SAM3 engine: one vision-backbone pass per image, every prompt batched against it.

The model is Hugging Face ``transformers``' ``Sam3Model``, but the forward pass is driven here so that
it computes what Meta's reference implementation computes (see docs/fidelity.md):

* the geometry encoder always runs, so a text-only prompt carries its CLS token (33 prompt tokens);
* the ViT LayerNorm epsilon is the reference's 1e-5, whatever the checkpoint's config says;
* masks are binarised the reference's way: upsample the logits to the image size, then threshold;
* presence logits are not clamped (the reference computes a clamp and discards it; transformers clamps
  to ±10, which moves every score once |presence logit| > 10);
* score = sigmoid(class logit) × sigmoid(presence logit).

Shapes: B images, Q queries, S the model's input size,
(h, w) the low-resolution mask size, (H, W) an original image size.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from s3seg.config import DEFAULT_MODEL, Settings
from s3seg.engine import _load
from s3seg.errors import DeviceError, UsageError
from s3seg.types import Box, Instance, SegmentationResult, SegmentOptions, SegmentRequest, Timings

if TYPE_CHECKING:
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

VISUAL_PROMPT = "visual"  # the reference's text for box-only prompts
_UPSAMPLE_BATCH = 16  # masks upsampled to full resolution at once: bounds memory on big images
_TEXT_CACHE = 256


@dataclass(frozen=True)
class Fidelity:
    """The reference-parity fixes. All on by default; tests turn one off to show it matters."""

    geometry_cls: bool = True
    vit_layernorm_eps: float | None = 1e-5
    upsample_logits_first: bool = True
    presence_unclamped: bool = True


@dataclass(frozen=True)
class ModelInfo:
    model: str
    revision: str | None
    device: str
    dtype: str
    parameters: int
    image_size: int


@dataclass(frozen=True)
class RawPrediction:
    """Every query of one image–prompt pair, before any threshold (numpy, float32).

    scores (Q,); boxes (Q, 4) xyxy pixels; mask_logits (Q, H, W) at the original size.
    """

    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    mask_logits: npt.NDArray[np.float32]


@dataclass
class _Heads:
    """Detector outputs for one image–prompt pair (on the device)."""

    scores: torch.Tensor  # (Q,) in [0, 1]
    boxes: torch.Tensor  # (Q, 4) normalised xyxy
    mask_logits: torch.Tensor  # (Q, h, w)


@dataclass(frozen=True)
class Request:
    """One image with its own prompts, exemplar boxes and post-processing options."""

    image: npt.NDArray[np.uint8]
    prompts: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    name: str | None = None
    options: SegmentOptions = SegmentOptions()


@dataclass
class _Prompt:
    text: str
    boxes: tuple[Box, ...] = field(default_factory=tuple)


class Sam3Engine:
    """SAM3 loaded once on one device, reused for every call. Thread-safe (calls are serialised).

    >>> engine = Sam3Engine.load("facebook/sam3")          # doctest: +SKIP
    >>> [result] = engine.segment([image], ["dog", "cat"])  # doctest: +SKIP
    """

    def __init__(
        self,
        loaded: _load.LoadedModel,
        *,
        device: torch.device,
        dtype: torch.dtype,
        fidelity: Fidelity = Fidelity(),
        compile: bool = False,
        max_batch: int = 8,
    ) -> None:
        self._m = loaded.model
        self._tokenizer = loaded.tokenizer
        self._source = loaded.source
        self._revision = loaded.revision
        self.device = device
        self.dtype = dtype
        self.image_size = loaded.image_size
        self.max_batch = max_batch
        self.fidelity = fidelity
        self._mean = torch.tensor(loaded.image_mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(loaded.image_std, device=device).view(1, 3, 1, 1)
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        if fidelity.vit_layernorm_eps is not None:
            for module in self._m.vision_encoder.backbone.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.eps = fidelity.vit_layernorm_eps
        if fidelity.presence_unclamped:
            self._m.detr_decoder.clamp_presence_logit_max_val = float("inf")
        self._vision = self._m.vision_encoder
        if compile:
            self._vision = torch.compile(self._m.vision_encoder, dynamic=False)  # type: ignore[assignment]

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        revision: str | None = None,
        token: str | None = None,
        offline: bool = False,
        compile: bool = False,
        max_batch: int = 8,
        fidelity: Fidelity = Fidelity(),
    ) -> Sam3Engine:
        """Load SAM3 from a Hub id, a ``save_pretrained`` directory or an official ``sam3.pt``."""
        dev = _load.pick_device(device)
        dt = _load.pick_dtype(dtype, dev)
        loaded = _load.load(str(model), device=dev, dtype=dt, revision=revision, token=token, offline=offline)
        return cls(loaded, device=dev, dtype=dt, fidelity=fidelity, compile=compile, max_batch=max_batch)

    @classmethod
    def from_settings(cls, s: Settings) -> Sam3Engine:
        return cls.load(
            s.model,
            device=s.device,
            dtype=s.dtype,
            revision=s.revision,
            token=s.token(),
            offline=s.offline,
            compile=s.compile,
            max_batch=s.max_batch,
        )

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model=self._source,
            revision=self._revision,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            parameters=sum(p.numel() for p in self._m.parameters()),
            image_size=self.image_size,
        )

    # ------------------------------------------------------------------------------------- public API
    def segment(
        self,
        images: Sequence[npt.NDArray[np.uint8]],
        prompts: Sequence[str] = (),
        boxes: Sequence[Box] = (),
        *,
        names: Sequence[str | None] | None = None,
        options: SegmentOptions = SegmentOptions(),
    ) -> list[SegmentationResult]:
        """Segment every image with every prompt; one result per image, in order.

        Args:
            images: RGB uint8 arrays (H, W, 3).
            prompts: text prompts (noun phrases). Empty with ``boxes`` → one box-only prompt.
            boxes: exemplar boxes (pixels), applied to every prompt of every image.
            names: a name per image for the results (file names).
        """
        names = list(names) if names is not None else [None] * len(images)
        if len(names) != len(images):
            raise UsageError(f"got {len(images)} images but {len(names)} names")
        return self.run(
            [
                Request(image, tuple(prompts), tuple(boxes), name, options)
                for image, name in zip(images, names, strict=True)
            ]
        )

    def run(self, requests: Sequence[Request]) -> list[SegmentationResult]:
        """Independent requests (each its own image, prompts and options); images share backbone batches
        of up to ``max_batch``. This is what a server batching concurrent clients calls."""
        plans = [_plan(r.prompts, r.boxes) for r in requests]  # validate everything before any work
        results: list[SegmentationResult] = []
        for start in range(0, len(requests), self.max_batch):
            end = start + self.max_batch
            results += self._run_chunk(requests[start:end], plans[start:end])
        return results

    def predict_raw(self, image: npt.NDArray[np.uint8], text: str | None, boxes: Sequence[Box] = ()) -> RawPrediction:
        """All queries for one image and one prompt, unthresholded (for parity checks and research)."""
        [prompt] = _plan([text] if text else [], boxes)
        height, width = image.shape[:2]
        with self._lock, torch.inference_mode(), _oom_guard():
            vision = self._vision(self._preprocess([image]))
            heads = self._heads(vision, 0, prompt, (width, height))
            logits = F.interpolate(
                heads.mask_logits[None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            scale = torch.tensor([width, height, width, height], device=self.device, dtype=torch.float32)
            return RawPrediction(
                scores=heads.scores.float().cpu().numpy(),
                boxes=(heads.boxes.float() * scale).cpu().numpy(),
                mask_logits=logits[0].cpu().numpy(),
            )

    # ---------------------------------------------------------------------------------------- internals
    def _run_chunk(self, requests: Sequence[Request], plans: Sequence[list[_Prompt]]) -> list[SegmentationResult]:
        sizes = [(int(r.image.shape[1]), int(r.image.shape[0])) for r in requests]
        with self._lock, torch.inference_mode(), _oom_guard():
            t0 = time.perf_counter()
            pixels = self._preprocess([r.image for r in requests])
            t1 = _sync_time(self.device)
            vision = self._vision(pixels)
            heads = [[self._heads(vision, b, p, sizes[b]) for p in plan] for b, plan in enumerate(plans)]
            t2 = _sync_time(self.device)
            results = []
            for b, (request, plan, (width, height)) in enumerate(zip(requests, plans, sizes, strict=True)):
                t3 = time.perf_counter()
                instances = [
                    inst
                    for p, h in zip(plan, heads[b], strict=True)
                    for inst in self._postprocess(h, p.text, width, height, request.options)
                ]
                timings = Timings(
                    preprocess_ms=(t1 - t0) * 1000 / len(requests),
                    inference_ms=(t2 - t1) * 1000 / len(requests),
                    postprocess_ms=(time.perf_counter() - t3) * 1000,
                )
                results.append(
                    SegmentationResult(
                        width=width,
                        height=height,
                        prompts=tuple(p.text for p in plan),
                        instances=tuple(instances),
                        image=request.name,
                        timings=timings,
                        model=self._source,
                    )
                )
        return results

    def _preprocess(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """RGB uint8 (H, W, 3) each → normalised (B, 3, S, S) in the model dtype.

        Resized as uint8 with antialiasing, then scaled and normalised: the reference's order.
        """
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        size = [self.image_size, self.image_size]
        batch = []
        for array in images:
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise UsageError(f"images must be RGB uint8 arrays (H, W, 3), got {array.shape} {array.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device).permute(2, 0, 1)
            batch.append(TF.resize(t, size, interpolation=InterpolationMode.BILINEAR, antialias=True))
        pixels = torch.stack(batch).float().div_(255.0)
        return ((pixels - self._mean) / self._std).to(self.dtype)

    def _text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A prompt → features (1, L, D) and valid-token mask (1, L); cached per text (LRU)."""
        if text not in self._text_cache:
            tokens = self._tokenizer(
                [text], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
            ).to(self.device)
            feats = self._m.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            self._text_cache[text] = (feats, tokens["attention_mask"].bool())
            if len(self._text_cache) > _TEXT_CACHE:
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(text)
        return self._text_cache[text]

    def _heads(self, vision: Sam3VisionEncoderOutput, image: int, prompt: _Prompt, size: tuple[int, int]) -> _Heads:
        """Detector, scoring and mask heads for one image–prompt pair (N = 1).

        Pairs run one at a time on purpose: batched matmuls and convolutions round differently for
        different batch sizes (BLAS/cuDNN pick kernels by shape), and a prompt's result must not depend
        on which other prompts came with it. At full size one pair already fills the device.
        """
        from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

        m = self._m
        fpn = [f[image : image + 1] for f in vision.fpn_hidden_states[:-1]]
        fpn_pos = [p[image : image + 1] for p in vision.fpn_position_encoding[:-1]]
        text, text_mask = self._text(prompt.text)

        if self.fidelity.geometry_cls or prompt.boxes:
            geo_boxes, geo_labels = self._box_tensors(prompt.boxes, size)
            geo = m.geometry_encoder(
                box_embeddings=geo_boxes,
                box_mask=torch.ones(geo_labels.shape, dtype=torch.bool, device=self.device),
                box_labels=geo_labels,
                img_feats=fpn,
                img_pos_embeds=fpn_pos,
            )
            text = torch.cat([text, geo.last_hidden_state], dim=1)
            text_mask = torch.cat([text_mask, geo.attention_mask.bool()], dim=1)

        enc = m.detr_encoder(
            vision_features=[fpn[-1]], text_features=text, vision_pos_embeds=[fpn_pos[-1]], text_mask=text_mask
        )
        dec = m.detr_decoder(
            vision_features=enc.last_hidden_state,
            text_features=enc.text_features,
            vision_pos_encoding=enc.pos_embeds_flattened,
            text_mask=text_mask,
            spatial_shapes=enc.spatial_shapes,
        )
        queries = dec.intermediate_hidden_states[-1]  # (1, Q, D): only the last decoder layer is used
        boxes_cxcywh = (inverse_sigmoid(dec.reference_boxes[-1]) + m.detr_decoder.box_head(queries)).sigmoid()
        cx, cy, w, h = boxes_cxcywh.unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        logits = m.dot_product_scoring(
            decoder_hidden_states=queries[None], text_features=enc.text_features, text_mask=text_mask
        )[0, ..., 0]
        scores = logits.sigmoid() * dec.presence_logits[-1].sigmoid()
        masks = m.mask_decoder(
            decoder_queries=queries,
            backbone_features=fpn,
            encoder_hidden_states=enc.last_hidden_state,
            prompt_features=text,
            prompt_mask=text_mask,
        ).pred_masks
        return _Heads(scores=scores[0], boxes=boxes[0], mask_logits=masks[0])

    def _box_tensors(self, boxes: tuple[Box, ...], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Exemplar boxes (pixels, clipped to the image) → normalised cxcywh (1, K, 4) and labels (1, K)."""
        width, height = size
        coords = torch.zeros(1, len(boxes), 4)
        labels = torch.zeros(1, len(boxes), dtype=torch.long)
        for j, b in enumerate(boxes):
            x0, x1 = (min(max(x, 0.0), width) for x in (b.x0, b.x1))
            y0, y1 = (min(max(y, 0.0), height) for y in (b.y0, b.y1))
            coords[0, j] = torch.tensor(
                [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
            )
            labels[0, j] = int(b.positive)
        return coords.to(self.device, self.dtype), labels.to(self.device)

    def _postprocess(
        self, heads: _Heads, prompt: str, width: int, height: int, options: SegmentOptions
    ) -> list[Instance]:
        """Threshold, NMS, cap, upsample and binarise the masks of one image–prompt pair."""
        scores = heads.scores.float()
        keep = torch.nonzero(scores > options.threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
        mask_cut = math.log(options.mask_threshold / (1.0 - options.mask_threshold))  # probability → logit
        if options.nms_iou is not None and len(keep) > 1:
            keep = keep[_mask_nms(heads.mask_logits[keep] > mask_cut, options.nms_iou)]
        if options.max_instances is not None:
            keep = keep[: options.max_instances]
        if len(keep) == 0:
            return []
        scale = torch.tensor([width, height, width, height], device=scores.device)
        boxes = (heads.boxes[keep].float() * scale).cpu().tolist()
        masks = torch.empty((len(keep), height, width), dtype=torch.bool, device=scores.device)
        for i in range(0, len(keep), _UPSAMPLE_BATCH):  # written in place: no concatenated copy
            self._binarise(heads.mask_logits[keep[i : i + _UPSAMPLE_BATCH]], mask_cut, masks[i : i + _UPSAMPLE_BATCH])
        masks_np = masks.cpu().numpy()
        kept_scores = scores[keep].cpu().tolist()
        return [
            Instance(prompt=prompt, score=min(max(s, 0.0), 1.0), box=(b[0], b[1], b[2], b[3]), mask=m)
            for s, b, m in zip(kept_scores, boxes, masks_np, strict=True)
        ]

    def _binarise(self, logits: torch.Tensor, cut: float, out: torch.Tensor) -> None:
        """(K, h, w) logits → ``out`` (K, H, W) bool, on the device: upsample, then threshold."""
        height, width = out.shape[-2:]
        if self.fidelity.upsample_logits_first:
            up = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)
            torch.gt(up[0], cut, out=out)
        else:  # transformers' order: probabilities upsampled (kept to show why it is not used)
            up = F.interpolate(
                logits[None].float().sigmoid(), size=(height, width), mode="bilinear", align_corners=False
            )
            torch.gt(up[0], 1.0 / (1.0 + math.exp(-cut)), out=out)


def _plan(prompts: Sequence[str], boxes: Sequence[Box]) -> list[_Prompt]:
    """Text prompts × shared exemplar boxes; boxes alone make one box-only prompt."""
    request = SegmentRequest(tuple(prompts), tuple(boxes))  # normalises and checks them
    return [_Prompt(t, request.boxes) for t in request.prompts] or [_Prompt(VISUAL_PROMPT, request.boxes)]


def _mask_nms(masks: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy NMS over masks (K, h, w) sorted best first → indices kept."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    ious = inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)
    kept: list[int] = []
    for i in range(len(flat)):
        if all(ious[i, j] <= iou for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long, device=masks.device)


def _sync_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _oom_guard:
    """Turn an accelerator out-of-memory error into a DeviceError; the engine stays usable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise DeviceError(
                "the device ran out of memory for this request",
                hint="send fewer or smaller images, fewer prompts, or lower --max-batch",
            ) from exc
