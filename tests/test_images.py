"""Tests for s3seg.images: every input kind and mode, failures as ImageError, input expansion."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from s3seg.errors import ImageError, UsageError
from s3seg.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    LoadedImage,
    check_image,
    decode_cost,
    expand_inputs,
    load_image,
)


def save(im: Image.Image, path: Path, **kwargs: Any) -> Path:
    im.save(path, **kwargs)
    return path


def px(loaded: LoadedImage, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in loaded.array[y, x])


def check_array(loaded: LoadedImage, height: int, width: int) -> None:
    assert loaded.array.shape == (height, width, 3)
    assert loaded.array.dtype == np.uint8
    assert loaded.array.flags.c_contiguous
    assert (loaded.height, loaded.width) == (height, width)


# --- modes ---------------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path: Path) -> None:
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[1, 2] = (10, 200, 30)
    path = save(Image.fromarray(arr), tmp_path / "rgb.png")
    out = load_image(path)
    check_array(out, 4, 6)
    assert np.array_equal(out.array, arr)
    assert out.name == str(path)


def test_grayscale_l(tmp_path: Path) -> None:
    arr = np.array([[0, 77], [128, 255]], dtype=np.uint8)
    out = load_image(save(Image.fromarray(arr), tmp_path / "l.png"))
    assert px(out, 1, 0) == (77, 77, 77)
    assert px(out, 1, 1) == (255, 255, 255)


def test_one_bit(tmp_path: Path) -> None:
    im = Image.new("1", (3, 2), 0)
    im.putpixel((2, 1), 1)
    out = load_image(save(im, tmp_path / "bits.png"))
    assert px(out, 0, 0) == (0, 0, 0)
    assert px(out, 2, 1) == (255, 255, 255)


def test_la_transparent_is_white(tmp_path: Path) -> None:
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (50, 0))
    im.putpixel((1, 0), (50, 255))
    out = load_image(save(im, tmp_path / "la.png"))
    assert px(out, 0, 0) == (255, 255, 255)
    assert px(out, 1, 0) == (50, 50, 50)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black → white, not black
    im.putpixel((1, 0), (255, 0, 0, 255))
    im.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(save(im, tmp_path / "rgba.png"))
    assert px(out, 0, 0) == (255, 255, 255)
    assert px(out, 1, 0) == (255, 0, 0)
    assert all(abs(v - 127) <= 1 for v in px(out, 2, 0))


def test_palette_colours(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 10, 20, 5, 150, 250] + [0] * (256 * 3 - 9))
    im.putpixel((0, 0), 1)
    im.putpixel((1, 0), 2)
    out = load_image(save(im, tmp_path / "p.png"))
    assert px(out, 0, 0) == (200, 10, 20)
    assert px(out, 1, 0) == (5, 150, 250)


def test_palette_transparency_is_white(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 10, 20] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    out = load_image(save(im, tmp_path / "pt.png", transparency=0))
    assert px(out, 0, 0) == (255, 255, 255)
    assert px(out, 1, 0) == (200, 10, 20)


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "g16.png")
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I")
    out = load_image(path)
    assert [v[0] for v in out.array[0]] == [0, 1, 128, 255]


def test_16bit_gradient_not_all_white(tmp_path: Path) -> None:
    arr = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    out = load_image(save(Image.fromarray(arr), tmp_path / "grad16.png"))
    assert out.array.min() == 0 and out.array.max() == 255
    assert len(np.unique(out.array)) > 32


def test_mode_i_and_f_pil(tmp_path: Path) -> None:
    im_i = Image.fromarray(np.array([[0, 32768, 65535, 70000]], dtype=np.int32))
    assert im_i.mode == "I"
    assert [v[0] for v in load_image(im_i).array[0]] == [0, 128, 255, 255]
    im_f = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32))
    assert im_f.mode == "F"
    assert [v[0] for v in load_image(im_f).array[0]] == [0, 128, 255, 255]
    # and through a file
    out = load_image(save(im_f, tmp_path / "f.tif"))
    assert [v[0] for v in out.array[0]] == [0, 128, 255, 255]


def test_cmyk_converted(tmp_path: Path) -> None:
    im = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 0))
    out = load_image(save(im, tmp_path / "cmyk.tif"))
    assert px(out, 0, 0) == (255, 255, 255)
    assert px(out, 1, 0) == (0, 255, 255)


def test_ycbcr_converted() -> None:
    im = Image.new("RGB", (2, 2), (200, 40, 90)).convert("YCbCr")
    out = load_image(im)
    assert np.array_equal(out.array, np.asarray(im.convert("RGB")))


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(path)
    assert px(out, 1, 1) == (255, 0, 0)


def test_multipage_tiff_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 3), (0, 200, 0)), Image.new("RGB", (5, 5), (9, 9, 9))]
    path = tmp_path / "pages.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_image(path)
    check_array(out, 3, 4)
    assert px(out, 0, 0) == (0, 200, 0)


# --- EXIF orientation ----------------------------------------------------------------------------


def _oriented_jpeg(tmp_path: Path) -> Path:
    """40 wide, 20 high, a red block at the stored top-left corner, orientation 6 (rotate 90° CW)."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:6, :6] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(Image.fromarray(arr), tmp_path / "rot.jpg", exif=exif, quality=95)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    out = load_image(_oriented_jpeg(tmp_path))
    check_array(out, 40, 20)  # rotated: now 20 wide, 40 high
    r, g, b = px(out, 17, 2)  # stored top-left lands top-right after a clockwise turn
    assert r > 200 and g < 60 and b < 60
    assert max(px(out, 2, 2)) < 60  # the old bottom-left is dark


