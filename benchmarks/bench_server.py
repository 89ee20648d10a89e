#!/usr/bin/env python
"""Time s3seg's inference server against calling the engine in-process.

One run, one machine, one random-weight checkpoint, one engine object, the same image and prompts:

* ``direct``: ``engine.segment([image], prompts)`` then ``result.to_coco()``, one request at a time, in this
  process (the baseline: what a server request costs without HTTP);
* ``server C=1``: a real uvicorn server on 127.0.0.1 running ``create_app(engine, Settings(...))`` for that
  same engine, called over HTTP by one client (``httpx``, multipart: the encoded image file and ``prompts``
  fields; the client parses the JSON answer). Direct and server requests alternate one by one, so load from
  elsewhere on the machine hits both alike;
* ``server C=4, 8, …``: the same with C concurrent clients (threads, each its own ``httpx.Client``); the
  server's batcher puts requests that arrive while the device is busy into one backbone batch.

Every setting gets ``--requests`` timed requests. Each server setting runs on a fresh server (same engine),
so the batching counters that ``GET /health`` reports (``data.queue``) belong to that setting alone.
The server's first answer must equal the in-process result (instance count, scores within 1e-5); the
script exits with status 1 when it does not, or when the server does not stop cleanly.

    python benchmarks/bench_server.py                            # tiny config on CPU, full on CUDA
    python benchmarks/bench_server.py --config small --requests 20 --concurrency 1,4
    python benchmarks/bench_server.py --config full --device cuda --json bench-server.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import secrets
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx
import numpy as np
import torch
import uvicorn
from bench_engine import PROMPTS, Run, load_average, model_args, parse_size, synthetic_image
from pydantic import SecretStr

from s3seg.config import Settings
from s3seg.engine import Sam3Engine, SegmentOptions
from s3seg.images import load_image
from s3seg.server import API_KEY_HEADER, create_app
from s3seg.testing import random_config, write_random_checkpoint
from s3seg.types import SegmentationResult, from_coco

SCORE_TOLERANCE = 1e-5
MASK_THRESHOLD = 0.5
PREDICT = "/api/v1/predict"


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class Upload:
    """The encoded image a client sends, and the decoded pixels the engine sees (the same for both paths)."""

    name: str
    data: bytes
    mime: str
    array: np.ndarray[Any, np.dtype[np.uint8]]

    @property
    def description(self) -> str:
        height, width = self.array.shape[:2]
        kind = self.mime.removeprefix("image/").upper()
        return f"{self.name}: {width}x{height} {kind}, {len(self.data) / 1024:.1f} KiB"


def make_upload(args: argparse.Namespace) -> Upload:
    from PIL import Image as PILImage

    if args.image_file:
        data = Path(args.image_file).read_bytes()
        with PILImage.open(io.BytesIO(data)) as im:
            mime = PILImage.MIME.get(im.format or "", "application/octet-stream")
        name = Path(args.image_file).name
    else:
        width, height = parse_size(args.image)
        buf = io.BytesIO()
        fmt = "JPEG" if args.format == "jpeg" else "PNG"
        PILImage.fromarray(synthetic_image(width, height, seed=width + height)).save(
            buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {})
        )
        data, mime, name = buf.getvalue(), f"image/{args.format}", f"synthetic.{'jpg' if fmt == 'JPEG' else 'png'}"
    # What the server does with the bytes: the direct path segments exactly these pixels.
    return Upload(name, data, mime, load_image(data, name=name).array)


# ------------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    """``create_app(engine, settings)`` under uvicorn on 127.0.0.1, in a thread of this process."""

    def __init__(self, engine: Sam3Engine, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(engine, settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=30,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit(f"SERVER FAILED TO START on {self.url}")
            time.sleep(0.01)

    def stop(self) -> bool:
        """Ask uvicorn to exit (it finishes in-flight requests and the batcher); True once it has."""
        self.server.should_exit = True
        self.thread.join(timeout=60)
        return not self.thread.is_alive()

    def queue_stats(self) -> dict[str, int]:
        body = httpx.get(self.url + "/health", timeout=30).json()
        stats: dict[str, int] = body["data"]["queue"]
        return stats


@contextmanager
def serving(engine: Sam3Engine, settings: Settings, stopped: list[bool]) -> Iterator[LiveServer]:
    server = LiveServer(engine, settings)
    server.start()
    try:
        yield server
    finally:
        stopped.append(server.stop())


# ----------------------------------------------------------------------------------------------- clients
@dataclass(frozen=True)
class Ask:
    """One request's fields: what every client sends."""

    upload: Upload
    prompts: tuple[str, ...]
    threshold: float

    def post(self, client: httpx.Client) -> dict[str, Any]:
        response = client.post(
            PREDICT,
            files={"image": (self.upload.name, self.upload.data, self.upload.mime)},
            data={"prompts": list(self.prompts), "threshold": repr(self.threshold)},
        )
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or not body.get("ok"):
            raise RuntimeError(f"server answered {response.status_code}: {str(body)[:300]}")
        doc: dict[str, Any] = body["data"]
        return doc


