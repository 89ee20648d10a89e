"""What the server reads and answers, as pydantic models: the request bodies of the inference routes
(``PredictIn``, ``BatchIn``) and of the public API (``SegmentIn``), which share the exemplar box and the
options every segmentation takes (``RequestIn``, turned into the one :class:`SegmentRequest`); and every
answer, wrapped in one envelope: ``Envelope[TaskOut]`` is ``{"ok": true, "data": <TaskOut>}``, an error
``{"ok": false, "error": {"code", "message", "hint"}}``. Typed answers give ``/openapi.json`` a schema
for every route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from s3seg.engine import ModelInfo
from s3seg.types import Box, Limits, Overrides, SegmentationResult, SegmentOptions, SegmentRequest, check_text

T = TypeVar("T")

Text = Annotated[str, AfterValidator(check_text)]
"""A string a client sends: proper Unicode without control characters (:func:`s3seg.types.check_text`;
an ``InvalidText`` error, 422 INVALID_TEXT, otherwise)."""


# ------------------------------------------------------------------------------------------ requests
class BoxIn(BaseModel):
    box: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in pixels")
    positive: bool = Field(default=True, description="false marks a negative exemplar")


class RequestIn(BaseModel):
    """Exemplar boxes and post-processing options (unset options take the server's defaults)."""

    boxes: list[BoxIn] = Field(default_factory=list, description="exemplar boxes, applied to every prompt")
    threshold: float | None = Field(default=None, ge=0, le=1)
    mask_threshold: float | None = Field(default=None, gt=0, lt=1)
    max_instances: int | None = Field(default=None, ge=1)
    nms_iou: float | None = Field(default=None, gt=0, le=1)

    def segment_request(self, prompts: Sequence[str], defaults: SegmentOptions, limits: Limits) -> SegmentRequest:
        """The checked request for these prompts (a :class:`UsageError` when it is not valid)."""
        boxes = [Box(*b.box, positive=b.positive) for b in self.boxes]
        options = self.model_dump(include=set(Overrides.__annotations__))
        return SegmentRequest.build(prompts, boxes, defaults=defaults, limits=limits, **options)


def _exactly_one(*fields: str) -> list[dict[str, Any]]:
    """JSON Schema ``oneOf`` branches: exactly one of ``fields`` is a string, the others absent or null."""
    return [
        {
            "required": [field],
            "properties": {other: {"type": "string" if other == field else "null"} for other in fields},
        }
        for field in fields
    ]


def _at_least_one(**fields: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Schema ``anyOf`` branches: at least one of ``fields`` given as the schema says (non-empty)."""
    return [{"required": [name], "properties": {name: schema}} for name, schema in fields.items()]


def _rules(**rules: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """A model's ``json_schema_extra``: ``rules`` (``oneOf``, ``anyOf``) added to its JSON Schema."""

    def extra(schema: dict[str, Any]) -> None:
        schema.update(rules)

    return extra


_NON_EMPTY = {"type": "array", "minItems": 1}
_SOMETHING_TO_FIND = _at_least_one(prompts=_NON_EMPTY, boxes=_NON_EMPTY)


class PredictIn(RequestIn):
    """One image (``image`` base64 or ``image_url``) and what to look for in it."""

    # what the server enforces beyond the fields' own types, said in the schema
    model_config = ConfigDict(
        json_schema_extra=_rules(oneOf=_exactly_one("image", "image_url"), anyOf=_SOMETHING_TO_FIND)
    )

    image: str | None = Field(default=None, description="the encoded image file, base64")
    image_url: Text | None = Field(default=None, description="http(s) URL of the image (public hosts only)")
    name: Text | None = Field(default=None, description="a name echoed back as images[0].file_name")
    prompts: list[Text] = Field(default_factory=list, description="text prompts (noun phrases)")
    mask_format: Literal["rle", "png"] = "rle"


class BatchIn(BaseModel):
    items: list[PredictIn] = Field(description="images, each with its own prompts and options")


class SegmentIn(RequestIn):
    """What to segment: an uploaded image (``image_id``) or video (``video_id``), or an http(s)
    ``image_url``, and the prompts."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            oneOf=_exactly_one("image_id", "video_id", "image_url"),
            anyOf=_at_least_one(
                text_prompt={"type": "string", "minLength": 1}, text_prompts=_NON_EMPTY, boxes=_NON_EMPTY
            ),
        )
    )

    image_id: Text | None = Field(default=None, description="from POST /api/v1/upload (a video's works too)")
    video_id: Text | None = Field(default=None, description="a video from POST /api/v1/upload")
    image_url: Text | None = Field(default=None, description="http(s) URL of an image (public hosts)")
    every: int | None = Field(default=None, ge=1, description="video: process every n-th frame (default 1)")
    max_objects: int | None = Field(default=None, ge=1, description="video: most objects tracked at once")
    start: Text | None = Field(default=None, description="video: first frame: seconds (2.5) or a frame number (75f)")
    end: Text | None = Field(default=None, description="video: stop before: seconds or a frame number (NNf)")
    text_prompt: Text | None = Field(default=None, description='one noun phrase, e.g. "dog"')
    text_prompts: list[Text] = Field(default_factory=list, description="several noun phrases")
    project: Text | None = Field(default=None, max_length=200, description="project name (created if new)")
    project_id: Text | None = Field(default=None, description="id of one of the user's projects")


class VideoIn(BaseModel):
    """The form fields of ``POST /api/v1/predict/video`` (the video itself is the ``video`` file part): the
    options of ``s3seg segment clip.mp4``; unset ones take the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[Text] = Field(min_length=1, description="text prompts (noun phrases); repeat the field")
    start: Text | None = Field(default=None, description="first frame: seconds (2.5) or a frame number (75f)")
    end: Text | None = Field(default=None, description="stop before: seconds or a frame number (NNf)")
    every: int = Field(default=1, ge=1, description="process every Nth frame")
    threshold: float | None = Field(default=None, ge=0, le=1, description="detection score to count")
    max_objects: int | None = Field(default=None, ge=1, description="most objects tracked at once")


# The fields a multipart body of /predict sends as form fields: the JSON body's, less what the file part
# replaces (the image itself and its name); boxes travel as "x0,y0,x1,y1" strings (prefix "neg:").
_FILE_REPLACES = ("image", "image_url", "name")
_BOX_FIELD = {"type": "array", "items": {"type": "string"}, "description": "x0,y0,x1,y1 (prefix neg: for negative)"}


def form_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` a multipart body sends as form fields (all but what the file part replaces)."""
    return tuple(name for name in model.model_fields if name not in _FILE_REPLACES)


def body_doc(json_model: type[BaseModel], item: type[BaseModel], file_field: str, many: bool) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads JSON (``json_model``) or multipart: the file(s) under
    ``file_field`` and the fields of ``item`` (generated from the model, so the two never disagree)."""
    file_schema: dict[str, Any] = {"type": "string", "format": "binary"}
    if many:
        file_schema = {"type": "array", "items": file_schema}
    properties = item.model_json_schema()["properties"]
    fields = {name: properties[name] for name in form_fields(item)}
    fields["boxes"] = _BOX_FIELD
    multipart = {
        "type": "object",
        "required": [file_field],
        "properties": {file_field: file_schema, **fields},
        "anyOf": _SOMETHING_TO_FIND,  # a prompt or a box
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
            },
        }
    }


# ------------------------------------------------------------------------------------------- answers
class ErrorOut(BaseModel):
    code: str = Field(description="stable error code, e.g. NOT_FOUND (see s3seg.errors)")
    message: str
    hint: str | None = None


class Envelope(BaseModel, Generic[T]):
    """A successful answer: ``{"ok": true, "data": ...}``."""

    ok: Literal[True] = True
    data: T


class ErrorEnvelope(BaseModel):
    """A refusal: ``{"ok": false, "error": {...}}`` with the HTTP status of the error."""

    ok: Literal[False] = False
    error: ErrorOut


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route: each error status it answers, with the error envelope."""
    # content, not model: a route answering another media type (the events stream) still refuses in JSON
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    return {status: {"description": "refused (see error.code)", "content": content} for status in statuses}


class GPUMemoryOut(BaseModel):
    allocated_mb: float
    reserved_mb: float
    free_mb: float
    total_mb: float


class QueueOut(BaseModel):
    batches: int
    images: int
    largest_batch: int
    queued: int


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"
    model_loaded: bool
    device: str | None = Field(description="the model's device; null on a gateway")
    gpu_memory: GPUMemoryOut | None
    queue: QueueOut | None = Field(description="the inference batcher's counters; null on a gateway")
    workers: int | None = Field(description="GPU workers behind a gateway; null with a model")
    auth: Literal["supabase", "api-key"]


class LimitsOut(BaseModel):
    max_body_bytes: int
    max_prompts: int
    max_prompt_chars: int
    max_boxes: int
    max_images: int
    max_pixels: int


@dataclass(frozen=True)
class ModelInfoOut(ModelInfo):
    """The model (name, revision, device, dtype, parameters, input size) and this server's limits."""

    limits: LimitsOut


class CocoOut(BaseModel):
    """A COCO instance-segmentation document (``s3seg.from_coco`` reads it back): masks as compressed RLE
    ``segmentation``, or ``mask_png`` (base64 1-bit PNG) where PNG was asked for; plus s3seg's own keys."""

    model_config = ConfigDict(extra="allow")

    info: dict[str, Any]
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]


class TracksOut(BaseModel):
    """A tracks document (YouTube-VIS style, see :mod:`s3seg.video`): what ``s3seg segment clip.mp4 --out``
    writes as ``NAME.tracks.json``; ``s3seg.read_tracks`` reads it back."""

    videos: list[dict[str, Any]] = Field(description="one: size, fps, every, frame_indices, timestamps")
    categories: list[dict[str, Any]] = Field(description="one per prompt")
    annotations: list[dict[str, Any]] = Field(description="one per track: per-frame segmentations (RLE or null)")
    s3seg: dict[str, Any]


class TracksSummaryOut(BaseModel):
    """The tracks document less its tracks' per-frame fields (``segmentations``, ``bboxes``, ``areas``):
    the ``done`` line of the NDJSON video answer, whose ``frame`` lines carried those."""

    videos: list[dict[str, Any]] = Field(description="one: size, fps, every, frame_indices, timestamps")
    categories: list[dict[str, Any]] = Field(description="one per prompt")
    annotations: list[dict[str, Any]] = Field(
        description="one per track: id, video_id, track_id, category_id, score (no per-frame fields)"
    )
    s3seg: dict[str, Any]


class VideoLineOut(BaseModel):
    """One line of ``POST /api/v1/predict/video`` with ``Accept: application/x-ndjson``: a ``start`` line;
    a ``progress`` line as the model takes in each frame and a ``frame`` line as each frame is done (the
    tracker holds frames back ``hotstart_delay`` frames); then ``done`` (with the tracks document less the
    per-frame fields the frame lines carried: the frame lines and it make the whole answer's document) or
    ``error`` (the error envelope's fields and the status the error would have answered)."""

    type: Literal["start", "progress", "frame", "done", "error"]
    name: str | None = Field(default=None, description="start: the video's file name")
    prompts: list[str] | None = Field(default=None, description="start: the prompts, normalised")
    fps: float | None = Field(default=None, description="start: the file's frame rate")
    every: int | None = Field(default=None, description="start: every Nth frame is processed")
    frames_total: int | None = Field(default=None, description="start: frames to process, from the header")
    model: str | None = Field(default=None, description="start: the model's name")
    frames_done: int | None = Field(default=None, description="progress: frames the model has taken in")
    frame: int | None = Field(default=None, description="frame: its number in the file")
    position: int | None = Field(default=None, description="frame: its number among the processed frames")
    time: float | None = Field(default=None, description="frame: seconds from the clip's start")
    width: int | None = Field(default=None, description="frame: width in pixels (as displayed)")
    height: int | None = Field(default=None, description="frame: height in pixels")
    instances: list[dict[str, Any]] | None = Field(
        default=None, description="frame: track_id, prompt, score, box (xyxy), segmentation (COCO RLE)"
    )
    tracks: TracksSummaryOut | None = Field(
        default=None, description="done: the tracks document without per-frame segmentations, bboxes, areas"
    )
    status: int | None = Field(default=None, description="error: the HTTP status of the error")
    error: ErrorOut | None = Field(default=None, description="error: code, message, hint")


class MeOut(BaseModel):
    user_id: str
    email: str | None
    tier: str
    credits: int | None = Field(description="null where credits are not counted")
    rate_limit_per_minute: int


class UploadOut(BaseModel):
    kind: Literal["image", "video"] = "image"
    image_id: str = Field(description="for POST /api/v1/segment (a video's as well)")
    video_id: str | None = Field(default=None, description="a video's id (the same as image_id); null for an image")
    image_url: str = Field(description="time-limited URL of the stored file")
    expires_in: int
    width: int
    height: int
    bytes: int
    content_type: str
    file_name: str
    frames: int | None = Field(default=None, description="a video's frames; null for an image")
    fps: float | None = Field(default=None, description="a video's frame rate")
    duration_s: float | None = Field(default=None, description="a video's length (null when its header lacks it)")


class TaskOut(BaseModel):
    """A task (a segmentation of one image, or tracks through one video) as clients see it: stored files as
    time-limited URLs, and ``files``, download paths through this API."""

    id: str
    task_id: str
    status: Literal["pending", "processing", "done", "error"]
    text_prompt: str
    project: str | None
    project_id: str | None
    user_id: str | None
    source_image_url: str | None
    mask_image_url: str | None
    overlay_image_url: str | None
    result_url: str | None = Field(description="the COCO JSON (a video task: the tracks JSON)")
    poster_url: str | None = Field(
        default=None,
        description="a video task's poster: a JPEG of one overlay frame, at most 480 px wide; "
        "null for an image task or a video task done before posters were kept",
    )
    file_name: str | None = Field(
        default=None,
        description="the uploaded file's name (base name only, for an image_url its last path segment); "
        "null for a task made before names were kept",
    )
    files: dict[str, str]
    labels: list[Any]
    metadata: dict[str, Any]
    error: str | None
    frames_done: int = Field(description="progress: frames (steps) processed; an image is one step")
    frames_total: int = Field(description="progress: frames (steps) to process; 0 while unknown")
    created_at: str
    updated_at: str


class ResultsOut(BaseModel):
    items: list[TaskOut]
    limit: int
    offset: int
    next_offset: int | None = Field(description="the next page's offset; null on the last page")


def public_model(source: str | None) -> str | None:
    """The model as the server's answers and results name it: a Hub id as it is, a local folder or file by its
    name only (the server's paths stay private)."""
    if source is None:
        return None
    path = Path(source)
    return path.name if path.is_absolute() or path.exists() else source


def public_result(result: SegmentationResult) -> SegmentationResult:
    """``result`` with its model named as :func:`public_model` names it."""
    return replace(result, model=public_model(result.model))
