"""``s3seg convert``: Meta's official sam3.pt → a standard save_pretrained folder."""

from __future__ import annotations

from s3seg.cli import _options as opt
from s3seg.cli._console import console


def convert_command(checkpoint: opt.Checkpoint, out_dir: opt.OutDir, force: opt.Force = False) -> None:
    """Convert an official SAM3 checkpoint into a folder that --model, transformers and the Hub load.

    A config.json beside the .pt file gives the model size; otherwise it is SAM3's full size. With the
    tracker (Meta's sam3.pt has it) the folder is the video model's, serving images and videos.
    """
    from s3seg.engine._convert import convert_to_pretrained
    from s3seg.errors import UsageError

    if not checkpoint.is_file():
        raise UsageError(f"no checkpoint file at {checkpoint}", hint="pass the path of sam3.pt")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise UsageError(f"{out_dir} exists and is not empty", hint="choose another folder or pass --force")
    with console.status(f"converting {checkpoint}"):
        written = convert_to_pretrained(checkpoint, out_dir)
    console.print(f"wrote {written}/ — use it with: s3seg segment IMAGE PROMPT --model {written}", highlight=False)
