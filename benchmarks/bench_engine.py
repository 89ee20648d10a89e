#!/usr/bin/env python
"""Time s3seg's engine against plain transformers SAM3 (and Meta's ``sam3`` where it can run).

One run, one machine, the same random weights and the same images for every path:

* ``transformers``: ``Sam3Processor`` → ``Sam3Model`` → ``post_process_instance_segmentation``, as the
  transformers documentation shows, one call per prompt (a batch of images goes to the processor as a
  list, with the prompt repeated once per image);
* ``transformers+RLE``: the same, then every mask encoded as COCO RLE with pycocotools;
* ``s3seg``: ``Sam3Engine.segment(images, prompts)`` and ``result.to_coco()`` for every result;
* ``meta-sam3`` / ``meta-sam3+RLE``: Meta's ``sam3`` ``Sam3Processor`` (``set_image`` once per image, then
  ``set_text_prompt`` per prompt); only with ``--config full`` on CUDA with ``sam3`` installed.

``--model-only`` times the model instead of the paths: s3seg with batched heads (the default) against
s3seg with ``batch_heads=False`` (every image–prompt pair through the heads alone), at a score threshold
of 1.0 that no query of the random weights reaches, so post-processing is one host read of the scores and
nothing else; it reports each prompt count's time relative to one prompt, and batched vs per-pair.

Before timing, a parity check runs s3seg with every reference-parity fix turned off
(``Fidelity(geometry_cls=False, vit_layernorm_eps=None, upsample_logits_first=False, …)``); in that mode it must
compute what transformers computes, and the script exits with status 1 when it does not.

    python benchmarks/bench_engine.py                       # tiny config on CPU, full on CUDA
    python benchmarks/bench_engine.py --config small --cases 1x1,4x1,16x1 --sizes 640x480
    python benchmarks/bench_engine.py --config full --device cuda --json bench.json
    python benchmarks/bench_engine.py --model-only --threads 1 --config tiny   # batched vs per-pair heads
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import numpy.typing as npt
import torch

from s3seg.testing import random_config, write_random_checkpoint

PROMPTS = (
    "cat",
    "dog",
    "person",
    "red car",
    "bicycle",
    "tree",
    "traffic light",
    "chair",
    "bottle",
    "a striped umbrella",
    "bird",
    "laptop",
    "window",
    "shoe",
    "clock",
    "boat",
)
DEFAULT_CASES = ("1x1", "4x1", "16x1", "1x8", "4x8", "16x8")
MODEL_ONLY_CASES = ("1x1@640x480", "4x1@640x480", "16x1@640x480")
MODEL_ONLY_THRESHOLD = 1.0  # above every score (scores are products of sigmoids): no instance survives
BATCHED, PER_PAIR = "batched heads", "per-pair heads"
DEFAULT_SIZES = ("640x480", "1920x1080")
MASK_THRESHOLD = 0.5
S3SEG = "s3seg"
COUNT_TOLERANCE = 0.05  # per image–prompt instance counts may differ by 5 % (at least 1) between paths

Image = npt.NDArray[np.uint8]
Counts = list[list[int]]  # [image][prompt]


# ------------------------------------------------------------------------------------------------ configs
# The same random-weight checkpoints the tests and `python -m s3seg.testing` write.
CONFIGS = ("tiny", "small", "full")


# ------------------------------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    prompts: int
    images: int
    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.prompts}x{self.images}@{self.width}x{self.height}"

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def parse_cases(cases: str, sizes: str) -> list[Case]:
    """``PxB`` entries (prompts × images), each at every size of ``sizes``; ``PxB@WxH`` pins one size."""
    all_sizes = [parse_size(s) for s in sizes.split(",") if s.strip()]
    out: list[Case] = []
    for spec in (c.strip() for c in cases.split(",") if c.strip()):
        counts, _, pinned = spec.partition("@")
        prompts, images = (int(v) for v in counts.lower().split("x"))
        if not 1 <= prompts <= len(PROMPTS) or images < 1:
            raise SystemExit(f"--cases: need 1..{len(PROMPTS)} prompts and at least 1 image, got {spec!r}")
        out += [Case(prompts, images, *size) for size in ([parse_size(pinned)] if pinned else all_sizes)]
    return sorted(out, key=lambda c: (c.width * c.height, c.images, c.prompts))


def synthetic_image(width: int, height: int, seed: int) -> Image:
    """A smooth, photo-like RGB image: upsampled colour blobs, a few rectangles, a little noise."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(height // 64, 2), max(width // 64, 2), 3), dtype=np.uint8)
    array = np.asarray(PILImage.fromarray(base).resize((width, height), PILImage.Resampling.BICUBIC)).copy()
    for _ in range(6):
        x0, y0 = rng.integers(0, width - width // 8), rng.integers(0, height - height // 8)
        w, h = rng.integers(width // 16, width // 4), rng.integers(height // 16, height // 4)
        array[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    noise = rng.integers(-8, 9, array.shape, dtype=np.int16)
    out: Image = np.clip(array.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


class ImageBank:
    """The same deterministic images for every path (image i of a size is always the same)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int], Image] = {}

    def get(self, width: int, height: int, count: int) -> list[Image]:
        out = []
        for i in range(count):
            key = (width, height, i)
            if key not in self._cache:
                self._cache[key] = synthetic_image(width, height, seed=1000 * i + width + height)
            out.append(self._cache[key])
        return out


# ------------------------------------------------------------------------------------------------ paths
@dataclass
class Probe:
    """Image 0 and one prompt, best score first: what the correctness lines compare."""

    scores: npt.NDArray[np.float64]
    masks: npt.NDArray[np.bool_]  # (N, H, W)


def encode_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(N, H, W) masks → JSON-ready COCO RLEs with areas, the way a pycocotools user would."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    array = masks.to(torch.uint8).cpu().numpy()
    rles = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0)))
    areas = mask_utils.area(rles)
    return [
        {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii"), "area": int(a)}
        for r, a in zip(rles, areas, strict=True)
    ]


def sorted_probe(scores: torch.Tensor, masks: torch.Tensor) -> Probe:
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    return Probe(scores=scores.float().cpu()[order].numpy().astype(np.float64), masks=masks.cpu()[order].bool().numpy())


class TransformersPath:
    """Plain transformers, as documented: one processor + model + post-process call per prompt."""

    def __init__(self, model_dir: Path, device: torch.device, dtype: torch.dtype, threshold: float) -> None:
        from transformers import Sam3Model, Sam3Processor

        self.model = Sam3Model.from_pretrained(model_dir, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
        self.processor = Sam3Processor.from_pretrained(model_dir)
        self.device, self.dtype, self.threshold = device, dtype, threshold

    def predict(self, images: Sequence[Image], prompt: str) -> list[dict[str, torch.Tensor]]:
        inputs = self.processor(images=list(images), text=[prompt] * len(images), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        return self.processor.post_process_instance_segmentation(  # type: ignore[no-untyped-call,no-any-return]
            outputs,
            threshold=self.threshold,
            mask_threshold=MASK_THRESHOLD,
            target_sizes=inputs["original_sizes"].tolist(),
        )

    def run(self, images: Sequence[Image], prompts: Sequence[str], *, encode: bool) -> Counts:
        counts: Counts = [[0] * len(prompts) for _ in images]
        for j, prompt in enumerate(prompts):
            for i, result in enumerate(self.predict(images, prompt)):
                counts[i][j] = len(result["scores"])
                if encode:
                    encode_rle(result["masks"])
        return counts

    def probe(self, image: Image, prompt: str) -> Probe:
        [result] = self.predict([image], prompt)
        return sorted_probe(result["scores"], result["masks"])


class S3segPath:
    """s3seg's engine: one call for all images and prompts, then COCO RLE for every result."""

    def __init__(self, engine: Any, threshold: float) -> None:
        from s3seg.engine import SegmentOptions

        self.engine = engine
        self.options = SegmentOptions(threshold=threshold, mask_threshold=MASK_THRESHOLD)
        self.stages: dict[str, float] = {}

    def run(self, images: Sequence[Image], prompts: Sequence[str]) -> Counts:
        results = self.engine.segment(images, prompts, options=self.options)
        t0 = time.perf_counter()
        for result in results:
            result.to_coco()
        self.stages = {  # the engine's own split of the last call, for the report
            "preprocess": sum(r.timings.preprocess_ms for r in results),
            "inference": sum(r.timings.inference_ms for r in results),
            "postprocess": sum(r.timings.postprocess_ms for r in results),
            "to_coco": (time.perf_counter() - t0) * 1000,
        }
        return [[len(r.for_prompt(p)) for p in prompts] for r in results]

    def probe(self, image: Image, prompt: str) -> Probe:
        [result] = self.engine.segment([image], [prompt], options=self.options)
        return Probe(scores=result.scores, masks=result.masks)


class MetaPath:
    """Meta's reference ``sam3.model.sam3_image_processor.Sam3Processor`` (CUDA only)."""

    def __init__(self, model: Any, image_size: int, threshold: float, dtype: torch.dtype) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor

        self.processor = Sam3Processor(model, resolution=image_size, device="cuda", confidence_threshold=threshold)
        self.dtype = dtype

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def _states(self, images: Sequence[Any], prompts: Sequence[str]) -> Iterator[tuple[int, int, dict[str, Any]]]:
        with self._autocast():
            for i, image in enumerate(images):
                state = self.processor.set_image(image)
                for j, prompt in enumerate(prompts):
                    yield i, j, self.processor.set_text_prompt(prompt=prompt, state=state)

    def run(self, images: Sequence[Any], prompts: Sequence[str], *, encode: bool) -> Counts:
        counts: Counts = [[0] * len(prompts) for _ in images]
        for i, j, out in self._states(images, prompts):
            counts[i][j] = len(out["scores"])
            if encode:
                encode_rle(out["masks"][:, 0])
        return counts

    def probe(self, image: Any, prompt: str) -> Probe:
        [(_, _, out)] = list(self._states([image], [prompt]))
        return sorted_probe(out["scores"], out["masks"][:, 0])


def to_pil(images: Sequence[Image]) -> list[Any]:
    from PIL import Image as PILImage

    return [PILImage.fromarray(a) for a in images]


# ----------------------------------------------------------------------------------------- measurement
class MemoryProbe:
    """Peak memory of a block above what was in use when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the process's peak RSS (VmHWM), reset through
    ``/proc/self/clear_refs``; where that is not allowed, the rise of ``ru_maxrss`` (a lower bound: it
    only moves when the block beats the whole process's earlier peak).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else self._cpu_kind()

    @staticmethod
    def _cpu_kind() -> str:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            _proc_status_kib("VmHWM")
            return "peak RSS (VmHWM, reset per case)"
        except OSError:
            return "ru_maxrss rise (lower bound)"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind.startswith("peak RSS"):
            _malloc_trim()  # hand freed heap back, so reusing it shows up as new resident memory
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _proc_status_kib("VmRSS") * 1024
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return max(torch.cuda.max_memory_allocated(self.device) - self._base, 0)
        if self.kind.startswith("peak RSS"):
            return max(_proc_status_kib("VmHWM") * 1024 - self._base, 0)
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self._base, 0)


def _malloc_trim() -> None:
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _proc_status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


@dataclass
class Measurement:
    path: str
    times_ms: list[float]
    peak_bytes: int
    counts: Counts

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.times_ms, 95))

    @property
    def instances(self) -> int:
        return sum(map(sum, self.counts))


@dataclass(frozen=True)
class Timing:
    warmup: int
    repeats: int
    budget_s: float
    device: torch.device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Plan = tuple[str, Callable[[], Counts]]


def measure_case(plans: Sequence[Plan], timing: Timing, memory: MemoryProbe) -> list[Measurement]:
    """Every path of one case: memory first, then the timed calls, interleaved across paths.

    Each path's first call measures its peak memory on its own (and is the warm-up; it is timed only
    with ``--warmup 0``). The timed calls then go round-robin (path A, B, C, A, B, C, …), so a burst of
    load from elsewhere on the machine hits every path alike rather than one. A path stops after
    ``repeats`` calls or once ``budget_s`` seconds of its calls are spent (at least one call).
    """
    rows = []
    for name, fn in plans:
        memory.start()
        counts, first_ms = _timed(fn, timing.device)
        rows.append(Measurement(name, [] if timing.warmup else [first_ms], memory.peak_bytes(), counts))
        for _ in range(timing.warmup - 1):
            fn()
        _free()
    for _ in range(timing.repeats):
        for row, (_, fn) in zip(rows, plans, strict=True):
            if len(row.times_ms) < timing.repeats and (not row.times_ms or sum(row.times_ms) < 1000 * timing.budget_s):
                row.counts = []  # drop the previous call's output before the next one starts
                row.counts, ms = _timed(fn, timing.device)
                row.times_ms.append(ms)
    return rows


def _timed(fn: Callable[[], Counts], device: torch.device) -> tuple[Counts, float]:
    _sync(device)
    t0 = time.perf_counter()
    counts = fn()
    _sync(device)
    return counts, (time.perf_counter() - t0) * 1000


# ----------------------------------------------------------------------------------------- comparisons
@dataclass
class Agreement:
    instances: tuple[int, int]
    max_score_diff: float
    mask_agreement: float  # fraction of equal pixels over rank-matched instances

    def line(self) -> str:
        a, b = self.instances
        return (
            f"{a} vs {b} instances, max |Δscore| {self.max_score_diff:.2e}, "
            f"mask pixel agreement {100 * self.mask_agreement:.3f}%"
        )


def compare(a: Probe, b: Probe) -> Agreement:
    n = min(len(a.scores), len(b.scores))
    score_diff = float(np.max(np.abs(a.scores[:n] - b.scores[:n]))) if n else 0.0
    agree = float((a.masks[:n] == b.masks[:n]).mean()) if n else 1.0
    return Agreement((len(a.scores), len(b.scores)), score_diff, agree)


def count_mismatches(reference: Counts, other: Counts) -> list[str]:
    """Image–prompt pairs whose instance counts differ by more than the tolerance."""
    out = []
    for i, (row_a, row_b) in enumerate(zip(reference, other, strict=True)):
        for j, (a, b) in enumerate(zip(row_a, row_b, strict=True)):
            if abs(a - b) > max(1, round(COUNT_TOLERANCE * max(a, b))):
                out.append(f"image {i} prompt {PROMPTS[j]!r}: {a} vs {b}")
    return out


@dataclass
class Parity:
    agreement: list[Agreement]
    score_tol: float
    agreement_tol: float

    @property
    def ok(self) -> bool:
        return all(
            a.instances[0] == a.instances[1]
            and a.max_score_diff <= self.score_tol
            and a.mask_agreement >= self.agreement_tol
            for a in self.agreement
        )


def plain_fidelity() -> Any:
    """s3seg's :class:`Fidelity` with every reference fix off (flags False, overrides None): transformers' maths.

    E.g. ``Fidelity(geometry_cls=False, vit_layernorm_eps=None, upsample_logits_first=False, …)``; built from
    the dataclass fields so that a fix added later is turned off too.
    """
    from s3seg.engine import Fidelity

    off: dict[str, Any] = {f.name: False if isinstance(f.default, bool) else None for f in fields(Fidelity)}
    return Fidelity(**off)


def check_parity(
    model_dir: Path,
    tf: TransformersPath,
    image: Image,
    prompts: Sequence[str],
    device: str,
    dtype: str,
    threshold: float,
) -> Parity:
    """s3seg with its reference fixes off must compute what transformers computes."""
    from s3seg.engine import Sam3Engine

    engine = S3segPath(
        Sam3Engine.load(str(model_dir), device=device, dtype=dtype, fidelity=plain_fidelity()), threshold
    )
    try:
        agreement = [compare(engine.probe(image, p), tf.probe(image, p)) for p in prompts]
    finally:
        del engine
        _free()
    exact = tf.dtype == torch.float32
    return Parity(agreement, score_tol=1e-4 if exact else 2e-2, agreement_tol=0.999 if exact else 0.99)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ meta
def meta_unavailable(config: str, device: torch.device) -> str | None:
    if device.type != "cuda":
        return "Meta's sam3 needs a CUDA device (this run is on " + device.type + ")"
    if config != "full":
        return "Meta's sam3 only builds the full-size model (run with --config full)"
    try:
        import sam3  # noqa: F401
    except ImportError as e:
        return f"the sam3 package is not importable ({e}); pip install sam3"
    return None


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Meta's builder prints; keep the report clean."""
    saved = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    try:
        yield
    finally:
        sys.stdout.close()
        sys.stdout = saved


def build_meta_and_checkpoint(model_dir: Path, seed: int) -> Any:
    """Meta's full image model with random weights, and the same weights written for transformers/s3seg.

    The weights go through Meta's ``sam3.pt`` layout and s3seg's own converter, so all three paths run
    one set of weights.
    """
    from sam3.model_builder import build_sam3_image_model

    from s3seg.engine._convert import convert_to_pretrained

    torch.manual_seed(seed)
    with _quiet_stdout():
        meta = build_sam3_image_model(device="cuda", eval_mode=True, checkpoint_path=None, load_from_HF=False)
    official = model_dir.parent / "sam3.pt"
    torch.save({"model": {f"detector.{k}": v.detach().cpu() for k, v in meta.state_dict().items()}}, official)
    convert_to_pretrained(official, model_dir)
    official.unlink()
    return meta


# --------------------------------------------------------------------------------------------- report
def machine_lines(device: torch.device, dtype: torch.dtype, config: str, memory: MemoryProbe) -> list[str]:
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
        f"memory:  {memory.kind}",
        f"load:    {load_average()} (1/5/15-minute load average at start; other work on the machine skews timings)",
    ]


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _ratio_text(value: float, base: float, *, higher_is_better: bool = False) -> str:
    if base <= 0 or value <= 0:
        return "–"
    r = value / base
    if higher_is_better:
        r = 1 / r
    if abs(r - 1) < 0.005:
        return "same"
    return f"{r:.2f}× slower" if r > 1 else f"{1 / r:.2f}× faster"


def _cell(value: float, base: float, fmt: str) -> str:
    text = format(value, fmt)
    return text if base <= 0 else f"{text} ({value / base:.2f}×)"


def case_table(case: Case, rows: Sequence[Measurement]) -> list[str]:
    base = next(m for m in rows if m.path == S3SEG)
    header = ["path", "n", "median ms", "p95 ms", "img/s", "peak MiB", "instances", "vs s3seg"]
    table = [header]
    for m in rows:
        ips, base_ips = case.images / (m.median_ms / 1000), case.images / (base.median_ms / 1000)
        mem, base_mem = m.peak_bytes / 2**20, base.peak_bytes / 2**20
        table.append(
            [
                m.path,
                str(len(m.times_ms)),
                _cell(m.median_ms, base.median_ms, ".1f"),
                _cell(m.p95_ms, base.p95_ms, ".1f"),
                _cell(ips, base_ips, ".2f"),
                _cell(mem, base_mem, ".1f"),
                str(m.instances),
                "–" if m is base else _ratio_text(m.median_ms, base.median_ms),
            ]
        )
    widths = [max(len(r[k]) for r in table) for k in range(len(header))]
    fmt = [
        "| " + " | ".join(_pad(c, w, left=k == 0) for k, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
        for r in table
    ]
    fmt.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return fmt


def _pad(text: str, width: int, *, left: bool) -> str:
    return text.ljust(width) if left else text.rjust(width)


def summary_table(results: Sequence[tuple[Case, list[Measurement]]]) -> list[str]:
    """One line per case: every path's median as a multiple of s3seg's."""
    paths = [m.path for m in results[0][1] if m.path != S3SEG] if results else []
    lines = [
        "| case | s3seg median ms | " + " | ".join(f"{p} / s3seg" for p in paths) + " |",
        "|---|---:|" + "---:|" * len(paths),
    ]
    for case, rows in results:
        by = {m.path: m for m in rows}
        base = by[S3SEG].median_ms
        lines.append(
            f"| {case.name} | {base:.1f} | "
            + " | ".join(f"{by[p].median_ms / base:.2f}×" if p in by else "–" for p in paths)
            + " |"
        )
    return lines


# ----------------------------------------------------------------------------------------------- main
@dataclass
class Run:
    lines: list[str] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def model_args(description: str | None) -> argparse.ArgumentParser:
    """The options every benchmark shares: model size, device, dtype, threshold, threads, seed."""
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "--config",
        choices=CONFIGS,
        default="full" if cuda else "tiny",
        help="model size with random weights (default: full on CUDA, tiny otherwise)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 … (default auto)")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 elsewhere",
    )
    ap.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        help="score threshold (default 0.0: every query of the random model is an instance)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice, one per core); 1 is steadier on a shared machine",
    )
    ap.add_argument("--seed", type=int, default=0)
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = model_args(__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument(
        "--cases",
        help="prompts×images per call, e.g. 1x1,4x1,16x1 (each at every --sizes; PxB@WxH pins a size); "
        f"default {','.join(DEFAULT_CASES)}, with --model-only {','.join(MODEL_ONLY_CASES)}",
    )
    ap.add_argument(
        "--model-only",
        action="store_true",
        help="time the model alone (threshold 1.0: nothing survives post-processing): batched heads vs per-pair "
        "heads, each prompt count relative to one prompt",
    )
    ap.add_argument("--compile", action="store_true", help="load s3seg with compile=True (--model-only; CUDA)")
    ap.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help="image sizes WxH (default 640x480,1920x1080)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per path and case (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=30.0,
        help="stop repeating a path's case once this many seconds are spent (at least 1 call)",
    )
    ap.add_argument(
        "--paths",
        default="s3seg,transformers,transformers+RLE,meta-sam3,meta-sam3+RLE",
        help="which paths to time (s3seg is always timed: it is the baseline)",
    )
    ap.add_argument("--json", type=Path, help="save every raw number here")
    return ap.parse_args(argv)


