"""The one result type, from engine to SDK, CLI, server and storage, and its COCO (de)serialisation.

A :class:`SegmentationResult` is one image: its size, the prompts asked, and every instance found.
Each :class:`Instance` has its prompt, score, box (xyxy, pixels of the original image) and a boolean
mask at the original resolution. Both are frozen and validated when built.

COCO form (``to_coco`` / ``from_coco``): ``images`` / ``annotations`` / ``categories`` with masks as
compressed RLE (the string ``counts`` that ``pycocotools.mask.decode`` reads). Extra keys keep what
COCO has no field for, so a result reads back identical: ``bbox_xyxy`` on annotations (COCO's ``bbox``
is xywh) and ``s3seg`` on images (prompts, timings, model).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from s3seg import _rle
from s3seg.errors import InvalidText, ResultFormatError, UsageError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from s3seg.config import Settings

BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Box:
    """An exemplar box prompt in pixel xyxy; ``positive=False`` marks a negative exemplar. Invalid
    coordinates raise :class:`UsageError`."""

    x0: float
    y0: float
    x1: float
    y1: float
    positive: bool = True

    def __post_init__(self) -> None:
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(c) for c in coords):
            raise UsageError(f"box coordinates must be finite numbers, got {coords}")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise UsageError(f"box must have x1 > x0 and y1 > y0, got {coords}")

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    def check_inside(self, width: int, height: int, image: str | None = None) -> None:
        """Raise :class:`UsageError` when the box lies entirely outside a ``width``×``height`` image (a
        box that overlaps the image is fine: it is clipped)."""
        if self.x0 >= width or self.y0 >= height or self.x1 <= 0 or self.y1 <= 0:
            raise UsageError(
                f"box {self} lies outside {image or 'the image'} ({width}×{height} pixels)",
                hint="boxes are x0,y0,x1,y1 in pixels of the image, with 0,0 at its top-left corner",
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the public API's and the task metadata's): ``{"box": [x0, y0, x1, y1], "positive": ...}``."""
        return {"box": list(self.xyxy), "positive": self.positive}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Box:
        x0, y0, x1, y1 = data["box"]
        return cls(x0, y0, x1, y1, positive=bool(data.get("positive", True)))

    def __str__(self) -> str:
        """The string form :func:`box_from_string` reads (``neg:`` prefix for a negative exemplar)."""
        return f"{'' if self.positive else 'neg:'}{self.x0!r},{self.y0!r},{self.x1!r},{self.y1!r}"


class Overrides(TypedDict, total=False):
    """Options one call sets over the defaults (absent or ``None``: the default)."""

    threshold: float | None
    mask_threshold: float | None
    max_instances: int | None
    nms_iou: float | None


@dataclass(frozen=True)
class SegmentOptions:
    """Post-processing knobs (see :class:`s3seg.config.Settings` for their meaning). Invalid values raise
    :class:`UsageError`."""

    threshold: float = 0.5
    mask_threshold: float = 0.5
    max_instances: int | None = None
    nms_iou: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise UsageError(f"mask threshold must be in (0, 1), got {self.mask_threshold}")
        if self.max_instances is not None and self.max_instances < 1:
            raise UsageError(f"max instances must be at least 1, got {self.max_instances}")
        if self.nms_iou is not None and not 0.0 < self.nms_iou <= 1.0:
            raise UsageError(f"NMS IoU must be in (0, 1], got {self.nms_iou}")

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmentOptions:
        """The defaults these settings give."""
        return cls(settings.threshold, settings.mask_threshold, settings.max_instances, settings.nms_iou)

    def overridden(self, **given: Unpack[Overrides]) -> SegmentOptions:
        """These options with the values given (``None`` = keep this one)."""
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for (a server's limits; the SDK and CLI ask for anything)."""

    max_prompts: int
    max_prompt_chars: int
    max_boxes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_prompts, settings.max_prompt_chars, settings.max_boxes)

    def check(self, request: SegmentRequest) -> None:
        if len(request.prompts) > self.max_prompts:
            raise UsageError(f"{len(request.prompts)} prompts; at most {self.max_prompts} per image")
        if any(len(p) > self.max_prompt_chars for p in request.prompts):
            raise UsageError(f"a prompt is longer than {self.max_prompt_chars} characters")
        if len(request.boxes) > self.max_boxes:
            raise UsageError(f"{len(request.boxes)} boxes; at most {self.max_boxes}")


