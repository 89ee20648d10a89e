#!/usr/bin/env python
"""Video tracking: frames/s and peak RSS as a clip gets longer, s3seg vs transformers' documented loop.

Both run the same random-weight checkpoint (``s3seg.testing``, tiny or small) on the same clip (a crop window
panning and zooming over examples/grace_hopper.jpg, encoded as H.264 with PyAV), with the same thresholds
(0: random weights find nothing at the defaults, and tracks are what grows memory) and the same cap of 16
objects:

* ``s3seg``: ``s3seg.video.open_video`` — lazy PyAV decoding, one frame at a time, session trimmed to the
  tracker's window, reference detector, hotstart buffer of 15 frames;
* ``transformers``: the streaming loop of the Sam3Video model card — ``processor.init_video_session``,
  ``add_text_prompt``, then per frame ``processor(images=frame)``, ``model(inference_session=…, frame=…)``,
  ``processor.postprocess_outputs``; frames decoded with PyAV as well.

Every (path, length) runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own. The script prints
frames/s, peak RSS, the resident memory just before the first frame and after the last one (the peak of a tiny
model can be set by loading it; the growth while tracking shows in the second pair), and the ratio peak
RSS(long)/peak RSS(short) per path (s3seg's target: ≤ 1.10).

    python benchmarks/bench_video.py                        # tiny, 100 and 1000 frames
    python benchmarks/bench_video.py --config small --frames 100,300 --json bench-video.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def run_one(path: str, model_dir: str, clip: str, frames: int, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from s3seg import _videoio

    t0 = time.perf_counter()
    n = 0
    if path == "s3seg":
        from s3seg.config import load_settings
        from s3seg.engine._video import Sam3VideoEngine
        from s3seg.video import open_video

        engine = Sam3VideoEngine.load(model_dir, device="cpu")
        before = _rss_mib()
        t0 = time.perf_counter()
        video = open_video(clip, ["person"], engine, load_settings(threshold=0.0), end=f"{frames}f", max_objects=16)
        for _ in video:
            n += 1
    else:
        from transformers import Sam3ImageProcessor, Sam3VideoModel, Sam3VideoProcessor
        from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

        from s3seg.engine._tokenizer import build_clip_tokenizer

        model = Sam3VideoModel.from_pretrained(model_dir).eval()
        size = model.config.image_size
        processor = Sam3VideoProcessor(
            image_processor=Sam3ImageProcessor(size={"height": size, "width": size}),
            video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
            tokenizer=build_clip_tokenizer(),
        )
        model.score_threshold_detection = 0.0
        model.new_det_thresh = 0.7
        model.max_num_objects = 16
        before = _rss_mib()
        t0 = time.perf_counter()
        session = processor.init_video_session(inference_device="cpu", dtype=torch.float32)
        processor.add_text_prompt(session, "person")
        _, decoded = _videoio.read(Path(clip), max_pixels=10**9, max_seconds=10**6, end=_videoio.Position(frames, True))
        with torch.inference_mode():
            for frame in decoded:
                inputs = processor(images=frame.array, device="cpu", return_tensors="pt")
                out = model(inference_session=session, frame=inputs.pixel_values[0])
                processor.postprocess_outputs(session, out, original_sizes=inputs.original_sizes)
                n += 1
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "path": path,
        "frames": n,
        "seconds": seconds,
        "fps": n / seconds,
        "peak_rss_mib": peak_kib / 1024,
        "rss_before_mib": before,
        "rss_after_mib": _rss_mib(),
    }


def _rss_mib() -> float:
    """The process's resident memory now (Linux), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--frames", default="100,1000", help="clip lengths to compare (first = baseline)")
    parser.add_argument("--paths", default="s3seg,transformers")
    parser.add_argument("--size", default="160x120", help="clip frame size WxH")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=4, metavar=("PATH", "MODEL", "CLIP", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, model_dir, clip, frames = args.one
        print(json.dumps(run_one(path, model_dir, clip, int(frames), args.threads)))
        return

    from _video import make_clip
    from s3seg.testing import write_random_checkpoint

    lengths = [int(x) for x in args.frames.split(",")]
    width, height = (int(v) for v in args.size.split("x"))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "model", args.config)
        clip = make_clip(Path(tmp) / "clip.mp4", n=max(lengths), width=width, height=height, fps=25)
        print(f"config {args.config}, clip {width}x{height}, threads {args.threads}, {os.cpu_count()} CPUs")
        for path in args.paths.split(","):
            for length in lengths:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--one",
                        path,
                        str(model_dir),
                        str(clip),
                        str(length),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{path} at {length} frames failed")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(
                    f"{path:>12} {row['frames']:>6} frames  {row['fps']:7.2f} frames/s  "
                    f"peak RSS {row['peak_rss_mib']:8.1f} MiB  RSS before/after the clip "
                    f"{row['rss_before_mib']:7.1f} / {row['rss_after_mib']:7.1f} MiB",
                    flush=True,
                )
    print("summary: peak RSS growth from the shortest to the longest clip (target for s3seg ≤ 1.10)")
    for path in args.paths.split(","):
        mine = [r for r in rows if r["path"] == path]
        first, last = mine[0], mine[-1]
        print(
            f"{path:>12}: ×{last['peak_rss_mib'] / first['peak_rss_mib']:.3f} "
            f"({first['frames']} → {last['frames']} frames), frames/s {first['fps']:.2f} → {last['fps']:.2f}"
        )
    if len(args.paths.split(",")) == 2:
        a, b = ([r for r in rows if r["path"] == p][-1] for p in args.paths.split(","))
        print(f"s3seg / transformers frames/s at {a['frames']} frames: {a['fps'] / b['fps']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
