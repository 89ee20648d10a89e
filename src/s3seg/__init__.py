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

if TYPE_CHECKING:
    from s3seg.client import Client, segment
    from s3seg.config import Settings
    from s3seg.errors import (
        AuthError,
        CreditsError,
        DependencyError,
        DeviceError,
        ImageError,
        ImageTooLargeError,
        ModelError,
        ResultFormatError,
        S3SegError,
        ServerError,
        StorageError,
        StoreError,
        TaskNotFound,
        UsageError,
    )
    from s3seg.types import Box, Instance, SegmentationResult, Timings, from_coco, to_coco

try:
    __version__ = version("s3seg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

# Names load on first use (PEP 562) so that `import s3seg` and `s3seg --help` stay fast.
_LAZY = {
    "Client": "s3seg.client",
    "segment": "s3seg.client",
    "Settings": "s3seg.config",
    "Box": "s3seg.types",
    "Instance": "s3seg.types",
    "SegmentationResult": "s3seg.types",
    "Timings": "s3seg.types",
    "from_coco": "s3seg.types",
    "to_coco": "s3seg.types",
    **dict.fromkeys(
        [
            "AuthError",
            "CreditsError",
            "DependencyError",
            "DeviceError",
            "ImageError",
            "ImageTooLargeError",
            "ModelError",
            "ResultFormatError",
            "S3SegError",
            "ServerError",
            "StorageError",
            "StoreError",
            "TaskNotFound",
            "UsageError",
        ],
        "s3seg.errors",
    ),
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
    "AuthError",
    "Box",
    "Client",
    "CreditsError",
    "DependencyError",
    "DeviceError",
    "ImageError",
    "ImageTooLargeError",
    "Instance",
    "ModelError",
    "ResultFormatError",
    "S3SegError",
    "SegmentationResult",
    "ServerError",
    "Settings",
    "StorageError",
    "StoreError",
    "TaskNotFound",
    "Timings",
    "UsageError",
    "__version__",
    "from_coco",
    "segment",
    "to_coco",
]
