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

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from s3seg.config import DEFAULT_MODEL, EngineConfig
from s3seg.engine import _load
from s3seg.errors import DeviceError, UsageError
from s3seg.types import Box, Instance, SegmentationResult, SegmentOptions, SegmentRequest, Timings

if TYPE_CHECKING:
    from transformers import Sam3Model
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

VISUAL_PROMPT = "visual"  # the reference's text for box-only prompts
_UPSAMPLE_BATCH = 16  # masks upsampled to full resolution at once: bounds memory on big images
_TEXT_CACHE = 256
_HEAD_BATCH = 16  # image–prompt pairs through the heads at once: bounds memory (full size: ~1 GB per pair)
_TOKEN_BUCKET = 8  # compiled heads: prompt tokens padded to a multiple of this (one graph for 0..7 boxes)
_RECOMPILE_LIMIT = 64  # compiled heads: graphs kept per engine process (batch buckets × token buckets)


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
    """Detector outputs for the N image–prompt pairs of a call, in order (on the device)."""

    scores: torch.Tensor  # (N, Q) in [0, 1]
    boxes: torch.Tensor  # (N, Q, 4) normalised xyxy
    mask_logits: list[torch.Tensor]  # N × (Q, h, w), views into the head batches (no copy)


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


_Pair = tuple[int, _Prompt]  # (image index in the call, prompt)


