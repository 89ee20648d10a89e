"""SAM3 inference. The only package that imports torch; import it lazily from everywhere else."""

from s3seg.engine import _deps  # noqa: F401  (checks the local-inference extra first)
from s3seg.engine._sam3 import (
    VISUAL_PROMPT,
    Fidelity,
    ModelInfo,
    RawPrediction,
    Request,
    Sam3Engine,
)
from s3seg.types import SegmentOptions

__all__ = ["VISUAL_PROMPT", "Fidelity", "ModelInfo", "RawPrediction", "Request", "Sam3Engine", "SegmentOptions"]