@dataclass
class Paths:
    """The timed paths, built once; :meth:`plans` binds them to one case's images and prompts."""

    s3: S3segPath
    tf: TransformersPath
    meta: MetaPath | None
    wanted: set[str]

    def plans(self, images: Sequence[Image], prompts: Sequence[str]) -> list[Plan]:
        out: list[Plan] = [(S3SEG, partial(self.s3.run, images, prompts))]
        for encode, name in ((False, "transformers"), (True, "transformers+RLE")):
            if name in self.wanted:
                out.append((name, partial(self.tf.run, images, prompts, encode=encode)))
        if self.meta is not None:
            pil = to_pil(images)
            for encode, name in ((False, "meta-sam3"), (True, "meta-sam3+RLE")):
                if name in self.wanted:
                    out.append((name, partial(self.meta.run, pil, prompts, encode=encode)))
        return out


def prepare_checkpoint(
    args: argparse.Namespace, device: torch.device, model_dir: Path, wanted: set[str]
) -> tuple[Any, str | None]:
    """Write the random-weight checkpoint; with Meta's package usable, from Meta's own model."""
    meta_skip = meta_unavailable(args.config, device) if wanted & {"meta-sam3", "meta-sam3+RLE"} else "not asked"
    if meta_skip is None:
        try:
            return build_meta_and_checkpoint(model_dir, args.seed), None
        except Exception as e:  # building Meta's model or converting its weights failed: time the rest
            meta_skip = f"building Meta's model failed: {type(e).__name__}: {e}"
    write_random_checkpoint(model_dir, args.config, seed=args.seed)
    return None, meta_skip