@dataclass(frozen=True)
class SegmentRequest:
    """What to look for in an image: text prompts, exemplar boxes (applied to every prompt) and
    post-processing options. The one request model of the SDK, the CLI and both kinds of server routes:
    prompts are normalised (:func:`normalize_prompts`), boxes checked, and a request with neither prompts
    nor boxes is a :class:`UsageError`."""

    prompts: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    options: SegmentOptions = SegmentOptions()
    # The names of the options the caller chose (an argument, a flag, the client's own S3SEG_* setting);
    # a server applies its own defaults to the others.
    explicit: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", normalize_prompts(self.prompts))
        object.__setattr__(self, "boxes", tuple(b if isinstance(b, Box) else Box(*b) for b in self.boxes))
        if not self.prompts and not self.boxes:
            raise UsageError("nothing to segment: give a text prompt, an exemplar box, or both")

    def chosen_options(self) -> dict[str, Any]:
        """The options the caller chose explicitly (what a client sends a server, whose own defaults fill
        in the rest)."""
        return {k: v for k, v in self.options.to_dict().items() if k in self.explicit}

    @classmethod
    def build(
        cls,
        prompts: str | Sequence[str] | None = (),
        boxes: Iterable[Box | tuple[float, float, float, float]] = (),
        *,
        defaults: SegmentOptions = SegmentOptions(),
        limits: Limits | None = None,
        explicit: Iterable[str] = (),
        **options: Unpack[Overrides],
    ) -> SegmentRequest:
        """A checked request: the ``options`` given over ``defaults``, within ``limits`` when given.
        ``explicit``: names of ``defaults`` the caller chose (the options given are explicit too)."""
        checked = tuple(b if isinstance(b, Box) else Box(*b) for b in boxes)
        chosen = frozenset(explicit) | {k for k, v in options.items() if v is not None}
        request = cls(normalize_prompts(prompts), checked, defaults.overridden(**options), chosen)
        if checked and not request.prompts and not any(b.positive for b in checked):
            raise UsageError(
                "only negative boxes given: they say what not to find, so there is nothing to look for",
                hint="add a text prompt or a positive box (drop the neg: prefix from one)",
            )
        if limits is not None:
            limits.check(request)
        return request


