"""s3seg: Meta's SAM3 text-prompted segmentation from the terminal, from Python and from a GPU server.

>>> import s3seg
>>> result = s3seg.segment("photo.jpg", "dog")          # doctest: +SKIP
>>> client = s3seg.Client(model="facebook/sam3")        # keeps the model loaded  # doctest: +SKIP

Importing s3seg is light: torch loads only when a model does.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from s3seg.errors import *  # noqa: F403  (every error is s3seg.<Name> too; the module imports nothing heavy)
from s3seg.errors import __all__ as _errors

if TYPE_CHECKING:
    from s3seg._batch import BatchItem, BatchSummary, batch, read_batch
    from s3seg._paths import Outcome
    from s3seg.client import Client, segment
    from s3seg.config import Settings
    from s3seg.types import Box, Instance, SegmentationResult, SegmentRequest, Timings, from_coco, to_coco
    from s3seg.video import TrackedFrame, VideoResult, read_tracks, segment_video

try:
    __version__ = version("s3seg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

# Names load on first use (PEP 562) so that `import s3seg` and `s3seg --help` stay fast.
_LAZY = {
    "BatchItem": "s3seg._batch",
    "BatchSummary": "s3seg._batch",
    "batch": "s3seg._batch",
    "read_batch": "s3seg._batch",
    "Client": "s3seg.client",
    "segment": "s3seg.client",
    "Settings": "s3seg.config",
    "Box": "s3seg.types",
    "Instance": "s3seg.types",
    "Outcome": "s3seg._paths",
    "SegmentationResult": "s3seg.types",
    "SegmentRequest": "s3seg.types",
    "Timings": "s3seg.types",
    "from_coco": "s3seg.types",
    "to_coco": "s3seg.types",
    "segment_video": "s3seg.video",
    "read_tracks": "s3seg.video",
    "TrackedFrame": "s3seg.video",
    "VideoResult": "s3seg.video",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 's3seg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BatchItem",
    "BatchSummary",
    "Box",
    "Client",
    "Instance",
    "Outcome",
    "SegmentRequest",
    "SegmentationResult",
    "Settings",
    "Timings",
    "TrackedFrame",
    "VideoResult",
    "__version__",
    "batch",
    "from_coco",
    "read_batch",
    "read_tracks",
    "segment",
    "segment_video",
    "to_coco",
]
__all__ += _errors
