"""The public Python API's docstrings: their examples run (doctest) against the tiny checkpoint."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import s3seg


@pytest.mark.parametrize(
    "obj",
    [s3seg.segment, s3seg.from_coco, s3seg.Client.segment, s3seg.SegmentationResult],
    ids=lambda o: o.__qualname__,
)
def test_examples_in_docstrings_run(obj: object, tiny_model_dir: Path, photo_path: Path) -> None:
    finder = doctest.DocTestFinder(recurse=False)
    globs = {"s3seg": s3seg, "MODEL": str(tiny_model_dir), "PHOTO": str(photo_path)}
    [test] = finder.find(obj, globs=globs)
    assert test.examples, "the docstring has an example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0


def test_help_documents_the_keyword_arguments() -> None:
    doc = s3seg.segment.__doc__ or ""
    for name in ("threshold", "mask_threshold", "max_instances", "nms_iou", "boxes", "model", "device"):
        assert f"{name}:" in doc
    assert "a **list**" in (s3seg.from_coco.__doc__ or "")