def test_exif_orientation_bytes_and_pil(tmp_path: Path) -> None:
    path = _oriented_jpeg(tmp_path)
    assert load_image(path.read_bytes()).array.shape == (40, 20, 3)
    with Image.open(path) as im:
        assert load_image(im).array.shape == (40, 20, 3)
        assert im.size == (40, 20)  # the caller's image is not transposed in place


# --- failures ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="image not found") as e:
        load_image(path)
    assert str(path) in e.value.message
    assert e.value.hint


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory") as e:
        load_image(tmp_path)
    assert str(tmp_path) in e.value.message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="image file is empty") as e:
        load_image(path)
    assert str(path) in e.value.message


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello, not an image\n")
    with pytest.raises(ImageError, match="not an image or corrupt") as e:
        load_image(path)
    assert str(path) in e.value.message
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not an image or corrupt") as e:
        load_image(path)
    assert str(path) in e.value.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bytes_input(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (1, 2, 3)).save(buf, format="PNG")
    out = load_image(buf.getvalue())
    check_array(out, 3, 5)
    assert out.name is None
    assert load_image(buf.getvalue(), name="x.png").name == "x.png"
    with pytest.raises(ImageError, match="image file is empty: <bytes>"):
        load_image(b"")
    with pytest.raises(ImageError, match="cannot read image <bytes>: not an image or corrupt"):
        load_image(b"definitely not an image")


def test_unsupported_type() -> None:
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]


def test_bad_max_pixels() -> None:
    with pytest.raises(UsageError):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=0)


# --- decompression bombs -------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of the given size, streamed so it never exists decoded in memory."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def test_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _huge_png(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 1_000_000

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="too large") as e:
        load_image(path, max_pixels=1_000_000)
    assert "20000×20000 = 400000000 pixels (limit 1000000)" in e.value.message
    assert str(path) in e.value.message
    assert e.value.hint and "--max-pixels" in e.value.hint
    assert before == Image.MAX_IMAGE_PIXELS  # PIL's global is restored


def test_bomb_refused_with_default_limit_and_bytes(tmp_path: Path) -> None:
    path = _huge_png(tmp_path / "bomb.png", 20000, 20000)  # 400 M > both PIL's and our default limits
    with pytest.raises(ImageError, match=f"limit {DEFAULT_MAX_PIXELS}"):
        load_image(path.read_bytes())


def test_pil_own_bomb_limit_does_not_interfere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL would warn (an error under -W error) or raise; our limit is the one that counts.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = save(Image.new("RGB", (50, 50), (1, 2, 3)), tmp_path / "ok.png")
    assert load_image(path).array.shape == (50, 50, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_limit_applies_to_arrays() -> None:
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=9999)
    assert load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=10000).array.shape == (100, 100, 3)


# --- numpy and PIL inputs ------------------------------------------------------------------------


def test_numpy_uint8_shapes() -> None:
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    assert px(load_image(gray), 1, 0) == (100, 100, 100)
    assert px(load_image(gray[:, :, None]), 0, 1) == (200, 200, 200)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(load_image(rgb).array, rgb)
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 1] = (10, 20, 30, 255)
    out = load_image(rgba)
    assert px(out, 0, 0) == (255, 255, 255)
    assert px(out, 1, 0) == (10, 20, 30)


def test_numpy_dtypes() -> None:
    assert [v[0] for v in load_image(np.array([[0, 32768, 65535]], dtype=np.uint16)).array[0]] == [0, 128, 255]
    assert [v[0] for v in load_image(np.array([[0, 32768, 65535]], dtype=">u2")).array[0]] == [0, 128, 255]
    assert [v[0] for v in load_image(np.array([[False, True]])).array[0]] == [0, 255]
    floats = np.array([[0.0, 0.5, 1.0, 1.5, -0.2, np.nan]], dtype=np.float64)
    assert [v[0] for v in load_image(floats).array[0]] == [0, 128, 255, 255, 0, 0]
    assert px(load_image(np.full((1, 1, 3), 0.25, np.float32)), 0, 0) == (64, 64, 64)


@pytest.mark.parametrize(
    ("arr", "needle"),
    [
        (np.zeros((4, 4), np.int32), "int32"),
        (np.zeros((4, 4), np.complex64), "complex64"),
        (np.zeros((4, 4, 2), np.uint8), r"\(4, 4, 2\)"),
        (np.zeros((4,), np.uint8), r"\(4,\)"),
        (np.zeros((2, 2, 2, 3), np.uint8), r"\(2, 2, 2, 3\)"),
        (np.zeros((0, 4, 3), np.uint8), r"\(0, 4, 3\)"),
    ],
)
def test_numpy_rejected(arr: np.ndarray, needle: str) -> None:
    with pytest.raises(ImageError, match=needle):
        load_image(arr)