class Sam3Engine:
    """SAM3 loaded once on one device, reused for every call. Thread-safe (calls are serialised).

    >>> engine = Sam3Engine.load("facebook/sam3")          # doctest: +SKIP
    >>> [result] = engine.segment([image], ["dog", "cat"])  # doctest: +SKIP

    Heads. By default every image–prompt pair of a call goes through the detector and mask heads in one
    batch (``head_batch`` pairs at a time): many prompts cost little more than one. Batched matmuls and
    convolutions round differently for different batch sizes (BLAS and cuDNN pick kernels by shape), so a
    prompt's scores may then move by float rounding (~1e-7 in float32) with the other prompts of the call.
    ``batch_heads=False`` runs each pair alone: a prompt's result is then bit-identical whatever came with it.
    ``compile=True`` compiles the backbone and the head batch (batch sizes rounded up to powers of two, so
    prompt counts do not each recompile).
    """

    def __init__(
        self,
        loaded: _load.Loaded[Sam3Model],
        *,
        fidelity: Fidelity = Fidelity(),
        compile: bool | str = False,
        max_batch: int = 8,
        batch_heads: bool = True,
        head_batch: int = _HEAD_BATCH,
    ) -> None:
        if head_batch < 1:
            raise UsageError(f"head_batch must be at least 1, got {head_batch}")
        self._m = loaded.model
        self._tokenizer = loaded.tokenizer
        self._source = loaded.source
        self._revision = loaded.revision
        self.device = device = loaded.device
        self.dtype = loaded.dtype
        self.image_size = loaded.image_size
        self.max_batch = max_batch
        self.batch_heads = batch_heads
        self.head_batch = head_batch if batch_heads else 1
        self.fidelity = fidelity
        self._mean = torch.tensor(loaded.image_mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(loaded.image_std, device=device).view(1, 3, 1, 1)
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        apply_fidelity(self._m, fidelity)
        fast_decoder_coords(self._m)
        self._vision = self._m.vision_encoder
        self._head_fn = self._head_batch
        self.compiled = bool(compile)
        if compile:  # True: inductor; a string: that torch.compile backend ("aot_eager" in CPU tests)
            backend = "inductor" if compile is True else str(compile)
            self._vision = torch.compile(self._m.vision_encoder, dynamic=False, backend=backend)  # type: ignore[assignment]
            self._head_fn = torch.compile(self._head_batch, dynamic=False, backend=backend)

    @property
    def model(self) -> Sam3Model:
        """transformers' ``Sam3Model`` this engine drives (read-only use: a video engine shares its weights)."""
        return self._m

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
        compile: bool | str = False,
        max_batch: int = 8,
        fidelity: Fidelity = Fidelity(),
        batch_heads: bool = True,
        head_batch: int = _HEAD_BATCH,
    ) -> Sam3Engine:
        """Load SAM3 from a Hub id, a ``save_pretrained`` directory or an official ``sam3.pt``.

        ``batch_heads=False``: every image–prompt pair through the heads alone (bit-identical per prompt,
        slower with many prompts); ``head_batch``: most pairs per head batch (memory)."""
        from transformers import Sam3Model

        where = _load.Where(device=device, dtype=dtype, revision=revision, token=token, offline=offline)
        return cls(
            _load.load(Sam3Model, str(model), **where),
            fidelity=fidelity,
            compile=compile,
            max_batch=max_batch,
            batch_heads=batch_heads,
            head_batch=head_batch,
        )

    @classmethod
    def from_config(cls, config: EngineConfig) -> Sam3Engine:
        """Load what the settings say (``Settings.engine_config()``)."""
        return cls.load(**dataclasses.asdict(config))

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
            heads = self._heads(vision, [(0, prompt)], [(width, height)])
            logits = F.interpolate(
                heads.mask_logits[0][None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            scale = torch.tensor([width, height, width, height], device=self.device, dtype=torch.float32)
            return RawPrediction(
                scores=heads.scores[0].float().cpu().numpy(),
                boxes=(heads.boxes[0].float() * scale).cpu().numpy(),
                mask_logits=logits[0].cpu().numpy(),
            )

    # ---------------------------------------------------------------------------------------- internals
    def _run_chunk(self, requests: Sequence[Request], plans: Sequence[list[_Prompt]]) -> list[SegmentationResult]:
        sizes = [(int(r.image.shape[1]), int(r.image.shape[0])) for r in requests]
        pairs = [(b, p) for b, plan in enumerate(plans) for p in plan]
        with self._lock, torch.inference_mode(), _oom_guard():
            t0 = time.perf_counter()
            pixels = self._preprocess([r.image for r in requests])
            t1 = _sync_time(self.device)
            vision = self._vision(pixels)
            heads = self._heads(vision, pairs, sizes)
            t2 = _sync_time(self.device)
            instances = self._postprocess(heads, pairs, [r.options for r in requests], sizes)
            t3 = time.perf_counter()
        timings = Timings(  # shared out evenly: every stage runs once for the whole chunk
            preprocess_ms=(t1 - t0) * 1000 / len(requests),
            inference_ms=(t2 - t1) * 1000 / len(requests),
            postprocess_ms=(t3 - t2) * 1000 / len(requests),
        )
        return [
            SegmentationResult(
                width=width,
                height=height,
                prompts=tuple(p.text for p in plan),
                instances=tuple(found),
                image=request.name,
                timings=timings,
                model=self._source,
            )
            for request, plan, (width, height), found in zip(requests, plans, sizes, instances, strict=True)
        ]

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
            t = pixels_chw(array, self.device)
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

    def _heads(
        self, vision: Sam3VisionEncoderOutput, pairs: Sequence[_Pair], sizes: Sequence[tuple[int, int]]
    ) -> _Heads:
        """Detector, scoring and mask heads for every image–prompt pair of a call, in order.

        Batched (the default), pairs whose prompts have the same number of tokens go through together,
        ``head_batch`` at a time. With ``batch_heads=False`` each pair goes alone (N = 1), so that its result
        is bit-identical whatever other prompts came with it.
        """
        fpn = list(vision.fpn_hidden_states[:-1])
        fpn_pos = list(vision.fpn_position_encoding[:-1])
        tokens = self._prompt_tokens(fpn, fpn_pos, pairs, sizes)
        groups: dict[int, list[int]] = {}
        for i, (feats, _) in enumerate(tokens):
            groups.setdefault(len(feats), []).append(i)
        rows: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for group in groups.values():
            for start in range(0, len(group), self.head_batch):
                chunk = group[start : start + self.head_batch]
                scores, boxes, masks = self._run_heads(
                    fpn, fpn_pos, [pairs[i][0] for i in chunk], [tokens[i] for i in chunk]
                )
                rows.update((i, (scores[j], boxes[j], masks[j])) for j, i in enumerate(chunk))
        ordered = [rows[i] for i in range(len(pairs))]
        return _Heads(
            scores=torch.stack([r[0] for r in ordered]),
            boxes=torch.stack([r[1] for r in ordered]),
            mask_logits=[r[2] for r in ordered],
        )

    def _prompt_tokens(
        self,
        fpn: list[torch.Tensor],
        fpn_pos: list[torch.Tensor],
        pairs: Sequence[_Pair],
        sizes: Sequence[tuple[int, int]],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each pair's prompt tokens (L, D) and valid mask (L,): the text's, then the geometry encoder's.

        The geometry tokens depend on the image and its exemplar boxes, never on the text (a text-only
        prompt still gets the CLS token, which attends to the image), so they are computed once per image
        and set of boxes however many prompts share them.
        """
        keys = list(dict.fromkeys((b, p.boxes) for b, p in pairs if self.fidelity.geometry_cls or p.boxes))
        geometry = self._geometry(fpn, fpn_pos, keys, sizes)
        tokens = []
        for b, p in pairs:
            text, text_mask = self._text(p.text)
            if (b, p.boxes) in geometry:
                geo, geo_mask = geometry[(b, p.boxes)]
                tokens.append((torch.cat([text[0], geo]), torch.cat([text_mask[0], geo_mask])))
            else:
                tokens.append((text[0], text_mask[0]))
        return tokens

    def _geometry(
        self,
        fpn: list[torch.Tensor],
        fpn_pos: list[torch.Tensor],
        keys: Sequence[tuple[int, tuple[Box, ...]]],
        sizes: Sequence[tuple[int, int]],
    ) -> dict[tuple[int, tuple[Box, ...]], tuple[torch.Tensor, torch.Tensor]]:
        """The geometry encoder's tokens (K + 1, D) and valid mask (K + 1,) per (image, K boxes); images
        with the same K in one batch (one at a time with ``batch_heads=False``)."""
        groups: dict[int, list[tuple[int, tuple[Box, ...]]]] = {}
        for key in keys:
            groups.setdefault(len(key[1]), []).append(key)
        out = {}
        for group in groups.values():
            for start in range(0, len(group), self.head_batch):
                chunk = group[start : start + self.head_batch]
                idx = torch.tensor([b for b, _ in chunk], device=self.device)
                coords, labels = zip(*(self._box_tensors(boxes, sizes[b]) for b, boxes in chunk), strict=True)
                box_labels = torch.cat(labels)
                geo = self._m.geometry_encoder(  # reads the last FPN level only
                    box_embeddings=torch.cat(coords),
                    box_mask=torch.ones(box_labels.shape, dtype=torch.bool, device=self.device),
                    box_labels=box_labels,
                    img_feats=[fpn[-1].index_select(0, idx)],
                    img_pos_embeds=[fpn_pos[-1].index_select(0, idx)],
                )
                for j, key in enumerate(chunk):
                    out[key] = (geo.last_hidden_state[j], geo.attention_mask[j].bool())
        return out

    def _run_heads(
        self,
        fpn: list[torch.Tensor],
        fpn_pos: list[torch.Tensor],
        images: list[int],
        tokens: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One head batch: pair j is image ``images[j]`` with prompt tokens ``tokens[j]`` (same length L)."""
        n = len(images)
        prompt = torch.stack([t for t, _ in tokens])
        prompt_mask = torch.stack([m for _, m in tokens])
        if self.compiled:
            # Fixed shapes, few of them: the batch padded to a power of two (repeating its last pair) and the
            # prompt to a multiple of _TOKEN_BUCKET tokens (masked out, so they change nothing but rounding).
            size = min(1 << (n - 1).bit_length(), max(self.head_batch, n))
            images = images + [images[-1]] * (size - n)
            pad = -prompt.shape[1] % _TOKEN_BUCKET
            prompt = F.pad(torch.cat([prompt, prompt[-1:].expand(size - n, -1, -1)]), (0, 0, 0, pad))
            prompt_mask = torch.cat([prompt_mask, prompt_mask[-1:].expand(size - n, -1)])
            prompt_mask = torch.cat([prompt_mask, prompt_mask.new_zeros(size, pad)], dim=1)
        idx = torch.tensor(images, device=self.device)
        # compiled: one graph per (batch bucket, token bucket), more than dynamo's default limit of 8
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT) if self.compiled else nullcontext():
            scores, boxes, masks = self._head_fn(
                [f.index_select(0, idx) for f in fpn], [fpn_pos[-1].index_select(0, idx)], prompt, prompt_mask
            )
        return scores[:n], boxes[:n], masks[:n]

    def _head_batch(
        self, fpn: list[torch.Tensor], fpn_pos: list[torch.Tensor], prompt: torch.Tensor, prompt_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DETR encoder and decoder, scoring and mask decoder for N pairs (what ``compile`` compiles).

        fpn: each pair's image features, (N, C, h_l, w_l) per level, coarsest last; fpn_pos: the position
        encoding of the coarsest level (the only one the heads read), (N, C, h, w), in a list;
        prompt (N, L, D), prompt_mask (N, L) → scores (N, Q), boxes (N, Q, 4) normalised xyxy, mask logits
        (N, Q, h, w).
        """
        return detector_heads(self._m, fpn, fpn_pos, prompt, prompt_mask)

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
        self,
        heads: _Heads,
        pairs: Sequence[_Pair],
        options: Sequence[SegmentOptions],
        sizes: Sequence[tuple[int, int]],
    ) -> list[list[Instance]]:
        """Threshold, NMS, cap, upsample and binarise; the instances of each image, pair by pair.

        Selection runs on the host: every pair's scores and boxes cross once per call (NMS overlaps, when
        asked for, once more); then each pair's kept masks are binarised on the device and cross once.
        """
        host = torch.cat([heads.scores.float()[..., None], heads.boxes.float()], dim=-1).cpu().numpy()
        opts = [options[b] for b, _ in pairs]
        keeps = []
        for i, o in enumerate(opts):
            scores = host[i, :, 0]
            keep = np.flatnonzero(scores > o.threshold)
            keeps.append(keep[np.argsort(-scores[keep], kind="stable")])
        cuts = [math.log(o.mask_threshold / (1.0 - o.mask_threshold)) for o in opts]  # probability → logit
        nms = [i for i, o in enumerate(opts) if o.nms_iou is not None and len(keeps[i]) > 1]
        if nms:
            ious = [_mask_ious(heads.mask_logits[i][self._index(keeps[i])] > cuts[i]) for i in nms]
            flat = torch.cat([x.flatten() for x in ious]).cpu().numpy()
            start = 0
            for i in nms:
                k = len(keeps[i])
                iou = opts[i].nms_iou
                assert iou is not None  # for mypy: nms holds only pairs with an IoU
                keeps[i] = keeps[i][_greedy_nms(flat[start : start + k * k].reshape(k, k), iou)]
                start += k * k
        out: list[list[Instance]] = [[] for _ in sizes]
        for i, ((b, prompt), keep, o) in enumerate(zip(pairs, keeps, opts, strict=True)):
            keep = keep[: o.max_instances]
            if len(keep) == 0:
                continue
            width, height = sizes[b]
            boxes = (host[i, keep, 1:] * np.array([width, height, width, height], dtype=np.float32)).tolist()
            index = self._index(keep)
            masks = torch.empty((len(keep), height, width), dtype=torch.bool, device=self.device)
            for s in range(0, len(keep), _UPSAMPLE_BATCH):  # written in place: no concatenated copy
                self._binarise(
                    heads.mask_logits[i][index[s : s + _UPSAMPLE_BATCH]], cuts[i], masks[s : s + _UPSAMPLE_BATCH]
                )
            masks_np = masks.cpu().numpy()
            out[b] += [
                Instance(prompt=prompt.text, score=min(max(float(s), 0.0), 1.0), box=(x[0], x[1], x[2], x[3]), mask=m)
                for s, x, m in zip(host[i, keep, 0], boxes, masks_np, strict=True)
            ]
        return out

    def _index(self, keep: npt.NDArray[np.intp]) -> torch.Tensor:
        return torch.from_numpy(keep).to(self.device)

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


def pixels_chw(array: npt.NDArray[np.uint8], device: torch.device) -> torch.Tensor:
    """RGB uint8 (H, W, 3) → a (3, H, W) tensor on ``device``; a read-only array (``np.asarray`` of a PIL image)
    is copied first, since torch cannot wrap it."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(2, 0, 1)


def apply_fidelity(detector: Sam3Model, fidelity: Fidelity) -> None:
    """The reference-parity fixes that live in the model's settings (the ViT LayerNorm epsilon, unclamped
    presence logits); the others are in how :func:`detector_heads` and the callers drive it."""
    if fidelity.vit_layernorm_eps is not None:
        for module in detector.vision_encoder.backbone.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = fidelity.vit_layernorm_eps
    if fidelity.presence_unclamped:
        detector.detr_decoder.clamp_presence_logit_max_val = float("inf")


def fast_decoder_coords(detector: Sam3Model) -> None:
    """Replace transformers' ``Sam3DetrDecoder._get_coords``, which builds the normalised grid of the box
    position bias from a shape *tensor* in every layer: a device read (on CUDA, a sync) and, under
    ``torch.compile``, a graph break. :func:`detector_heads` records the feature grid as ints on the decoder
    first; the values are the same (``arange(0, h) / h``)."""
    decoder = detector.detr_decoder

    def coords(height: object, width: object, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        h, w = decoder.s3seg_grid  # type: ignore[misc]  # set by detector_heads
        return torch.arange(0, h, device=device, dtype=dtype) / h, torch.arange(0, w, device=device, dtype=dtype) / w

    decoder.s3seg_grid = (0, 0)  # type: ignore[assignment]  # a plain attribute, not a parameter
    decoder._get_coords = coords


def detector_heads(
    m: Sam3Model, fpn: list[torch.Tensor], fpn_pos: list[torch.Tensor], prompt: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SAM3's detector after the backbone, as the reference computes it: DETR encoder and decoder, scoring and
    mask decoder for N image–prompt pairs (the image engine's head batches and the video engine's detections).

    fpn: each pair's image features, (N, C, h_l, w_l) per level, coarsest last; fpn_pos: position encodings,
    coarsest last (only that one is read); prompt (N, L, D) text then geometry tokens, prompt_mask (N, L) →
    scores (N, Q) = sigmoid(class logit) × sigmoid(presence logit), boxes (N, Q, 4) normalised xyxy, mask
    logits (N, Q, h, w).
    """
    from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

    m.detr_decoder.s3seg_grid = (int(fpn[-1].shape[-2]), int(fpn[-1].shape[-1]))  # type: ignore[assignment]
    enc = m.detr_encoder(
        vision_features=[fpn[-1]], text_features=prompt, vision_pos_embeds=[fpn_pos[-1]], text_mask=prompt_mask
    )
    dec = m.detr_decoder(
        vision_features=enc.last_hidden_state,
        text_features=enc.text_features,
        vision_pos_encoding=enc.pos_embeds_flattened,
        text_mask=prompt_mask,
        spatial_shapes=enc.spatial_shapes,
    )
    queries = dec.intermediate_hidden_states[-1]  # (N, Q, D): only the last decoder layer is used
    boxes_cxcywh = (inverse_sigmoid(dec.reference_boxes[-1]) + m.detr_decoder.box_head(queries)).sigmoid()
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    logits = m.dot_product_scoring(
        decoder_hidden_states=queries[None], text_features=enc.text_features, text_mask=prompt_mask
    )[0, ..., 0]
    scores = logits.sigmoid() * dec.presence_logits[-1].sigmoid()
    masks = m.mask_decoder(
        decoder_queries=queries,
        backbone_features=fpn,
        encoder_hidden_states=enc.last_hidden_state,
        prompt_features=prompt,
        prompt_mask=prompt_mask,
    ).pred_masks
    return scores, boxes, masks


def _plan(prompts: Sequence[str], boxes: Sequence[Box]) -> list[_Prompt]:
    """Text prompts × shared exemplar boxes; boxes alone make one box-only prompt."""
    request = SegmentRequest(tuple(prompts), tuple(boxes))  # normalises and checks them
    return [_Prompt(t, request.boxes) for t in request.prompts] or [_Prompt(VISUAL_PROMPT, request.boxes)]


def _mask_ious(masks: torch.Tensor) -> torch.Tensor:
    """Binary masks (K, h, w) → pairwise IoU (K, K), on their device (exact: counts below 2**24)."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)


def _greedy_nms(ious: npt.NDArray[np.float32], threshold: float) -> npt.NDArray[np.intp]:
    """Greedy NMS on the IoU matrix (K, K) of masks sorted best first → indices kept: a mask is kept
    unless it overlaps a kept better one by more than ``threshold``."""
    suppressed = np.zeros(len(ious), dtype=bool)
    kept = []
    for i in range(len(ious)):
        if not suppressed[i]:
            kept.append(i)
            suppressed |= ious[i] > threshold
    return np.asarray(kept, dtype=np.intp)


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
