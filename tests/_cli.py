"""Running the real `s3seg` entry point in-process, as a user's shell would, capturing what it prints."""

from __future__ import annotations

import sys

import pytest

from s3seg.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`s3seg ARGS…` → (exit code, stdout, stderr)."""
    sys.argv = ["s3seg", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