def new_client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={API_KEY_HEADER: key}, timeout=600)


def scores_of(doc: dict[str, Any]) -> list[float]:
    return [float(a["score"]) for a in doc["annotations"]]


@dataclass
class ClientRun:
    times_ms: list[float]
    wall_s: float
    scores: list[list[float]]


def concurrent_clients(url: str, key: str, ask: Ask, requests: int, clients: int) -> ClientRun:
    """``clients`` threads, each with its own connection, share ``requests`` requests; all start together."""
    lock = threading.Lock()
    remaining = [requests]
    times: list[float] = []
    scores: list[list[float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def worker() -> None:
        with new_client(url, key) as client:
            client.get("/health")  # connect before the clock starts
            start.wait()
            while True:
                with lock:
                    if remaining[0] == 0 or errors:
                        return
                    remaining[0] -= 1
                t0 = time.perf_counter()
                try:
                    doc = ask.post(client)
                except BaseException as e:  # reported after the run
                    with lock:
                        errors.append(e)
                    return
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    times.append(ms)
                    scores.append(scores_of(doc))

    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client request(s) failed; first: {errors[0]}") from errors[0]
    return ClientRun(times, wall, scores)


# ----------------------------------------------------------------------------------------- measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Direct:
    """The in-process baseline: exactly what a request asks for, without HTTP."""

    engine: Sam3Engine
    upload: Upload
    prompts: tuple[str, ...]
    options: SegmentOptions

    def call(self) -> tuple[SegmentationResult, dict[str, Any]]:
        [result] = self.engine.segment(
            [self.upload.array], self.prompts, names=[self.upload.name], options=self.options
        )
        return result, result.to_coco()

    def timed(self) -> tuple[float, dict[str, Any]]:
        _sync(self.engine.device)
        t0 = time.perf_counter()
        _, doc = self.call()
        _sync(self.engine.device)
        return (time.perf_counter() - t0) * 1000, doc


@dataclass
class Row:
    name: str
    clients: int
    times_ms: list[float]
    wall_s: float  # from the first request's start to the last answer
    cpu_ms: float = 0.0  # this process's CPU time (every thread: server, clients, engine) over the requests
    queue: dict[str, int] | None = None  # /health data.queue counted over the timed requests
    max_score_diff: float = 0.0  # over every timed answer, against the direct result

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.times_ms, 95))

    @property
    def rps(self) -> float:
        return len(self.times_ms) / self.wall_s

    @property
    def cpu_per_request_ms(self) -> float:
        return self.cpu_ms / len(self.times_ms)

    @property
    def mean_batch(self) -> float | None:
        if not self.queue or not self.queue["batches"]:
            return None
        return self.queue["images"] / self.queue["batches"]


@dataclass
class Validation:
    direct_instances: int
    server_instances: int
    max_score_diff: float
    max_box_diff: float
    mask_agreement: float

    @property
    def ok(self) -> bool:
        return self.direct_instances == self.server_instances and self.max_score_diff <= SCORE_TOLERANCE

    def line(self) -> str:
        return (
            f"{self.server_instances} vs {self.direct_instances} instances, max |Δscore| "
            f"{self.max_score_diff:.2e} (tolerance {SCORE_TOLERANCE:g}), max |Δbox| {self.max_box_diff:.2e} px, "
            f"mask pixel agreement {100 * self.mask_agreement:.3f}%"
        )


def validate(want: SegmentationResult, doc: dict[str, Any]) -> Validation:
    [got] = from_coco(doc)
    n = min(len(got.instances), len(want.instances))
    score = float(np.max(np.abs(got.scores[:n] - want.scores[:n]))) if n else 0.0
    box = float(np.max(np.abs(got.boxes[:n] - want.boxes[:n]))) if n else 0.0
    masks = float((got.masks[:n] == want.masks[:n]).mean()) if n else 1.0
    return Validation(len(want.instances), len(got.instances), score, box, masks)