def test_result_never_shares_memory() -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    out = load_image(rgb)
    assert not np.shares_memory(out.array, rgb)
    out.array[0, 0] = 9
    assert rgb[0, 0, 0] == 0
    bgr_view = rgb[:, :, ::-1]
    out = load_image(bgr_view)
    assert out.array.flags.c_contiguous and not np.shares_memory(out.array, rgb)
    im = Image.new("RGB", (3, 3))
    out = load_image(im)
    out.array[0, 0] = 7
    assert im.getpixel((0, 0)) == (0, 0, 0)


def test_pil_input_not_modified() -> None:
    im = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    out = load_image(im, name="mem")
    assert out.name == "mem"
    assert im.mode == "RGBA"
    assert px(out, 0, 0) == (255, 255, 255)


# --- expand_inputs -------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_expand_files_dirs_and_order(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    b = _touch(d / "b.png")
    a = _touch(d / "a.JPG")
    _touch(d / "notes.txt")
    _touch(d / ".hidden.jpg")
    _touch(d / "sub" / "deep.png")
    single = _touch(tmp_path / "z.raw")  # explicit files are kept whatever their suffix
    got = expand_inputs([str(single), str(d)])
    assert got == [single, a, b]


def test_expand_glob(tmp_path: Path) -> None:
    one = _touch(tmp_path / "x" / "1.png")
    two = _touch(tmp_path / "x" / "y" / "2.webp")
    _touch(tmp_path / "x" / "y" / "skip.txt")
    assert expand_inputs([str(tmp_path / "x" / "**" / "*")]) == [one, two]
    assert expand_inputs([str(tmp_path / "x" / "*.png")]) == [one]


def test_expand_dedup(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.png")
    b = _touch(tmp_path / "b.png")
    got = expand_inputs([str(b), str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "." / "a.png")])
    assert got == [b, a]


def test_expand_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="no such file or directory") as e:
        expand_inputs([missing])
    assert missing in e.value.message
    pattern = str(tmp_path / "*.nothing")
    with pytest.raises(ImageError) as e:
        expand_inputs([pattern])
    assert e.value.message == f"the glob {pattern} matches no file" and "quote it" in (e.value.hint or "")


def test_expand_empty_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _touch(empty / "readme.txt")
    with pytest.raises(ImageError, match="no image files in directory") as e:
        expand_inputs([str(empty)])
    assert str(empty) in e.value.message


def test_expand_glob_without_images(tmp_path: Path) -> None:
    _touch(tmp_path / "a.txt")
    with pytest.raises(ImageError, match="no image files match"):
        expand_inputs([str(tmp_path / "*.txt")])


def test_suffixes() -> None:
    assert {".jpg", ".png", ".tiff"} <= IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


# --- checking without keeping the pixels, and what decoding costs (the server's memory budget) -----------


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_check_image_agrees_with_load_image(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    im = Image.fromarray(rng.integers(0, 65535, (30, 50), dtype=np.uint16)) if mode == "I;16" else im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG" if mode == "CMYK" else "PNG")
    loaded = load_image(buf.getvalue())
    assert check_image(buf.getvalue()) == (loaded.width, loaded.height) == (50, 30)


def test_check_image_turns_and_refuses_like_load_image(tmp_path: Path) -> None:
    rotated = _oriented_jpeg(tmp_path).read_bytes()
    assert check_image(rotated) == (20, 40)  # upright, as load_image answers it
    for fmt in ("JPEG", "PNG"):  # a JPEG is checked at 1/8 scale: every byte is still read
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(buf, fmt)
        whole = buf.getvalue()
        assert check_image(whole) == (256, 256)
        for cut in (whole[: len(whole) // 2], whole[:-64]):
            with pytest.raises(ImageError, match="not an image or corrupt"):
                check_image(cut, name="cut")
    with pytest.raises(ImageError, match="too large"):
        check_image(_huge_png(tmp_path / "bomb.png", 20000, 20000).read_bytes(), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="empty"):
        check_image(b"")
    with pytest.raises(ImageError, match="not an image or corrupt"):
        check_image(b"definitely not an image")


def test_decode_cost_from_the_header(tmp_path: Path) -> None:
    def encoded(mode: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (100, 50)).save(buf, format="PNG")
        return buf.getvalue()

    assert decode_cost(encoded("1")) == 100 * 50 * (1 + 3)  # PIL's byte a pixel + the RGB array
    assert decode_cost(encoded("RGB")) == 100 * 50 * (4 + 3)
    assert decode_cost(encoded("RGB"), check_only=True) == 100 * 50 * 4
    assert decode_cost(_oriented_jpeg(tmp_path).read_bytes()) == 20 * 40 * (2 * 4 + 3)  # turned: a second copy
    with pytest.raises(ImageError, match="too large"):
        decode_cost(_huge_png(tmp_path / "bomb.png", 20000, 20000).read_bytes())