def report_parity(run: Run, parity: Parity) -> None:
    run.say(
        f"parity check: s3seg with {plain_fidelity()} vs transformers, one 640x480 image, 3 prompts "
        f"(tolerance |Δscore| ≤ {parity.score_tol:g}, masks ≥ {100 * parity.agreement_tol:g}%)"
    )
    for prompt, a in zip(PROMPTS, parity.agreement, strict=False):
        run.say(f"  {prompt!r}: {a.line()}")
    run.say(
        "  OK" if parity.ok else "PARITY FAILED: s3seg in transformers mode does not compute what transformers computes"
    )


def report_case(
    run: Run, case: Case, rows: Sequence[Measurement], threshold: float, stages: dict[str, float], checks: Sequence[str]
) -> None:
    run.say()
    run.say(
        f"case {case.name}: {case.prompts} prompt(s) × {case.images} image(s) of "
        f"{case.width}x{case.height} ({case.megapixels:.1f} MP), threshold {threshold:g}"
    )
    for line in case_table(case, rows):
        run.say(line)
    run.say("  s3seg stages (last call, ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    for line in checks:
        run.say(line)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from s3seg.engine import Sam3Engine
    from s3seg.engine._load import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    device_arg, dtype_arg = str(device), str(dtype).removeprefix("torch.")
    if args.model_only:
        return model_only(args, device, dtype)
    cases = parse_cases(args.cases or ",".join(DEFAULT_CASES), args.sizes)
    wanted = {p.strip() for p in args.paths.split(",")} | {S3SEG}
    memory = MemoryProbe(device)
    run = Run()
    for line in machine_lines(device, dtype, args.config, memory):
        run.say(line)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="s3seg-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        meta_model, meta_skip = prepare_checkpoint(args, device, model_dir, wanted)
        config = random_config(args.config)
        run.say(
            f"model:   {args.config} config, image size {config.image_size}, "
            f"{config.detr_decoder_config.num_queries} queries, "  # type: ignore[union-attr]
            f"random weights (seed {args.seed})"
        )
        run.say(f"meta-sam3: {'runs' if meta_skip is None else 'skipped: ' + meta_skip}")
        tf = TransformersPath(model_dir, device, dtype, args.threshold)
        engine = Sam3Engine.load(str(model_dir), device=device_arg, dtype=dtype_arg)
        meta = MetaPath(meta_model, config.image_size, args.threshold, dtype) if meta_model is not None else None
        paths = Paths(S3segPath(engine, args.threshold), tf, meta, wanted)
        run.say(
            f"parameters: {sum(p.numel() for p in tf.model.parameters()) / 1e6:.1f} M; "
            f"attention: {tf.model.config._attn_implementation} (transformers), sdpa (s3seg)"
        )
        bank = ImageBank()

        run.say()
        parity = check_parity(
            model_dir, tf, bank.get(640, 480, 1)[0], PROMPTS[:3], device_arg, dtype_arg, args.threshold
        )
        report_parity(run, parity)
        if not parity.ok:
            return 1

        timing = Timing(args.warmup, args.repeats, args.budget_s, device)
        results: list[tuple[Case, list[Measurement]]] = []
        correctness: dict[tuple[int, int], list[str]] = {}
        for case in cases:
            images = bank.get(case.width, case.height, case.images)
            rows = measure_case(paths.plans(images, PROMPTS[: case.prompts]), timing, memory)
            results.append((case, rows))
            report_case(
                run, case, rows, args.threshold, paths.s3.stages, case_checks(case, rows, paths, bank, correctness)
            )

        run.say()
        run.say("summary: median latency per call as a multiple of s3seg's (> 1: slower than s3seg)")
        for line in summary_table(results):
            run.say(line)
        run.say(f"total wall time {time.perf_counter() - started:.0f} s; load average at end {load_average()}")
        if args.json:
            save_json(args, run, parity, results, memory.kind, meta_skip)
            run.say(f"raw numbers: {args.json}")
    return 0


def model_only(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> int:
    """Batched heads vs per-pair heads on the model alone; see the module docstring."""
    from s3seg.engine import Sam3Engine, SegmentOptions

    memory = MemoryProbe(device)
    run = Run()
    for line in machine_lines(device, dtype, args.config, memory):
        run.say(line)
    cases = parse_cases(args.cases or ",".join(MODEL_ONLY_CASES), args.sizes)
    options = SegmentOptions(threshold=MODEL_ONLY_THRESHOLD)
    with tempfile.TemporaryDirectory(prefix="s3seg-bench-") as tmp:
        model_dir = write_random_checkpoint(Path(tmp) / "model", args.config, seed=args.seed)
        load = partial(
            Sam3Engine.load,
            str(model_dir),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            compile=args.compile,
        )
        engines = {BATCHED: load(), PER_PAIR: load(batch_heads=False)}
    config = random_config(args.config)
    bank = ImageBank()
    probe = engines[BATCHED].predict_raw(bank.get(640, 480, 1)[0], PROMPTS[0])
    run.say(
        f"model:   {args.config} config, image size {config.image_size}, "
        f"{config.detr_decoder_config.num_queries} queries, random weights (seed {args.seed}); "  # type: ignore[union-attr]
        f"compile {args.compile}"
    )
    run.say(
        f"model-only: score threshold {MODEL_ONLY_THRESHOLD:g} (highest score of the probe: "
        f"{float(probe.scores.max()):.3f}), so no instance survives; timed: Sam3Engine.segment(images, prompts)"
    )

    def call(engine: Any, images: Sequence[Image], prompts: Sequence[str]) -> Counts:
        results = engine.segment(images, prompts, options=options)
        return [[len(r.for_prompt(p)) for p in prompts] for r in results]

    timing = Timing(args.warmup, args.repeats, args.budget_s, device)
    medians: dict[tuple[Case, str], float] = {}
    best: dict[tuple[Case, str], float] = {}
    for case in cases:
        images = bank.get(case.width, case.height, case.images)
        plans = [(name, partial(call, e, images, PROMPTS[: case.prompts])) for name, e in engines.items()]
        for m in measure_case(plans, timing, memory):
            medians[case, m.path], best[case, m.path] = m.median_ms, min(m.times_ms)
            times = ", ".join(f"{t:.1f}" for t in m.times_ms)
            run.say(f"  {case.name} {m.path}: median {m.median_ms:.1f} ms of {len(m.times_ms)} calls ({times})")
    for name, stat in (("median", medians), ("best", best)):
        run.say()
        run.say(f"{name} of the timed calls:")
        for line in model_only_table(cases, stat):
            run.say(line)
    run.say(f"load average at end {load_average()}")
    return 0


def model_only_table(cases: Sequence[Case], ms: dict[tuple[Case, str], float]) -> list[str]:
    """Per case: each path's time and its multiple of the one-prompt case with the same images."""
    lines = [
        f"| case | {PER_PAIR} ms | × 1 prompt | {BATCHED} ms | × 1 prompt | batched speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        one = Case(1, case.images, case.width, case.height)
        cells = []
        for path in (PER_PAIR, BATCHED):
            base = ms.get((one, path))
            cells += [f"{ms[case, path]:.1f}", f"{ms[case, path] / base:.2f}×" if base else "–"]
        lines.append(f"| {case.name} | {' | '.join(cells)} | {ms[case, PER_PAIR] / ms[case, BATCHED]:.2f}× |")
    return lines


def case_checks(
    case: Case, rows: Sequence[Measurement], paths: Paths, bank: ImageBank, cache: dict[tuple[int, int], list[str]]
) -> list[str]:
    """Instance counts of every path against s3seg's, and one image–prompt pair compared in full."""
    base = next(m for m in rows if m.path == S3SEG)
    lines = []
    for m in rows:
        if m is base:
            continue
        bad = count_mismatches(base.counts, m.counts)
        verdict = f"COUNT MISMATCH in {len(bad)} pair(s): {'; '.join(bad[:4])}" if bad else "per-prompt counts agree"
        lines.append(f"  counts {m.path}: {m.instances} vs s3seg {base.instances}: {verdict}")
    key = (case.width, case.height)
    if key not in cache:
        image = bank.get(case.width, case.height, 1)[0]
        ours = paths.s3.probe(image, PROMPTS[0])
        cache[key] = [
            f"  correctness (image 0, {PROMPTS[0]!r}, s3seg's reference fixes on, so not expected equal): "
            f"transformers: {compare(ours, paths.tf.probe(image, PROMPTS[0])).line()}"
        ]
        if paths.meta is not None:
            cache[key].append(
                f"  correctness vs meta-sam3 (expected close): "
                f"{compare(ours, paths.meta.probe(to_pil([image])[0], PROMPTS[0])).line()}"
            )
    return lines + cache[key]


def save_json(
    args: argparse.Namespace,
    run: Run,
    parity: Parity,
    results: Sequence[tuple[Case, list[Measurement]]],
    memory_kind: str,
    meta_skip: str | None,
) -> None:
    doc = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "header": run.lines[:6],
        "memory": memory_kind,
        "meta_sam3": "ran" if meta_skip is None else f"skipped: {meta_skip}",
        "parity": [asdict(a) for a in parity.agreement],
        "cases": [
            {
                "case": asdict(case),
                "name": case.name,
                "paths": [
                    {
                        "path": m.path,
                        "times_ms": m.times_ms,
                        "median_ms": m.median_ms,
                        "p95_ms": m.p95_ms,
                        "images_per_s": case.images / (m.median_ms / 1000),
                        "peak_bytes": m.peak_bytes,
                        "instances": m.instances,
                        "counts": m.counts,
                    }
                    for m in rows
                ],
            }
            for case, rows in results
        ],
    }
    args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    sys.exit(main())