def max_diff(runs: Sequence[Sequence[float]], want: Sequence[float]) -> float:
    """Largest |Δscore| of any answer against the direct scores (inf when an instance count differs)."""
    worst = 0.0
    for got in runs:
        if len(got) != len(want):
            return float("inf")
        if got:
            worst = max(worst, float(np.max(np.abs(np.asarray(got) - np.asarray(want)))))
    return worst


def stats_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        "batches": after["batches"] - before["batches"],
        "images": after["images"] - before["images"],
        "largest_batch": after["largest_batch"],
    }


@dataclass
class Breakdown:
    """In-process costs of the steps a server request adds, for one request (medians of a few calls)."""

    decode_ms: float
    response_kib: float
    dumps_ms: float
    loads_ms: float


def breakdown(upload: Upload, doc: dict[str, Any], repeats: int = 5) -> Breakdown:
    def median_ms(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    body = json.dumps({"ok": True, "data": doc}, separators=(",", ":"))
    return Breakdown(
        decode_ms=median_ms(lambda: load_image(upload.data, name=upload.name)),
        response_kib=len(body.encode()) / 1024,
        dumps_ms=median_ms(lambda: json.dumps({"ok": True, "data": doc}, separators=(",", ":"))),
        loads_ms=median_ms(lambda: json.loads(body)),
    )


# --------------------------------------------------------------------------------------------- report
def http_stack() -> str:
    import fastapi
    import starlette

    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return (
        f"uvicorn {uvicorn.__version__} ({loop}, {http}), fastapi {fastapi.__version__}, "
        f"starlette {starlette.__version__}, httpx {httpx.__version__}"
    )


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def machine_lines(device: torch.device, dtype: torch.dtype, config: str) -> list[str]:
    import transformers

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return [
        f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}",
        f"date:    {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"machine: {cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {platform.platform()}",
        f"device:  {device} ({name}), dtype {str(dtype).removeprefix('torch.')}, config {config}",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}",
        f"server:  {http_stack()}",
        f"load:    {load_average()} (1/5/15-minute load average at start; other work on the machine skews timings)",
    ]


def _cell(value: float, base: float, fmt: str) -> str:
    text = format(value, fmt)
    return text if base <= 0 else f"{text} ({value / base:.2f}×)"


