#!/usr/bin/env python
"""Images per second of ``s3seg batch`` (Ray Data, 1 and 2 SAM3 actors) against ``s3seg segment FOLDER``
(one process), on the same machine, model and images.

Each command runs as a user would run it, in a fresh process, and is timed from start to exit: Python and
torch start-up, Ray start-up (embedded, on 127.0.0.1), model loading, reading, segmenting and writing are all
in. ``segment`` prints one COCO document (``--json``), ``batch`` writes Parquet to a fresh local folder.
``steady img/s`` subtracts the same command's time on a single image (start-up and loading), which is what
the rate becomes on a dataset much larger than this one.

    python benchmarks/bench_batch.py                         # tiny config, 48 images of 640×480, CPU
    python benchmarks/bench_batch.py --config small --images 96 --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "examples" / "grace_hopper.jpg"
PROMPTS = ("person", "tie")


def make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    """Crops of a real photograph, resized to ``size``, as JPEG."""
    from PIL import Image

    folder.mkdir(parents=True)
    with Image.open(PHOTO) as im:
        im.load()
        for i in range(n):
            x, y = (13 * i) % 200, (29 * i) % 250
            crop = im.crop((x, y, x + 300, y + 340)).resize(size)
            crop.save(folder / f"img{i:04d}.jpg", quality=90)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", default="640x480", help="WxH of every image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process / per actor")
    parser.add_argument("--actors", default="1,2", help="actor counts to run")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    from s3seg.testing import write_random_checkpoint

    s3seg = [sys.executable, "-m", "s3seg"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "S3SEG_DEBUG": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    actor_counts = [int(a) for a in args.actors.split(",")]
    ncpu = max(os.cpu_count() or 1, max(actor_counts) * args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3seg-bench-batch-") as tmp:
        work = Path(tmp)
        model = str(write_random_checkpoint(work / "model", args.config))
        make_images(work / "images", args.images, (width, height))
        make_images(work / "one", 1, (width, height))
        common = ["-p", PROMPTS[0], "-p", PROMPTS[1], "-m", model, "--device", "cpu"]

        def segment(folder: str) -> list[str]:
            return [*s3seg, "segment", str(work / folder), *common, "--json"]

        def batch(folder: str, actors: int) -> list[str]:
            out = work / f"out-{folder}-{actors}-{time.monotonic_ns()}"
            return [
                *s3seg, "batch", str(work / folder), *common, "--out", str(out), "--quiet",
                "--actors", str(actors), "--cpus-per-actor", str(args.threads), "--num-cpus", str(ncpu),
                "--batch-size", str(args.batch_size),
            ]  # fmt: skip

        cases: list[tuple[str, Any]] = [("segment FOLDER", segment)]
        cases += [(f"batch, {a} actor{'s' if a > 1 else ''}", lambda f, a=a: batch(f, a)) for a in actor_counts]
        for name, cmd in cases:
            startup = timed(cmd("one"), env)
            total = timed(cmd("images"), env)
            # None when start-up noise exceeds the work (too few images for this machine's load)
            steady = (args.images - 1) / (total - startup) if total > startup else None
            rows.append(
                {"case": name, "seconds": total, "startup_s": startup, "img_s": args.images / total, "steady": steady}
            )
            print(f"  {name}: {total:.1f} s ({startup:.1f} s for one image)", flush=True)

    base = rows[0]
    print()
    print(
        f"{args.images} images {width}×{height}, {args.config} config, CPU, {args.threads} torch thread(s) each; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}"
    )
    print("| case | wall s | one image s | img/s | ÷ segment | steady img/s | ÷ segment |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['seconds']:.1f} | {r['startup_s']:.1f} | {r['img_s']:.2f} | "
            f"{r['img_s'] / base['img_s']:.2f}× | {_num(r['steady'])} | {_ratio(r['steady'], base['steady'])} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _ratio(v: float | None, base: float | None) -> str:
    return "n/a" if v is None or base is None else f"{v / base:.2f}×"


if __name__ == "__main__":
    main()
