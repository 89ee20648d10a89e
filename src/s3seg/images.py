"""Load any image input into one form: a C-contiguous ``uint8`` RGB array of shape (H, W, 3).

Inputs are a path, encoded bytes, a ``PIL.Image.Image`` or a numpy array. Every failure is an
:class:`~s3seg.errors.ImageError` with one line naming the image, never a PIL traceback.

Conversion rules (the model sees 8-bit RGB only):

* EXIF orientation is applied (file, bytes and PIL inputs); multi-frame files give their first frame.
* Transparency (RGBA, LA, palette or ``tRNS`` transparency) is composited onto **white**.
* 16-bit data (PIL ``I;16*`` and ``I`` modes, ``uint16`` arrays) is scaled by 255/65535, not clipped.
* Floats (PIL ``F`` mode and float arrays) are read as [0, 1], scaled by 255 and clipped; NaN is 0.
* Images with ``width * height > max_pixels`` are refused before their pixels are decoded. The limit
  applies to every kind of input.
"""

from __future__ import annotations

import glob
import io
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from s3seg.errors import ImageError, ImageTooLargeError, UsageError

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
RGBArray = npt.NDArray[np.uint8]

DEFAULT_MAX_PIXELS = 100_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_TOO_LARGE_HINT = "raise the limit with --max-pixels or S3SEG_MAX_PIXELS"
_CORRUPT_HINT = "check that the file is a complete JPEG, PNG, WebP, BMP, TIFF or GIF image"
_ARRAY_HINT = "pass an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of uint8, uint16, bool or float in [0, 1]"
_REASON_MAX_CHARS = 120


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image.

    Attributes:
        array: (H, W, 3) uint8, C-contiguous RGB; a new array owned by this object.
        name: the path as given (``str``), the ``name`` passed to :func:`load_image`, or ``None``.
    """

    array: RGBArray
    name: str | None
    encoded: bytes | None = field(default=None, repr=False, compare=False)
    """The encoded file as read (path and bytes inputs), so it can be sent on without re-encoding."""

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    def file_bytes(self) -> bytes:
        """The encoded file as read, or a lossless PNG of the pixels (in-memory images), so that whoever
        decodes it gets exactly these pixels."""
        if self.encoded is not None:
            return self.encoded
        from s3seg.render import encode_png

        return encode_png(self.array)


def load_image(source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> LoadedImage:
    """Decode ``source`` into an (H, W, 3) uint8 RGB array.

    Args:
        source: a path (str / PathLike), encoded image bytes, a PIL image, or a numpy array of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (RGBA) with dtype uint8, uint16, bool or float.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding).
        name: the name to report and keep; defaults to ``str(source)`` for paths, else ``None``.

    Returns:
        A :class:`LoadedImage` whose ``array`` never shares memory with ``source``.

    Raises:
        ImageError: missing, empty, unreadable, corrupt, truncated, too large or unsupported input.
        UsageError: ``max_pixels`` is not a positive integer.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise UsageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name if name is not None else str(path)
        data = _read_path(path, label)
        return LoadedImage(_load_bytes(data, label, max_pixels), label, data)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return LoadedImage(_load_bytes(data, name or "<bytes>", max_pixels), name, data)
    if isinstance(source, Image.Image):
        return LoadedImage(_load_pil(source, name or "<PIL image>", max_pixels), name)
    if isinstance(source, np.ndarray):
        return LoadedImage(_load_array(source, name or "<array>", max_pixels), name)
    raise ImageError(
        f"cannot read image of type {type(source).__name__}",
        hint="pass a path, bytes, a PIL image or a numpy array",
    )


