"""Mask codecs: COCO compressed RLE through pycocotools (the format's reference implementation), and
1-bit PNG for clients that prefer images."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as _mask

from s3seg.errors import ResultFormatError


def encode(mask: npt.NDArray[np.bool_]) -> tuple[dict[str, Any], int]:
    """bool (H, W) → (``{"size": [H, W], "counts": str}`` JSON-ready compressed RLE, mask area)."""
    rle = _mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    area = int(_mask.area(rle))  # from the runs: cheaper than summing the pixels again
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}, area


def decode(rle: Any, height: int, width: int) -> npt.NDArray[np.bool_]:
    """Compressed RLE (as written by :func:`encode`) → bool (H, W); its size must match the image."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ResultFormatError(
            "segmentation must be a COCO RLE object with 'size' and 'counts'",
            hint="polygon segmentations are not supported; write masks as RLE",
        )
    size = [int(v) for v in rle["size"]]
    if size != [height, width]:
        raise ResultFormatError(f"RLE size {size} does not match image size [{height}, {width}]")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        compressed = _mask.frPyObjects({"size": size, "counts": counts}, height, width)
    else:
        compressed = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        with warnings.catch_warnings():
            # pycocotools' RLE object predates numpy 2's __array__(copy=...) protocol; harmless here.
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            out = _mask.decode(compressed)
    except Exception as e:  # pycocotools raises bare exceptions on corrupt counts
        raise ResultFormatError(f"corrupt RLE counts: {e}") from e
    return np.asarray(out, dtype=bool)


def encode_png(mask: npt.NDArray[np.bool_]) -> bytes:
    """bool (H, W) → a 1-bit PNG (white = mask)."""
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(mask).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_png(data: bytes, height: int, width: int) -> npt.NDArray[np.bool_]:
    """A mask PNG (as written by :func:`encode_png`) → bool (H, W); its size must match the image."""
    from io import BytesIO

    from PIL import Image

    try:
        with Image.open(BytesIO(data)) as im:
            mask = np.array(im.convert("1"), dtype=bool)
    except Exception as e:
        raise ResultFormatError(f"mask_png is not a readable PNG: {e}") from e
    if mask.shape != (height, width):
        raise ResultFormatError(f"mask_png is {mask.shape[1]}×{mask.shape[0]}, image is {width}×{height}")
    return mask
