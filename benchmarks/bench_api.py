#!/usr/bin/env python
"""What the public API's task path costs on top of inference: one run, one machine, one engine.

For the same encoded image and prompts, one request at a time, alternating so that load from elsewhere
hits every path alike:

* ``direct``: ``engine.segment`` + COCO in this process (the baseline);
* ``predict``: ``POST /api/v1/predict`` on a real uvicorn server (the inference route);
* ``task``: what an app does on the public API: ``POST /api/v1/upload`` → ``POST /api/v1/segment`` →
  ``GET /api/v1/tasks/{id}?wait=60`` (long-poll) → ``GET …/files/result`` (the COCO JSON). The server stores
  the upload, the task row, the source/mask/overlay/COCO files, in the local store and folder (SQLite, files):
  the local-mode server of docs/api.md. (PostgreSQL and R2 add their own round trips on top.)

Every figure is also a ratio to ``direct``. The task's COCO answer must match the direct result (instance
count, scores within 1e-5) or the script exits with status 1.

    python benchmarks/bench_api.py                          # tiny config on CPU, full on CUDA
    python benchmarks/bench_api.py --config small --requests 10 --json bench-api.json
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import torch
from bench_engine import PROMPTS, Run, model_args
from bench_server import (
    MASK_THRESHOLD,
    SCORE_TOLERANCE,
    Ask,
    Direct,
    Upload,
    machine_lines,
    make_upload,
    new_client,
    scores_of,
    serving,
)
from pydantic import SecretStr

from s3seg.config import Settings
from s3seg.engine import Sam3Engine, SegmentOptions
from s3seg.testing import write_random_checkpoint

STEPS = ("upload", "segment", "wait", "result")


def task_path(
    client: httpx.Client, upload: Upload, prompts: tuple[str, ...], threshold: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """One image through the public API; milliseconds per step, and the COCO document."""
    ms: dict[str, float] = {}

    def step(name: str, method: str, path: str, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        response = client.request(method, path, **kwargs)
        ms[name] = (time.perf_counter() - t0) * 1000
        if response.status_code >= 300:
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        return response.json()["data"] if name != "result" else response.json()

    image = step("upload", "POST", "/api/v1/upload", files={"file": (upload.name, upload.data, upload.mime)})
    task = step(
        "segment",
        "POST",
        "/api/v1/segment",
        json={"image_id": image["image_id"], "text_prompts": list(prompts), "threshold": threshold},
    )
    done = step("wait", "GET", f"/api/v1/tasks/{task['task_id']}", params={"wait": 60})
    if done["status"] != "done":
        raise RuntimeError(f"task ended {done['status']}: {done.get('error')}")
    doc = step("result", "GET", f"/api/v1/results/{task['task_id']}/files/result")
    return ms, doc


def line(name: str, times: Sequence[float], base: float) -> str:
    median = statistics.median(times)
    p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
    return f"{name:<34} {median:9.1f} {p95:9.1f} {median / base:8.2f}×"


def main(argv: Sequence[str] | None = None) -> int:
    ap = model_args(__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=20, help="timed requests per path (default 20)")
    ap.add_argument("--image", default="640x480", help="synthetic photo-like image WxH (default 640x480)")
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    ap.add_argument("--image-file", type=Path, help="send this image file instead of a synthetic one")
    ap.add_argument("--prompts", type=int, default=1, help=f"text prompts per request, 1..{len(PROMPTS)}")
    ap.add_argument("--json", type=Path, help="save every raw number here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from s3seg.engine._load import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    run = Run()
    for text in machine_lines(device, dtype, args.config):
        run.say(text)
    prompts = PROMPTS[: args.prompts]
    upload = make_upload(args)
    key = secrets.token_urlsafe(16)
    times: dict[str, list[float]] = {"direct": [], "predict": [], "task": [], **{s: [] for s in STEPS}}
    with tempfile.TemporaryDirectory(prefix="s3seg-bench-api-") as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "model", args.config, seed=args.seed)
        engine = Sam3Engine.load(str(model_dir), device=str(device), dtype=str(dtype).removeprefix("torch."))
        settings = Settings(  # explicit values: nothing from the environment changes the run
            api_key=SecretStr(key),
            threshold=args.threshold,
            mask_threshold=MASK_THRESHOLD,
            max_prompts=len(PROMPTS),
            data_dir=Path(tmp) / "data",
            max_instances=None,
            nms_iou=None,
            rate_limits={"enterprise": 10**9},
            max_upload_mb=max(10.0, 2 * len(upload.data) / 2**20),
        )
        direct = Direct(
            engine, upload, prompts, SegmentOptions(threshold=args.threshold, mask_threshold=MASK_THRESHOLD)
        )
        want = scores_of(direct.call()[1])
        ask = Ask(upload, prompts, args.threshold)
        stopped: list[bool] = []
        run.say(
            f"request: {upload.description}; prompts {list(prompts)}; threshold {args.threshold:g}; "
            f"{args.requests} timed requests per path after one warm-up; local-mode server (SQLite, files)"
        )
        with serving(engine, settings, stopped) as server, new_client(server.url, key) as client:
            ask.post(client)
            _, doc = task_path(client, upload, prompts, args.threshold)  # warm-up, and the answer checked
            got = scores_of(doc)
            if len(got) != len(want) or any(abs(a - b) > SCORE_TOLERANCE for a, b in zip(got, want, strict=True)):
                run.say(f"VALIDATION FAILED: task path found {len(got)} instances, direct {len(want)}")
                return 1
            run.say(f"validation: task path = direct ({len(want)} instances, scores within {SCORE_TOLERANCE:g})")
            for _ in range(args.requests):
                ms, _doc = direct.timed()
                times["direct"].append(ms)
                t0 = time.perf_counter()
                ask.post(client)
                times["predict"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                steps, _doc = task_path(client, upload, prompts, args.threshold)
                times["task"].append((time.perf_counter() - t0) * 1000)
                for name, value in steps.items():
                    times[name].append(value)
    base = statistics.median(times["direct"])
    run.say()
    run.say(f"{'path (ms per image)':<34} {'median':>9} {'p95':>9} {'÷ direct':>9}")
    run.say(line("direct (in-process)", times["direct"], base))
    run.say(line("POST /predict", times["predict"], base))
    run.say(line("task: upload→segment→wait→result", times["task"], base))
    for name in STEPS:
        run.say(line(f"  {name}", times[name], base))
    extra = statistics.median(times["task"]) - base
    run.say(
        f"summary: the task path adds {extra:.1f} ms per image over direct inference "
        f"({statistics.median(times['task']) / base:.2f}× direct); servers stopped cleanly: "
        f"{sum(stopped)}/{len(stopped)}"
    )
    if args.json:
        args.json.write_text(json.dumps({"lines": run.lines, "times_ms": times}, indent=1))
    return 0 if all(stopped) else 1


if __name__ == "__main__":
    sys.exit(main())