def table(rows: Sequence[Row]) -> list[str]:
    base = rows[0]
    header = [
        "path",
        "clients",
        "n",
        "req/s",
        "p50 ms",
        "p95 ms",
        "CPU ms/req",
        "batches",
        "images",
        "mean batch",
        "largest batch",
        "max abs Δscore",
    ]
    out = [header]
    for r in rows:
        q = r.queue
        out.append(
            [
                r.name,
                str(r.clients),
                str(len(r.times_ms)),
                _cell(r.rps, 0 if r is base else base.rps, ".2f"),
                _cell(r.p50_ms, 0 if r is base else base.p50_ms, ".1f"),
                _cell(r.p95_ms, 0 if r is base else base.p95_ms, ".1f"),
                _cell(r.cpu_per_request_ms, 0 if r is base else base.cpu_per_request_ms, ".1f"),
                str(q["batches"]) if q else "–",
                str(q["images"]) if q else "–",
                f"{r.mean_batch:.2f}" if r.mean_batch is not None else "–",
                str(q["largest_batch"]) if q else "–",
                "–" if r is base else f"{r.max_score_diff:.1e}",
            ]
        )
    widths = [max(len(row[k]) for row in out) for k in range(len(header))]
    lines = [
        "| "
        + " | ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths, strict=True)))
        + " |"
        for row in out
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = model_args(__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=40, help="timed requests per setting (default 40)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests per path and server first (default 3)")
    ap.add_argument(
        "--concurrency",
        default="1,4,8",
        help="numbers of concurrent clients, comma-separated (1, sequential, is always run)",
    )
    ap.add_argument("--image", default="640x480", help="synthetic photo-like image WxH (default 640x480)")
    ap.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="encoding of the synthetic image")
    ap.add_argument("--image-file", type=Path, help="send this image file instead of a synthetic one")
    ap.add_argument("--prompts", type=int, default=1, help=f"text prompts per request, 1..{len(PROMPTS)} (default 1)")
    ap.add_argument("--max-batch", type=int, default=8, help="most images per backbone batch (server and engine)")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0, help="server: wait this long for a batch to fill")
    ap.add_argument("--json", type=Path, help="save every raw number here")
    args = ap.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts: 1..{len(PROMPTS)}")
    if args.requests < 1 or args.warmup < 1:
        ap.error("--requests and --warmup must be at least 1 (the first warm-up answer is the one validated)")
    try:
        levels = sorted({1, *(int(c) for c in args.concurrency.split(",") if c.strip())})
    except ValueError:
        ap.error(f"--concurrency: comma-separated integers, got {args.concurrency!r}")
    if levels[0] < 1:
        ap.error("--concurrency: at least 1 client")
    args.levels = levels
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from s3seg.engine._load import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    run = Run()
    for line in machine_lines(device, dtype, args.config):
        run.say(line)
    started = time.perf_counter()
    prompts = PROMPTS[: args.prompts]
    upload = make_upload(args)
    key = secrets.token_urlsafe(16)
    settings = Settings(  # explicit values: nothing from the environment or a .env file changes the run
        api_key=SecretStr(key),
        threshold=args.threshold,
        mask_threshold=MASK_THRESHOLD,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=max(64, 2 * max(args.levels)),
        max_prompts=len(PROMPTS),
        max_body_mb=max(20.0, 2 * len(upload.data) / 2**20),
        max_instances=None,
        nms_iou=None,
    )
    ask = Ask(upload, prompts, args.threshold)
    stopped: list[bool] = []

    with tempfile.TemporaryDirectory(prefix="s3seg-bench-") as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "model", args.config, seed=args.seed)
        config = random_config(args.config)
        engine = Sam3Engine.load(
            str(model_dir), device=str(device), dtype=str(dtype).removeprefix("torch."), max_batch=args.max_batch
        )
    run.say(
        f"model:   {args.config} config, image size {config.image_size}, "
        f"{config.detr_decoder_config.num_queries} queries, "  # type: ignore[union-attr]
        f"{engine.info.parameters / 1e6:.1f} M parameters, random weights (seed {args.seed})"
    )
    run.say(
        f"request: {upload.description}; prompts {list(prompts)}; threshold {args.threshold:g}, "
        f"mask threshold {MASK_THRESHOLD:g}; multipart POST {PREDICT}, COCO RLE answer"
    )
    run.say(
        f"batching: max_batch {args.max_batch}, batch_wait_ms {args.batch_wait_ms:g}; "
        f"{args.requests} timed requests per setting after {args.warmup} warm-up request(s)"
    )
    run.say()

    direct = Direct(engine, upload, prompts, SegmentOptions(threshold=args.threshold, mask_threshold=MASK_THRESHOLD))
    want, want_doc = direct.call()
    for _ in range(args.warmup - 1):
        direct.call()
    want_scores = scores_of(want_doc)
    rows: list[Row] = []
    validation: Validation | None = None
    try:
        # Sequential: direct and server requests alternate, one at a time.
        with serving(engine, settings, stopped) as server, new_client(server.url, key) as client:
            validation = validate(want, ask.post(client))
            run.say(f"validation (first server answer vs direct): {validation.line()}")
            if not validation.ok:
                run.say("VALIDATION FAILED: the server's answer differs from the in-process result")
                return 1
            for _ in range(args.warmup - 1):
                ask.post(client)
            before = server.queue_stats()
            direct_ms: list[float] = []
            server_ms: list[float] = []
            direct_cpu = server_cpu = 0.0
            server_scores: list[list[float]] = []
            for _ in range(args.requests):
                c0 = time.process_time()
                ms, _doc = direct.timed()
                c1 = time.process_time()
                direct_ms.append(ms)
                t0 = time.perf_counter()
                doc = ask.post(client)
                server_ms.append((time.perf_counter() - t0) * 1000)
                direct_cpu, server_cpu = direct_cpu + (c1 - c0) * 1000, server_cpu + (time.process_time() - c1) * 1000
                server_scores.append(scores_of(doc))
            sequential = Row(
                "server",
                1,
                server_ms,
                sum(server_ms) / 1000,
                server_cpu,
                stats_delta(server.queue_stats(), before),
                max_diff(server_scores, want_scores),
            )
            rows += [Row("direct (in-process)", 1, direct_ms, sum(direct_ms) / 1000, direct_cpu), sequential]

        for clients in args.levels[1:]:
            with serving(engine, settings, stopped) as server, new_client(server.url, key) as client:
                for _ in range(args.warmup):
                    ask.post(client)
                before = server.queue_stats()
                c0 = time.process_time()
                got = concurrent_clients(server.url, key, ask, args.requests, clients)
                cpu = (time.process_time() - c0) * 1000
                rows.append(
                    Row(
                        "server",
                        clients,
                        got.times_ms,
                        got.wall_s,
                        cpu,
                        stats_delta(server.queue_stats(), before),
                        max_diff(got.scores, want_scores),
                    )
                )
    finally:
        if stopped and not all(stopped):
            run.say("SERVER DID NOT STOP within 60 s of should_exit")
    if not all(stopped):
        return 1

    run.say()
    for line in table(rows):
        run.say(line)
    base, seq = rows[0], rows[1]
    overhead = seq.p50_ms - base.p50_ms
    run.say()
    run.say(
        "(r×) = that figure / direct's: latency above 1 is slower, req/s below 1 is less throughput. "
        "CPU ms/req: this process's CPU time (all threads: engine, server, clients) per request. "
        "batches/images/largest batch: GET /health data.queue over the timed requests."
    )
    paired = statistics.median(s - d for s, d in zip(seq.times_ms, base.times_ms, strict=True))
    cpu = seq.cpu_per_request_ms - base.cpu_per_request_ms
    run.say(
        f"HTTP overhead (sequential, p50): {overhead:+.1f} ms = {100 * overhead / base.p50_ms:+.1f}% of direct "
        f"engine time ({base.p50_ms:.1f} ms: segment + to_coco)"
    )
    run.say(
        f"  median of the paired differences (server − direct, alternating requests): {paired:+.1f} ms "
        f"= {100 * paired / base.p50_ms:+.1f}%; CPU time: {cpu:+.1f} ms/request = "
        f"{100 * cpu / base.cpu_per_request_ms:+.1f}%"
    )
    cost = breakdown(upload, want_doc)
    run.say(
        f"  in-process cost of steps a request adds: decode the upload {cost.decode_ms:.1f} ms, "
        f"response {cost.response_kib:.0f} KiB: json.dumps {cost.dumps_ms:.1f} ms, "
        f"json.loads {cost.loads_ms:.1f} ms"
    )
    for r in rows[2:]:
        verdict = "beats" if r.rps > seq.rps else "does not beat"
        run.say(
            f"C={r.clients}: {r.rps:.2f} req/s = {r.rps / seq.rps:.2f}× server sequential "
            f"({seq.rps:.2f}), {r.rps / base.rps:.2f}× direct ({base.rps:.2f}); "
            f"mean batch {r.mean_batch or 0:.2f}, largest {r.queue['largest_batch'] if r.queue else 0}: "
            f"concurrent {verdict} sequential"
        )
    worst = max(r.max_score_diff for r in rows[1:])
    run.say(
        f"every timed answer vs direct: max |Δscore| {worst:.1e}"
        + ("" if worst <= SCORE_TOLERANCE else " (above 1e-5: batched backbone passes round differently)")
    )
    run.say(f"servers stopped cleanly: {len(stopped)}/{len(stopped)}")
    run.say(f"total wall time {time.perf_counter() - started:.0f} s; load average at end {load_average()}")
    if args.json:
        summary = {
            "overhead_p50_ms": overhead,
            "overhead_p50_pct": 100 * overhead / base.p50_ms,
            "overhead_paired_median_ms": paired,
            "overhead_cpu_ms_per_request": cpu,
        }
        save_json(args, run, rows, validation, cost, summary)
        run.say(f"raw numbers: {args.json}")
    return 0


def save_json(
    args: argparse.Namespace,
    run: Run,
    rows: Sequence[Row],
    validation: Validation | None,
    cost: Breakdown,
    summary: dict[str, float],
) -> None:
    doc = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "header": run.lines[:7],
        "validation": asdict(validation) if validation else None,
        "summary": summary,
        "breakdown": asdict(cost),
        "rows": [
            {
                "path": r.name,
                "clients": r.clients,
                "times_ms": r.times_ms,
                "wall_s": r.wall_s,
                "cpu_ms": r.cpu_ms,
                "requests_per_s": r.rps,
                "p50_ms": r.p50_ms,
                "p95_ms": r.p95_ms,
                "queue": r.queue,
                "mean_batch": r.mean_batch,
                "max_score_diff": r.max_score_diff,
            }
            for r in rows
        ],
    }
    args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    sys.exit(main())