def decode_cost(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None, check_only: bool = False
) -> int:
    """The bytes that :func:`load_image` (or, with ``check_only``, :func:`check_image`) needs at its peak
    to decode ``data``, read from the header without decoding a pixel: the decoder's image (1 byte a pixel
    for 1-bit, gray and palette images, 2 for 16-bit gray, 4 for the rest; twice that when EXIF says to
    turn it) plus the RGB output (3). :func:`check_image` needs the decoder's image only.

    Raises:
        ImageError: not an image, or more than ``max_pixels`` pixels (:class:`ImageTooLargeError`).
    """
    with _opened(data, name or "<bytes>", max_pixels) as im:
        width, height = im.size
        native = _DECODER_BYTES.get(im.mode, 4)
        if check_only:
            return width * height * native
        return width * height * (native * (1 if _orientation(im) == 1 else 2) + 3)


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> tuple[int, int]:
    """Check that ``data`` is a whole image of at most ``max_pixels`` pixels, as :func:`load_image` would,
    without its RGB array: decoded in its own mode (a JPEG at 1/8 scale, which still reads every byte).

    Returns:
        Its upright (width, height), EXIF orientation applied, as ``load_image(data).array`` has them.

    Raises:
        ImageError: empty, not an image, truncated or corrupt, or too large.
    """
    with _opened(data, name or "<bytes>", max_pixels) as im:
        width, height = im.size
        turned = _orientation(im) in (5, 6, 7, 8)  # a quarter turn: width and height trade places
        if im.format in ("JPEG", "MPO"):
            im.draft(None, (max(1, width // 8), max(1, height // 8)))
        im.load()
        _strip_converter(im, name or "<bytes>")  # a mode that has no RGB is refused, as load_image does
    return (height, width) if turned else (width, height)


@contextmanager
def _opened(data: bytes, label: str, max_pixels: int) -> Iterator[Image.Image]:
    """``data`` opened (its header read, its size checked); what PIL raises inside is an :class:`ImageError`."""
    if not data:
        raise ImageError(f"image file is empty: {label}", hint="the image data has 0 bytes")
    with _pil_errors(label), _pil_bomb_check_off(), Image.open(io.BytesIO(data)) as im:
        _check_size(im.size, label, max_pixels)
        yield im


@contextmanager
def _pil_errors(label: str) -> Iterator[None]:
    """What PIL raises inside becomes an :class:`ImageError` naming ``label`` (memory errors pass through)."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image {label} is too large: {_short(e)}", hint=_TOO_LARGE_HINT) from e
    except UnidentifiedImageError as e:
        raise _corrupt(label, "unknown format") from e
    except Exception as e:  # PIL decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error...
        raise _corrupt(label, _short(e)) from e


_DECODER_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # PIL's bytes a pixel


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1: upright, as stored)."""
    value = im.getexif().get(0x0112, 1)  # Orientation
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Expand CLI inputs into image paths, in order and without duplicates.

    Each input is a file (kept whatever its suffix), a directory (its non-hidden files with an
    image suffix, sorted, not recursive) or a glob pattern (``**`` recursive; sorted matches that
    are files with an image suffix).

    Raises:
        ImageError: an input is neither an existing path nor a pattern matching anything, or a
            directory / pattern yields no image files.
    """
    out: list[Path] = []
    seen: set[str] = set()
    for raw in inputs:
        if not raw.strip():
            raise ImageError("an input path is empty", hint="pass image files, directories or glob patterns")
        for path in _expand_one(raw):
            key = os.path.normcase(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


# --- expand_inputs helpers ------------------------------------------------------------------------


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _expand_one(raw: str) -> list[Path]:
    path = Path(raw)
    if path.is_dir():
        return _expand_dir(path)
    if path.exists():
        return [path]
    matches = sorted(glob.glob(raw, recursive=True))
    if not matches and glob.has_magic(raw):
        raise ImageError(
            f"the glob {raw} matches no file",
            hint="check the pattern; it is relative to the current folder (quote it so the shell passes it as is)",
        )
    if not matches:
        raise ImageError(f"no such file or directory: {raw}", hint="check the path")
    files = [Path(m) for m in matches if os.path.isfile(m) and _is_image_name(Path(m))]
    if not files:
        raise ImageError(
            f"no image files match {raw}",
            hint=f"supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}",
        )
    return files


def _expand_dir(directory: Path) -> list[Path]:
    # Hidden files are skipped: macOS "._x.jpg" and similar are metadata, not images.
    files = sorted(p for p in directory.iterdir() if not p.name.startswith(".") and _is_image_name(p) and p.is_file())
    if not files:
        raise ImageError(
            f"no image files in directory {directory}",
            hint=f"supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))} (subdirectories are not searched)",
        )
    return files


# --- decoding ------------------------------------------------------------------------------------

# PIL runs its own decompression-bomb check (warning above Image.MAX_IMAGE_PIXELS, error above twice
# that) whose limit is not ours. It is switched off only while s3seg decodes, ref-counted so that
# concurrent loads in threads do not restore it under each other; our own check replaces it.
_pil_limit_lock = threading.Lock()
_pil_limit_users = 0
_pil_limit_saved: int | None = None


@contextmanager
def _pil_bomb_check_off() -> Iterator[None]:
    global _pil_limit_users, _pil_limit_saved
    with _pil_limit_lock:
        if _pil_limit_users == 0:
            _pil_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_limit_users += 1
    try:
        yield
    finally:
        with _pil_limit_lock:
            _pil_limit_users -= 1
            if _pil_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit_saved


def _read_path(path: str, label: str) -> bytes:
    if not os.path.exists(path):
        raise ImageError(f"image not found: {label}", hint="check the path")
    if os.path.isdir(path):
        raise ImageError(f"image path is a directory: {label}", hint="pass image files (the CLI expands directories)")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(f"image file is empty: {label}", hint="the file has 0 bytes; re-copy or re-download it")
        with open(path, "rb") as fp:
            return fp.read()
    except OSError as e:  # permission denied, I/O error; decode errors are converted in _decode
        raise ImageError(f"cannot read image {label}: {e.strerror or e}", hint="check the file's permissions") from e


def _load_bytes(data: bytes, label: str, max_pixels: int) -> RGBArray:
    if not data:
        raise ImageError(f"image file is empty: {label}", hint="the image data has 0 bytes")
    return _decode(io.BytesIO(data), label, max_pixels)


def _decode(fp: IO[bytes], label: str, max_pixels: int) -> RGBArray:
    """Open, check the size from the header, then fully decode the first frame of an encoded image."""
    with _pil_errors(label):
        with _pil_bomb_check_off():
            im = Image.open(fp)
        with im:
            with _pil_bomb_check_off():
                _check_size(im.size, label, max_pixels)
                im.load()  # a full decode inside the try: truncated files fail here, not later
            # Turned and converted outside the window where PIL's own check is off, to keep that window
            # short; turned in place (no copy when there is nothing to turn).
            ImageOps.exif_transpose(im, in_place=True)
            return _pil_to_rgb(im, label)


def _load_pil(im: Image.Image, label: str, max_pixels: int) -> RGBArray:
    """A caller's PIL image: its current frame, EXIF-transposed, never modified in place."""
    _check_size(im.size, label, max_pixels)
    with _pil_errors(label):
        with _pil_bomb_check_off():
            im.load()  # lazily opened images decode here
            # a turned copy only when the image is turned: the conversion below only reads the caller's image
            upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        return _pil_to_rgb(upright, label)


def _check_size(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            f"image {label} is too large: {width}×{height} = {pixels} pixels (limit {max_pixels})",
            hint=_TOO_LARGE_HINT,
        )
    if pixels == 0:
        raise _corrupt(label, f"size {width}x{height}")


def _corrupt(label: str, reason: str) -> ImageError:
    return ImageError(f"cannot read image {label}: not an image or corrupt ({reason})", hint=_CORRUPT_HINT)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= _REASON_MAX_CHARS else text[: _REASON_MAX_CHARS - 3] + "..."


# --- mode conversion -----------------------------------------------------------------------------

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _pil_to_rgb(im: Image.Image, label: str) -> RGBArray:
    """Any PIL mode → new (H, W, 3) uint8 RGB array.

    Converted a strip of rows at a time into the one output array: converting costs the output and one
    strip, not whole-image intermediates (PIL's own RGB copy at 4 bytes a pixel, its bytes, a numpy copy).
    A 1-bit, gray or palette image thus costs 1 byte a pixel (PIL's) plus 3 (the output) while decoding.
    """
    width, height = im.size
    convert = _strip_converter(im, label)
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _STRIP_BYTES // (4 * width))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = convert(im.crop((0, top, width, bottom)))
    return out


_STRIP_BYTES = 1 << 22  # converted at a time (a strip keeps the image's mode, palette and transparency)


def _strip_converter(im: Image.Image, label: str) -> Callable[[Image.Image], npt.NDArray[np.uint8]]:
    """How a strip of ``im`` becomes (h, W, 3) uint8 RGB."""
    if im.mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("L") clips 16-bit values at 255 (a 16-bit PNG would come out white): scale instead.
        return lambda strip: _gray_to_rgb(_scale_uint16(np.asarray(strip)))
    if im.mode == "F":
        return lambda strip: _gray_to_rgb(_scale_float(np.asarray(strip)))
    if im.mode == "RGB" and not im.has_transparency_data:
        return np.asarray
    if im.has_transparency_data:
        # Covers RGBA, LA, PA, premultiplied La/RGBa, palettes with alpha and tRNS transparency keys.
        return lambda strip: _composite_on_white(np.asarray(strip.convert("RGBA")))
    try:
        im.crop((0, 0, 1, 1)).convert("RGB")  # 1, L, P, CMYK, YCbCr, HSV...
    except ValueError as e:
        raise ImageError(
            f"cannot read image {label}: unsupported image mode {im.mode}", hint="convert it to RGB first"
        ) from e
    return lambda strip: np.asarray(strip.convert("RGB"))


def _load_array(arr: np.ndarray, label: str, max_pixels: int) -> RGBArray:
    """A caller's numpy array → new (H, W, 3) uint8 RGB array."""
    shape_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if not shape_ok or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"cannot use array {label} as an image: shape {arr.shape}", hint=_ARRAY_HINT)
    _check_size((int(arr.shape[1]), int(arr.shape[0])), label, max_pixels)
    data = _array_to_uint8(arr, label)  # may be a view of arr when it already is uint8
    if data.ndim == 2:
        return _gray_to_rgb(data)
    if data.shape[2] == 1:
        return _gray_to_rgb(data[:, :, 0])
    if data.shape[2] == 4:
        return _composite_on_white(data)
    return np.array(data, dtype=np.uint8, order="C", copy=True)


def _array_to_uint8(arr: np.ndarray, label: str) -> npt.NDArray[np.uint8]:
    # By kind and size, not dtype equality, so byte-swapped (">u2") arrays are accepted too.
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and size == 1:
        return arr.astype(np.uint8, copy=False)
    if kind == "b":
        ones: npt.NDArray[np.uint8] = arr.astype(np.uint8) * np.uint8(255)
        return ones
    if kind == "u" and size == 2:
        return _scale_uint16(arr)
    if kind == "f":
        return _scale_float(arr)
    raise ImageError(f"cannot use array {label} as an image: dtype {arr.dtype} (shape {arr.shape})", hint=_ARRAY_HINT)


def _scale_uint16(values: np.ndarray) -> npt.NDArray[np.uint8]:
    """0..65535 → 0..255 with rounding (65535 → 255, 32768 → 128); PIL ``I`` values are clipped first."""
    wide: npt.NDArray[np.uint32] = np.clip(values, 0, 65535).astype(np.uint32)
    scaled: npt.NDArray[np.uint8] = ((wide + 128) // 257).astype(np.uint8)
    return scaled


def _scale_float(values: np.ndarray) -> npt.NDArray[np.uint8]:
    """[0, 1] → 0..255, rounded and clipped; NaN → 0."""
    unit: npt.NDArray[np.float32] = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    scaled: npt.NDArray[np.uint8] = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    return scaled


def _gray_to_rgb(gray: npt.NDArray[np.uint8]) -> RGBArray:
    """(H, W) → new (H, W, 3)."""
    return np.repeat(gray[:, :, np.newaxis], 3, axis=2)


def _composite_on_white(rgba: npt.NDArray[np.uint8]) -> RGBArray:
    """(H, W, 4) RGBA → new (H, W, 3) RGB over a white background (transparent → white, not black)."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    a = rgba[:, :, 3:4].astype(np.uint32)
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "ImageInput",
    "LoadedImage",
    "check_image",
    "decode_cost",
    "expand_inputs",
    "load_image",
]