@dataclass(frozen=True)
class Timings:
    """Milliseconds spent per stage for one image (batched stages are shared out evenly)."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "postprocess_ms": round(self.postprocess_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True, eq=False)
class Instance:
    """One detected instance.

    Attributes:
        prompt: the text prompt (or ``"visual"`` for box-only prompts) that found it.
        score: confidence in [0, 1] (detection score × presence score).
        box: (x0, y0, x1, y1) in pixels of the original image.
        mask: bool array of shape (H, W), the original image size.
    """

    prompt: str
    score: float
    box: tuple[float, float, float, float]
    mask: BoolMask = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ValueError("instance prompt must be a non-empty string")
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"instance score must be in [0, 1], got {self.score}")
        if len(self.box) != 4 or not all(math.isfinite(c) for c in self.box):
            raise ValueError(f"instance box must be 4 finite numbers (x0, y0, x1, y1), got {self.box}")
        if not isinstance(self.mask, np.ndarray) or self.mask.dtype != np.bool_ or self.mask.ndim != 2:
            shape = getattr(self.mask, "shape", None)
            dtype = getattr(self.mask, "dtype", type(self.mask).__name__)
            raise ValueError(f"instance mask must be a 2-D bool array (H, W), got shape {shape} dtype {dtype}")
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "box", tuple(float(c) for c in self.box))
        self.mask.flags.writeable = False

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Instance):
            return NotImplemented
        return (
            self.prompt == other.prompt
            and self.score == other.score
            and self.box == other.box
            and np.array_equal(self.mask, other.mask)
        )

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Everything found in one image.

    Attributes:
        width, height: the original image size in pixels.
        prompts: the prompts asked, in order (kept even when nothing was found).
        instances: found instances, grouped by prompt in ``prompts`` order, best score first.
        image: a name for the image (file name, URL or ``None``).
        timings: per-stage milliseconds.
        model: the model id or path that produced it.

    Arrays for the whole image: ``masks`` (N, H, W) bool, ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,),
    ``labels`` (each instance's prompt); ``for_prompt(p)`` the instances of one prompt; ``to_coco()`` a
    JSON-ready COCO document.

    >>> import numpy as np
    >>> from s3seg import Instance, SegmentationResult
    >>> mask = np.zeros((3, 4), dtype=bool); mask[1, 1:3] = True
    >>> r = SegmentationResult(4, 3, ("dog",), (Instance("dog", 0.9, (1.0, 1.0, 3.0, 2.0), mask),))
    >>> r.masks.shape, r.scores.tolist(), r.labels, len(r.for_prompt("dog"))
    ((1, 3, 4), [0.9], ['dog'], 1)
    """

    width: int
    height: int
    prompts: tuple[str, ...]
    instances: tuple[Instance, ...] = ()
    image: str | None = None
    timings: Timings = field(default_factory=Timings)
    model: str | None = None

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got width={self.width} height={self.height}")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "instances", tuple(self.instances))
        for i, inst in enumerate(self.instances):
            if inst.mask.shape != (self.height, self.width):
                raise ValueError(
                    f"instance {i} mask has shape {inst.mask.shape}, expected (H, W) = ({self.height}, {self.width})"
                )
            if inst.prompt not in self.prompts:
                raise ValueError(f"instance {i} prompt {inst.prompt!r} is not one of the prompts {self.prompts}")

    def __len__(self) -> int:
        return len(self.instances)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SegmentationResult):
            return NotImplemented
        return (self.width, self.height, self.prompts, self.image, self.model) == (
            other.width,
            other.height,
            other.prompts,
            other.image,
            other.model,
        ) and self.instances == other.instances

    __hash__ = None  # type: ignore[assignment]

    @property
    def masks(self) -> BoolMask:
        """All masks stacked: bool array (N, H, W)."""
        if not self.instances:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([i.mask for i in self.instances])

    @property
    def boxes(self) -> npt.NDArray[np.float64]:
        """All boxes: float array (N, 4), xyxy pixels."""
        return np.array([i.box for i in self.instances], dtype=np.float64).reshape(-1, 4)

    @property
    def scores(self) -> npt.NDArray[np.float64]:
        """All scores: float array (N,)."""
        return np.array([i.score for i in self.instances], dtype=np.float64)

    @property
    def labels(self) -> list[str]:
        """The prompt of each instance, in order."""
        return [i.prompt for i in self.instances]

    def for_prompt(self, prompt: str) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.prompt == prompt)

    def to_coco(self) -> dict[str, Any]:
        """This result as a COCO document (see :func:`to_coco`)."""
        return to_coco([self])

    @classmethod
    def from_coco(cls, doc: Mapping[str, Any]) -> SegmentationResult:
        """Read back a COCO document holding exactly one image."""
        results = from_coco(doc)
        if len(results) != 1:
            raise ResultFormatError(
                f"expected a COCO document with one image, found {len(results)}",
                hint="use s3seg.from_coco() for several images",
            )
        return results[0]


