"""Request bodies shared by the inference routes (``PredictIn``) and the public API (``SegmentIn``): an
exemplar box and the options every segmentation takes, turned into the one :class:`SegmentRequest`."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from s3seg.types import Box, Limits, SegmentOptions, SegmentRequest


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
        return SegmentRequest.build(
            prompts,
            [Box(*b.box, positive=b.positive) for b in self.boxes],
            defaults=defaults,
            limits=limits,
            threshold=self.threshold,
            mask_threshold=self.mask_threshold,
            max_instances=self.max_instances,
            nms_iou=self.nms_iou,
        )
