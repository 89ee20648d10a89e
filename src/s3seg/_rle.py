"""Mask codecs: COCO compressed RLE (encoded here from each mask's bounding box, byte for byte what
pycocotools, the format's reference implementation, writes; decoded by pycocotools), and 1-bit PNG for
clients that prefer images."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as _mask

from s3seg.errors import ResultFormatError


def encode(mask: npt.NDArray[np.bool_]) -> tuple[dict[str, Any], int]:
    """bool (H, W) → (``{"size": [H, W], "counts": str}`` JSON-ready compressed RLE, mask area).

    Byte-for-byte what ``pycocotools.mask.encode`` writes. A mask whose bounding box is at most half the
    image is encoded here from the box alone (small objects in big images cost little); a bigger one by
    pycocotools, whose loop over every pixel is then as fast.
    """
    h, w = mask.shape
    box = bounds(mask)
    if box is None:
        return {"size": [h, w], "counts": _compress(np.array([h * w], dtype=np.int64))}, 0
    r0, r1, c0, c1 = box
    if 2 * (r1 - r0) * (c1 - c0) > h * w:
        rle = _mask.encode(np.asfortranarray(mask.view(np.uint8)))
        return {"size": [h, w], "counts": rle["counts"].decode("ascii")}, int(np.count_nonzero(mask))
    # The box's columns with a False row above and below, in column-major order: every run of True pixels
    # then starts and ends inside one column.
    padded = np.zeros((c1 - c0, r1 - r0 + 2), dtype=bool)
    padded[:, 1:-1] = mask[r0:r1, c0:c1].T
    flat = padded.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    col, row = np.divmod(edges, r1 - r0 + 2)
    edges = (col + c0) * h + (row + r0 - 1)  # the same positions in the whole image, column-major
    starts, ends = edges[0::2], edges[1::2]
    # A run that ends at the bottom of one column and goes on at the top of the next is one run.
    joined = ends[:-1] == starts[1:]
    starts, ends = starts[np.r_[True, ~joined]], ends[np.r_[~joined, True]]
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = h * w - ends[-1]
    if counts[-1] == 0:  # ends on a True run: no trailing zero count
        counts = counts[:-1]
    return {"size": [h, w], "counts": _compress(counts)}, int(counts[1::2].sum())


def bounds(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    """The bounding box of the True pixels as (row0, row1, col0, col1), ends exclusive; None if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return None
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))  # only the rows in use
    return r0, r1, int(cols[0]), int(cols[-1]) + 1


def _compress(counts: npt.NDArray[np.int64]) -> str:
    """Run lengths → the COCO counts string, as pycocotools' ``rleToString`` writes it: each count from the
    fourth on as its difference to the count two before, in 5-bit groups (low first, bit 0x20: more to
    come, the last group's 0x10 bit the sign), each group + 48 as one ASCII character."""
    x = counts.copy()
    x[3:] -= counts[1:-2]
    # Groups per value: enough 5-bit groups to hold its bits and a sign bit.
    bits = np.frexp(np.where(x < 0, ~x, x).astype(np.float64))[1]
    n = (bits + 5) // 5
    first = np.cumsum(n) - n
    value = np.repeat(x, n)
    group = np.arange(len(value)) - np.repeat(first, n)
    more = group < np.repeat(n - 1, n)
    chars = ((value >> (5 * group)) & 0x1F) + 0x20 * more + 48
    data: bytes = chars.astype(np.uint8).tobytes()
    return data.decode("ascii")


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