def to_coco(results: Iterable[SegmentationResult]) -> dict[str, Any]:
    """Several results as one COCO instance-segmentation document (JSON-ready dict).

    Categories are the distinct prompts, numbered from 1 in the order first asked.
    """
    doc = CocoBuilder()
    for r in results:
        image_id = doc.add_image(
            r.image,
            r.width,
            r.height,
            {
                "prompts": list(r.prompts),
                "named": r.image is not None,
                "timings": r.timings.to_dict(),
                "model": r.model,
            },
        )
        for inst in r.instances:
            segmentation, area = _rle.encode(inst.mask)
            doc.add_instance(image_id, inst.prompt, inst.score, inst.box, segmentation, area)
    return doc.document("s3seg segmentation results")


class CocoBuilder:
    """A COCO document built image by image, in the form :func:`to_coco` writes and :func:`from_coco` reads.

    Categories are the prompts, numbered from 1 in the order first seen. Shared by :func:`to_coco` and the
    batch writer, which adds the RLE it already holds instead of encoding masks again."""

    def __init__(self) -> None:
        self.categories: dict[str, int] = {}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(self, file_name: str | None, width: int, height: int, meta: dict[str, Any]) -> int:
        """An image (``meta`` is its ``s3seg`` entry, with its ``prompts``); returns its id."""
        image_id = len(self.images) + 1
        for p in meta["prompts"]:
            self.categories.setdefault(p, len(self.categories) + 1)
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name or f"image_{image_id}",
                "width": width,
                "height": height,
                "s3seg": meta,
            }
        )
        return image_id

    def add_instance(
        self,
        image_id: int,
        prompt: str,
        score: float,
        box: Sequence[float],
        segmentation: dict[str, Any],
        area: int,
    ) -> None:
        """One instance of an image added before: its mask as compressed RLE and that mask's area."""
        x0, y0, x1, y1 = box
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self.categories[prompt],
                "segmentation": segmentation,
                "area": area,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "bbox_xyxy": [x0, y0, x1, y1],
                "score": score,
                "iscrowd": 0,
            }
        )

    def document(self, description: str) -> dict[str, Any]:
        return {
            "info": {"description": description},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": n, "supercategory": "prompt"} for n, i in self.categories.items()],
        }


def from_coco(doc: Mapping[str, Any]) -> list[SegmentationResult]:
    """The results in a COCO document written by :func:`to_coco` (or any COCO file with RLE masks, no
    polygons): a **list**, one :class:`SegmentationResult` per image of the document, in its order.

    Raises:
        ResultFormatError: the document is not one s3seg can read.

    >>> from s3seg import Box, SegmentationResult, from_coco, to_coco
    >>> empty = SegmentationResult(width=4, height=3, prompts=("dog",), image="a.jpg")
    >>> [back] = from_coco(to_coco([empty]))     # one image in the document: a list of one
    >>> back.image, back.width, back.height, back.prompts, len(back)
    ('a.jpg', 4, 3, ('dog',), 0)
    """
    try:
        names = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        by_image: dict[int, list[Instance]] = {int(im["id"]): [] for im in doc["images"]}
        sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in doc["images"]}
        for ann in doc["annotations"]:
            image_id = int(ann["image_id"])
            height, width = sizes[image_id]
            if "mask_png" in ann:  # the server's PNG mask format
                mask = _rle.decode_png(base64.b64decode(ann["mask_png"]), height, width)
            else:
                mask = _rle.decode(ann["segmentation"], height, width)
            if "bbox_xyxy" in ann:
                box = tuple(float(v) for v in ann["bbox_xyxy"])
            else:
                x, y, w, h = (float(v) for v in ann["bbox"])
                box = (x, y, x + w, y + h)
            by_image[image_id].append(
                Instance(
                    prompt=names[int(ann["category_id"])],
                    score=float(ann.get("score", 1.0)),
                    box=box,  # type: ignore[arg-type]
                    mask=mask,
                )
            )
        results = []
        for im in doc["images"]:
            extra = im.get("s3seg", {})
            found = by_image[int(im["id"])]
            prompts = extra.get("prompts") or list(dict.fromkeys(i.prompt for i in found))
            results.append(
                SegmentationResult(
                    width=int(im["width"]),
                    height=int(im["height"]),
                    prompts=tuple(prompts),
                    instances=tuple(found),
                    image=im.get("file_name") if extra.get("named", True) else None,
                    timings=Timings(**_timing_fields(extra.get("timings", {}))),
                    model=extra.get("model"),
                )
            )
        return results
    except ResultFormatError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ResultFormatError(
            f"not a valid s3seg/COCO results document: {type(e).__name__}: {e}",
            hint="expected 'images', 'annotations' and 'categories' with RLE segmentations",
        ) from e


