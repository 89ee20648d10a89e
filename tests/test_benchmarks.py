"""The benchmark scripts still run end to end (smallest settings; their numbers are not checked here —
speed targets live in the benchmarks themselves, see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        (
            "bench_engine.py",
            ["--cases", "1x1,4x1", "--sizes", "160x120", "--repeats", "1", "--threads", "1"],
            "summary: median latency per call",
        ),
        (
            "bench_server.py",
            ["--requests", "2", "--warmup", "1", "--concurrency", "1,2", "--image", "160x120", "--threads", "1"],
            "servers stopped cleanly: 2/2",
        ),
        ("bench_api.py", ["--requests", "1", "--image", "160x120", "--threads", "1"], "servers stopped cleanly: 1/1"),
        ("bench_encode.py", ["--repeats", "1"], "all RLE strings identical to pycocotools'"),
        ("bench_video.py", ["--frames", "2,4", "--size", "64x48"], "summary: peak RSS growth"),
    ],
)
def test_benchmark_runs(script: str, args: list[str], expect: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--json", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BENCH,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expect in proc.stdout and (tmp_path / "out.json").stat().st_size > 0
