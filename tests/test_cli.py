"""`s3seg segment` end to end: the real entry point, the tiny checkpoint from disk, and output files
checked the way other tools read them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from _cli import run
from s3seg.cli import main
from s3seg.errors import ImageError, UsageError
from s3seg.render import label_map
from s3seg.types import SegmentationResult, from_coco


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out folder lands here, not in the repo


def test_segment_writes_coco_mask_and_overlay(capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run(
        capsys,
        "segment",
        str(photo_path),
        "person",
        "tie",
        "--model",
        str(tiny_model_dir),
        "--threshold",
        "0.2",
        "--out",
        str(out),
    )
    assert code == 0
    assert "person" in stdout and "tie" in stdout and "instance(s) in 1 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "grace_hopper.json",
        "grace_hopper.mask.png",
        "grace_hopper.overlay.jpg",
    ]

    doc = json.loads((out / "grace_hopper.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["person", "tie"]
    assert doc["images"][0]["width"] == 512 and doc["images"][0]["height"] == 600
    assert len(doc["annotations"]) == 40
    [result] = from_coco(doc)
    for ann, inst in zip(doc["annotations"], result.instances, strict=True):  # what other COCO tools see
        decoded = coco_mask.decode(
            {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        )
        assert np.array_equal(decoded.astype(bool), inst.mask)
        assert ann["area"] == int(decoded.sum())
        x, y, w, h = ann["bbox"]
        assert inst.box == pytest.approx((x, y, x + w, y + h))

    with Image.open(out / "grace_hopper.mask.png") as png:
        assert png.mode == "P" and png.size == (512, 600)
        assert np.array_equal(np.array(png), label_map(result))
    with Image.open(out / "grace_hopper.overlay.jpg") as overlay:
        assert overlay.size == (512, 600) and overlay.mode == "RGB"


def test_prompt_option_makes_every_argument_an_image(
    capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(photo_path) as im:
        im.resize((128, 150)).save(photos / "a.png")
        im.convert("L").save(photos / "b.jpg")
    code, stdout, _ = run(
        capsys,
        "segment",
        str(photo_path),
        str(photos),
        str(photos / "*.png"),
        "-p",
        "person",
        "-p",
        "tie",
        "--model",
        str(tiny_model_dir),
        "--json",
        "-t",
        "0.2",
        "--max-instances",
        "2",
    )
    assert code == 0
    doc = json.loads(stdout)
    assert [im["file_name"] for im in doc["images"]] == [
        str(photo_path),
        str(photos / "a.png"),
        str(photos / "b.jpg"),
    ]  # glob duplicate dropped
    assert [im["height"] for im in doc["images"]] == [600, 150, 600]
    assert len(doc["annotations"]) == 3 * 2 * 2 and doc["errors"] == []
    assert not Path("s3seg-out").exists()  # --json alone writes no files


def test_exemplar_boxes_from_the_command_line(capsys, tiny_model_dir: Path, photo_path: Path) -> None:
    code, stdout, _ = run(
        capsys,
        "segment",
        str(photo_path),
        "--box",
        "150,60,350,300",
        "--box",
        "neg:20,350,120,500",
        "--model",
        str(tiny_model_dir),
        "--json",
        "-t",
        "0",
    )
    assert code == 0
    doc = json.loads(stdout)
    assert [c["name"] for c in doc["categories"]] == ["visual"] and len(doc["annotations"]) == 20


def test_one_bad_file_among_many_is_skipped(capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    good = tmp_path / "good.jpg"
    good.write_bytes(photo_path.read_bytes())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photo_path.read_bytes()[:5000])
    out = tmp_path / "out"
    code, stdout, stderr = run(
        capsys,
        "segment",
        str(broken),
        str(good),
        str(tmp_path / "notes.txt"),
        str(tmp_path / "missing.jpg"),
        "-p",
        "person",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "-t",
        "0.2",
    )
    assert code != 0
    assert "1 image(s)" in stdout
    assert f"skipped {broken}" in stderr and "corrupt" in stderr
    assert "notes.txt" in stderr and "missing.jpg" in stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.mask.png", "good.overlay.jpg"]


def test_same_stem_in_two_folders_does_not_overwrite(
    capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path
) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "img.jpg").write_bytes(photo_path.read_bytes())
    out = tmp_path / "out"
    code, _, _ = run(
        capsys,
        "segment",
        str(tmp_path / "x"),
        str(tmp_path / "y"),
        "-p",
        "person",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
    )
    assert code == 0
    assert {p.name for p in out.glob("*.json")} == {"img.json", "img_2.json"}


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["segment", "{photo}"], "no prompt given", UsageError.exit_code),
        (["segment", "{photo}", "dog", "--box", "1,2,3"], "four numbers", UsageError.exit_code),
        (["segment", "{photo}", "dog", "--box", "5,5,1,1"], "x1 > x0", UsageError.exit_code),
        (["segment", "{photo}", "dog", "--model", "{tmp}/nowhere"], "model path not found", 4),
        (["segment", "{photo}", "dog", "--model", "{tmp}"], "not a SAM3 model directory", 4),
        (["segment", "{photo}", "dog", "--device", "tpu"], "invalid device", UsageError.exit_code),
        (["segment", "{photo}", "dog", "--dtype", "float8"], "invalid dtype", UsageError.exit_code),
        (
            ["segment", "{tmp}/missing.jpg", "dog", "--model", "{model}"],
            "no such file or directory",
            ImageError.exit_code,
        ),
        (["segment", "{tmp}/empty.jpg", "dog", "--model", "{model}"], "empty", ImageError.exit_code),
        (
            ["segment", "{photo}", "dog", "--max-pixels", "1000", "--model", "{model}"],
            "too large",
            ImageError.exit_code,
        ),
        (["segment", "{photo}", "dog", "--device", "cuda"], "no CUDA GPU", 7),
    ],
)
def test_bad_input_gives_one_line_and_exit_code(
    capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path, args: list[str], message: str, code: int
) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    args = [a.format(photo=photo_path, tmp=tmp_path, model=tiny_model_dir) for a in args]
    got, _, stderr = run(capsys, *args)
    assert got == code, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("error:")]) <= 1


def test_debug_shows_the_traceback(capsys, monkeypatch, tmp_path: Path, photo_path: Path) -> None:
    monkeypatch.setenv("S3SEG_DEBUG", "1")
    with pytest.raises(Exception, match="model path not found"):
        sys.argv = ["s3seg", "segment", str(photo_path), "dog", "--model", str(tmp_path / "nowhere")]
        main()


def test_bad_environment_value(capsys, monkeypatch, photo_path: Path) -> None:
    monkeypatch.setenv("S3SEG_THRESHOLD", "high")
    code, _, stderr = run(capsys, "segment", str(photo_path), "dog")
    assert code == UsageError.exit_code
    assert "invalid threshold" in stderr and "S3SEG_THRESHOLD" in stderr


def test_model_from_environment(capsys, monkeypatch, tiny_model_dir: Path, photo_path: Path) -> None:
    monkeypatch.setenv("S3SEG_MODEL", str(tiny_model_dir))
    code, stdout, _ = run(capsys, "segment", str(photo_path), "person", "--json", "-t", "0.99")
    assert code == 0
    assert json.loads(stdout)["annotations"] == []


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys, runpy; sys.argv = ['s3seg', '--help']\n"
        "try:\n    runpy.run_module('s3seg', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import s3seg; s3seg.Client; s3seg.SegmentationResult\n"
        "assert 'torch' not in sys.modules, 'torch imported by the SDK'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "100"}
    )
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stdout


def test_results_read_back_identical(tmp_path: Path, engine, photo: np.ndarray) -> None:
    from s3seg.engine import SegmentOptions

    [result] = engine.segment([photo], ["person"], options=SegmentOptions(threshold=0.2), names=["p.jpg"])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result.to_coco()))
    assert SegmentationResult.from_coco(json.loads(path.read_text())) == result


@pytest.mark.parametrize(
    "command", ["segment", "batch", "serve", "upload", "tasks", "results", "config", "convert", "login", "whoami"]
)
def test_help_names_what_each_option_takes(capsys, command: str) -> None:
    """Every option that takes a value shows a metavar (ID|PATH, N, URL), never typer's bare type, and a flag
    (--json, --save, --help) shows none: it takes no value."""
    code, stdout, _ = run(capsys, command, "--help")
    assert code == 0
    rows = [line for line in stdout.splitlines() if line.lstrip("│ *").startswith("-")]
    assert any("--help" in row for row in rows)
    for row in rows:
        assert not any(t in row for t in ("<bool>", "<str>", "<int", "<float", "<path>")), row
    if command in ("segment", "batch", "serve"):
        assert any("--model" in row and "ID|PATH" in row for row in rows)
