"""The GPU backend's routes (the seed's internal API, ``X-API-Key``): ``/api/v1/model/info``,
``/api/v1/predict`` and ``/api/v1/predict/batch``; only on a server with a model (not on a gateway).

A body is multipart (image files plus form fields) or JSON (base64 ``image`` or ``image_url``); both
describe the same :class:`PredictIn`. Results are COCO documents (masks as compressed RLE, or PNG on
request), the same format the CLI writes, so ``s3seg.from_coco`` reads them back.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from s3seg import _rle
from s3seg.config import Settings
from s3seg.engine import Request as EngineRequest
from s3seg.errors import UsageError
from s3seg.images import load_image
from s3seg.server._batcher import Batcher
from s3seg.server._body import read_form, read_json, single, text_fields
from s3seg.server._deps import BatcherDep, BudgetDep, EngineDep, SettingsDep, require_key
from s3seg.server._fetch import fetch
from s3seg.server._memory import MemoryBudget
from s3seg.server._schemas import (
    BatchIn,
    CocoOut,
    Envelope,
    LimitsOut,
    ModelInfoOut,
    PredictIn,
    body_doc,
    form_fields,
    public_model,
    public_result,
    refusals,
)
from s3seg.types import Limits, SegmentationResult, SegmentOptions, SegmentRequest, box_from_string, to_coco

router = APIRouter(prefix="/api/v1", tags=["model"], dependencies=[Depends(require_key)])
# 400 bad URL, 401 key, 413 body/image too large, 415 not an image, 422 invalid request, 503 busy/starting
_SEGMENT_REFUSALS = refusals(400, 401, 413, 415, 422, 503)


@router.get("/model/info", responses=refusals(401))
def model_info(engine: EngineDep, settings: SettingsDep) -> Envelope[ModelInfoOut]:
    """The model, its device and dtype, and this server's request limits."""
    limits = LimitsOut(
        max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
        max_prompts=settings.max_prompts,
        max_prompt_chars=settings.max_prompt_chars,
        max_boxes=settings.max_boxes,
        max_images=settings.max_images,
        max_pixels=settings.max_pixels,
    )
    info = {**vars(engine.info), "model": public_model(engine.info.model)}
    return Envelope(data=ModelInfoOut(**info, limits=limits))


@router.post("/predict", openapi_extra=body_doc(PredictIn, PredictIn, "image", many=False), responses=_SEGMENT_REFUSALS)
async def predict(request: Request, batcher: BatcherDep, budget: BudgetDep, settings: SettingsDep) -> Envelope[CocoOut]:
    """Segment one image: multipart (``image`` file + fields) or JSON (base64 ``image`` or ``image_url``)."""
    return await _segment(await _read_items(request, settings, batch=False), batcher, budget, settings)


@router.post(
    "/predict/batch", openapi_extra=body_doc(BatchIn, PredictIn, "images", many=True), responses=_SEGMENT_REFUSALS
)
async def predict_batch(
    request: Request, batcher: BatcherDep, budget: BudgetDep, settings: SettingsDep
) -> Envelope[CocoOut]:
    """Segment several images in one call (multipart ``images`` files sharing the fields, or JSON items)."""
    return await _segment(await _read_items(request, settings, batch=True), batcher, budget, settings)


async def _segment(
    items: list[tuple[PredictIn, bytes]], batcher: Batcher, budget: MemoryBudget, settings: Settings
) -> Envelope[CocoOut]:
    limits, options = Limits.from_settings(settings), SegmentOptions.from_settings(settings)
    checked = [item.segment_request(item.prompts, options, limits) for item, _ in items]  # before any decoding
    # the pixels are held until the model is done with them: room for all of them in the memory budget first
    async with budget.hold([data for _, data in items], max_pixels=settings.max_pixels):
        requests = [
            await _engine_request(item, request, data, settings)
            for (item, data), request in zip(items, checked, strict=True)
        ]
        results = [public_result(r) for r in await batcher.run(requests)]
        del requests
    # RLE encoding is CPU work: off the event loop, so other requests keep being parsed and queued
    doc = await run_in_threadpool(_coco, results, [item.mask_format for item, _ in items])
    return Envelope(data=CocoOut.model_validate(doc))


async def _read_items(request: Request, settings: Settings, *, batch: bool) -> list[tuple[PredictIn, bytes]]:
    """Parse either body kind into (fields, encoded image) pairs; URLs are fetched here."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        payload = await read_json(request)
        items = BatchIn.model_validate(payload).items if batch else [PredictIn.model_validate(payload)]
        _check_count(len(items), settings)
        return [(item, await _image_bytes(item, settings)) for item in items]
    if kind == "multipart/form-data":
        # one file more than allowed so that too many files get our own clear error, not the parser's
        async with read_form(request, max_files=settings.max_images + 1, max_fields=1000) as form:
            if batch:
                files = [f for f in form.getlist("images") if isinstance(f, UploadFile)]
            else:  # one image: a second `image` is refused, not silently segmented too
                one = single(form, "image")
                files = [one] if isinstance(one, UploadFile) else []
            if not files:
                raise UsageError(f"multipart body needs {'image files in `images`' if batch else 'an `image` file'}")
            _check_count(len(files), settings)
            fields = _form_fields(form)
            return [(PredictIn.model_validate({**fields, "name": f.filename}), await f.read()) for f in files]
    raise UsageError("send multipart/form-data or application/json", hint="curl -F image=@photo.jpg -F prompts=dog …")


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise UsageError("the batch holds no images")
    limit = min(settings.max_images, settings.max_queue)  # more than the queue holds could never run
    if n > limit:
        raise UsageError(f"{n} images in one request; at most {limit}", hint="split the batch")


def _form_fields(form: FormData) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompts": text_fields(form, "prompts")}
    fields["boxes"] = [box_from_string(v).to_dict() for v in text_fields(form, "boxes")]
    for name in form_fields(PredictIn):  # the others take one value each
        value = single(form, name) if name not in fields else None
        if isinstance(value, str) and value != "":
            fields[name] = value
    return fields


async def _image_bytes(item: PredictIn, settings: Settings) -> bytes:
    if (item.image is None) == (item.image_url is None):
        raise UsageError("give exactly one of `image` (base64) and `image_url`")
    if item.image_url is not None:
        return await run_in_threadpool(
            fetch,
            item.image_url,
            max_bytes=int(settings.max_body_mb * 1024 * 1024),
            timeout_s=settings.url_timeout_s,
            allow_private=settings.allow_private_urls,
        )
    try:
        return base64.b64decode(item.image or "", validate=True)
    except (binascii.Error, ValueError) as e:
        raise UsageError("`image` is not valid base64") from e


async def _engine_request(item: PredictIn, request: SegmentRequest, data: bytes, settings: Settings) -> EngineRequest:
    image = await run_in_threadpool(load_image, data, max_pixels=settings.max_pixels, name=item.name or "upload")
    return EngineRequest(image.array, request.prompts, request.boxes, item.name, request.options)


def _coco(results: list[SegmentationResult], formats: list[str]) -> dict[str, Any]:
    """Results as one COCO document; images that asked for PNG masks get ``mask_png`` (base64, 1-bit)
    instead of RLE ``segmentation``."""
    doc = to_coco(results)
    annotations = iter(doc["annotations"])  # in result order, instance order
    for result, fmt in zip(results, formats, strict=True):
        for inst in result.instances:
            ann = next(annotations)
            if fmt == "png":
                del ann["segmentation"]
                ann["mask_png"] = base64.b64encode(_rle.encode_png(inst.mask)).decode("ascii")
    return doc