def _timing_fields(d: Mapping[str, Any]) -> dict[str, float]:
    keys = ("preprocess_ms", "inference_ms", "postprocess_ms")
    return {k: float(d[k]) for k in keys if k in d}


def box_from_string(text: str) -> Box:
    """Parse ``x0,y0,x1,y1`` (pixels); a ``neg:`` prefix marks a negative exemplar (``pos:`` is allowed)."""
    raw = text.strip()
    positive = not raw.lower().startswith("neg:")
    if raw.lower().startswith(("neg:", "pos:")):
        raw = raw[4:]
    parts = [p for p in raw.replace(" ", "").split(",") if p]
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError as e:
        raise UsageError(
            f"box {text!r} must be four numbers x0,y0,x1,y1 (prefix 'neg:' for a negative one)",
            hint="example: 10,20,200,240 or neg:10,20,200,240",
        ) from e
    return Box(x0, y0, x1, y1, positive=positive)


# Lone UTF-16 surrogates and control characters other than tab, newline and carriage return (NUL, ESC, C1).
_BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(text: str, what: str = "text") -> str:
    """The one text rule for everything a client writes (prompts, names, projects, URLs): proper Unicode
    (no lone surrogates) without control characters; tab, newline and carriage return are allowed. Returns
    ``text``; anything else is an :class:`InvalidText`."""
    found = _BAD_TEXT.search(text)
    if found is not None:
        char = found.group()
        kind = "a lone UTF-16 surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        raise InvalidText(
            f"{what} holds {kind} (U+{ord(char):04X}) at position {found.start()}",
            hint="send proper Unicode text (UTF-8) without control characters",
        )
    return text


_MAX_FILE_NAME = 200
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_file_name(name: str | None) -> str | None:
    """A client's file name made safe to keep and show: its base name only (after the last ``/`` or ``\\``),
    without control characters or lone surrogates (the :func:`check_text` rule, tab and newlines too), ends
    stripped, at most 200 characters (the extension kept); None when nothing is left."""
    if not name:
        return None
    base = _ANY_CONTROL.sub("", re.split(r"[/\\]", name)[-1]).strip()
    if base in ("", ".", ".."):
        return None
    if len(base) > _MAX_FILE_NAME:
        stem, dot, ext = base.rpartition(".")
        keep = dot + ext if dot and stem and len(ext) <= 16 else ""
        base = base[: _MAX_FILE_NAME - len(keep)].rstrip() + keep
    return base


def normalize_prompts(prompts: str | Iterable[str] | None) -> tuple[str, ...]:
    """The one prompt rule: one string or several; inner whitespace collapsed, ends stripped, repeats
    dropped (first kept). An empty prompt or a non-string is a :class:`UsageError`."""
    if prompts is None:
        return ()
    if isinstance(prompts, str):
        prompts = [prompts]
    out: dict[str, None] = {}  # ordered, and a repeat is found in O(1)
    for p in prompts:
        if not isinstance(p, str):
            raise UsageError(f"prompts must be strings, got {type(p).__name__}")
        check_text(p, "a prompt")
        p = " ".join(p.split())
        if not p:
            raise UsageError("a prompt is empty", hint="give a noun phrase such as 'dog' or 'red car'")
        out.setdefault(p)
    return tuple(out)
