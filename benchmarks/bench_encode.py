#!/usr/bin/env python
"""Mask encoding and result files, without a model: one run, one machine, the same masks for every path.

Masks are shaped like SAM3's (smooth outlines: a coarse random field upsampled and thresholded), from small
objects to whole-image ones, at 0.3 MP (640×480) and 2 MP (1920×1080):

* ``pycocotools``: ``mask.encode(np.asfortranarray(m.astype(np.uint8)))`` and ``mask.area`` per mask, the way
  a pycocotools user (and bench_engine's ``transformers+RLE`` path) encodes;
* ``s3seg``: ``s3seg._rle.encode(m)``, what ``result.to_coco()`` runs for every instance. Its strings must equal
  pycocotools' byte for byte, or the script exits with status 1.

Then recording a result the way ``--save`` and the public API's tasks do (``render.outputs``: COCO JSON, mask
PNG and overlay JPEG) for 20 and 100 instances, with the size of each file.

    python benchmarks/bench_encode.py
    python benchmarks/bench_encode.py --repeats 50 --json bench-encode.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from bench_engine import synthetic_image
from bench_server import machine_lines
from pycocotools import mask as coco_mask

from s3seg import _rle, render
from s3seg.types import Instance, SegmentationResult

SIZES = ((640, 480), (1920, 1080))
#: name → share of the image taken by the mask's box (1.0: the whole image, many scattered parts).
SHAPES = {"small object": 0.01, "medium object": 0.1, "large object": 0.4, "scattered parts": 1.0}

Mask = npt.NDArray[np.bool_]


def blob(width: int, height: int, share: float, rng: np.random.Generator) -> Mask:
    """A mask with SAM3-like outlines: a 16×16 random field, bilinearly upsampled, thresholded at zero,
    inside a random box covering ``share`` of the image (the whole image for 1.0: many scattered parts)."""
    bw, bh = max(2, round(width * share**0.5)), max(2, round(height * share**0.5))
    field = torch.nn.functional.interpolate(
        torch.from_numpy(rng.standard_normal((1, 1, 16, 16))), size=(bh, bw), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    if share < 1.0:  # one object: strongest in the middle of its box
        yy, xx = np.mgrid[-1 : 1 : bh * 1j, -1 : 1 : bw * 1j]
        field = field + 2.0 * (1.0 - np.hypot(xx, yy))
    mask = np.zeros((height, width), dtype=bool)
    y0, x0 = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
    mask[y0 : y0 + bh, x0 : x0 + bw] = field > 0
    return mask


def pycocotools_encode(mask: Mask) -> tuple[dict[str, Any], int]:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, int(coco_mask.area(rle))


def timed(fn: Callable[..., Any], *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def encoding_rows(repeats: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], int]:
    rows, mismatches = [], 0
    for width, height in SIZES:
        for shape, share in SHAPES.items():
            masks = [blob(width, height, share, rng) for _ in range(8)]
            mismatches += sum(_rle.encode(m) != pycocotools_encode(m) for m in masks)
            ms: dict[str, list[float]] = {"pycocotools": [], "s3seg": []}
            for _ in range(repeats):  # alternating, so that load from elsewhere hits both alike
                for m in masks:
                    ms["pycocotools"].append(timed(pycocotools_encode, m))
                    ms["s3seg"].append(timed(_rle.encode, m))
            rows.append(
                {
                    "image": f"{width}x{height}",
                    "mask": shape,
                    "coverage": float(np.mean([m.mean() for m in masks])),
                    **{f"{k} median ms": statistics.median(v) for k, v in ms.items()},
                    **{f"{k} p95 ms": p95(v) for k, v in ms.items()},
                }
            )
    return rows, mismatches


def recording_rows(repeats: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    rows = []
    for width, height in SIZES:
        image = synthetic_image(width, height, seed=1)
        for count in (20, 100):
            shares = rng.choice([0.005, 0.02, 0.1], size=count)
            instances = [
                Instance("thing", float(rng.random()), (0.0, 0.0, 10.0, 10.0), blob(width, height, s, rng))
                for s in shares
            ]
            result = SegmentationResult(width, height, ("thing",), tuple(instances))
            total = [timed(render.outputs, image, result) for _ in range(repeats)]
            files = render.outputs(image, result)
            rows.append(
                {
                    "image": f"{width}x{height}",
                    "instances": count,
                    "median ms": statistics.median(total),
                    "p95 ms": p95(total),
                    "coco ms": statistics.median(timed(result.to_coco) for _ in range(repeats)),
                    "KiB": {
                        k: round(len(getattr(files, k)) / 1024, 1) for k in ("coco_json", "mask_png", "overlay_jpeg")
                    },
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed passes over each set of masks (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for line in machine_lines(torch.device("cpu"), torch.float32, "none (no model)"):
        if not line.startswith(("device", "server")):
            print(line)
    rng = np.random.default_rng(args.seed)

    encoding, mismatches = encoding_rows(args.repeats, rng)
    print("\nCOCO RLE per mask (median / p95 ms; ratio: pycocotools ÷ s3seg, > 1 means s3seg is faster)")
    print(f"{'image':>10}  {'mask':<16} {'cover':>6}  {'pycocotools':>14}  {'s3seg':>14}  {'ratio':>6}")
    for r in encoding:
        py, ours = r["pycocotools median ms"], r["s3seg median ms"]
        print(
            f"{r['image']:>10}  {r['mask']:<16} {r['coverage']:6.1%}  {py:6.2f} / {r['pycocotools p95 ms']:5.2f}"
            f"  {ours:6.2f} / {r['s3seg p95 ms']:5.2f}  {py / ours:5.2f}×"
        )

    recording = recording_rows(max(3, args.repeats // 4), rng)
    print("\nRecording a result (render.outputs: COCO JSON + mask PNG + overlay JPEG)")
    for r in recording:
        print(
            f"{r['image']:>10}  {r['instances']:3d} instances  {r['median ms']:7.1f} ms median  "
            f"{r['p95 ms']:7.1f} p95  (COCO alone {r['coco ms']:.1f} ms)  sizes KiB {r['KiB']}"
        )

    if args.json:
        args.json.write_text(json.dumps({"encoding": encoding, "recording": recording}, indent=2))
    if mismatches:
        print(f"\nFAILED: {mismatches} masks encoded differently from pycocotools", file=sys.stderr)
        return 1
    print("\nall RLE strings identical to pycocotools'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
