"""Every option and argument of the ``s3seg`` commands, declared once as ``Annotated`` aliases.

A command names its parameters with these (``model: Model = None``), so an option that several commands
take (``--model``, ``--device``, ``--json``, …) has one spelling, one metavar and one help text.

Metavars are set explicitly: typer's own ``<str>``/``<bool>`` labels say little, and a flag takes no value,
so its metavar is empty. Defaults live in the signatures: typer reads them there when the type is
``Annotated``. ``Optional`` rather than ``X | None``: these aliases are evaluated at run time, and typer
versions in our range (>= 0.12) do not all read ``types.UnionType``.
"""
# ruff: noqa: UP045

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

DEFAULT_OUT = Path("s3seg-out")  # where s3seg segment writes when --out is not given


def _option(*names: str, metavar: str, help: str, **limits: Any) -> Any:
    """``typer.Option`` with the metavar given; ``show_default`` is left on, so a non-None default shows."""
    return typer.Option(*names, metavar=metavar, help=help, **limits)


def _flag(*names: str, help: str) -> Any:
    """A boolean flag: an empty metavar, as it takes no value (typer would label it ``<bool>``)."""
    return typer.Option(*names, metavar="", help=help)


# --- shared by several commands -------------------------------------------------------------------------------
Json = Annotated[bool, _flag("--json", help="Print JSON.")]
Prompts = Annotated[Optional[list[str]], _option("--prompt", "-p", metavar="TEXT", help="A text prompt (repeatable).")]
Boxes = Annotated[
    Optional[list[str]],
    _option(
        "--box",
        "-b",
        metavar="X0,Y0,X1,Y1",
        help="An exemplar box in pixels (repeatable); prefix 'neg:' for a negative exemplar. "
        "Boxes alone segment 'things like this'.",
    ),
]
Model = Annotated[
    Optional[str],
    _option(
        "--model",
        "-m",
        metavar="ID|PATH",
        help="Hub id, save_pretrained folder or sam3.pt (env S3SEG_MODEL; default facebook/sam3).",
    ),
]
Device = Annotated[
    Optional[str],
    _option(
        "--device", "-d", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps (env S3SEG_DEVICE; default auto)."
    ),
]
Threshold = Annotated[
    Optional[float],
    _option("--threshold", "-t", metavar="SCORE", min=0.0, max=1.0, help="Minimum instance score (default 0.5)."),
]
MaxInstances = Annotated[
    Optional[int], _option("--max-instances", metavar="N", min=1, help="Keep at most N instances per prompt.")
]
Nms = Annotated[
    Optional[float],
    _option(
        "--nms", metavar="IOU", min=0.0, max=1.0, help="Drop instances whose mask IoU with a better one exceeds this."
    ),
]

# --- s3seg segment --------------------------------------------------------------------------------------------
ImagesAndPrompts = Annotated[
    list[str],
    typer.Argument(
        metavar="IMAGE [PROMPT...]",
        help="An image followed by text prompts: photo.jpg dog person. With -p, every argument is an image, "
        "a folder or a glob: a.jpg photos/ 'shots/*.png' -p dog.",
    ),
]
SegmentOut = Annotated[
    Optional[Path],
    _option(
        "--out",
        "-o",
        metavar="DIR",
        help=f"Folder for per-image COCO JSON, mask PNG and overlay (default: {DEFAULT_OUT}/, or none with --json).",
    ),
]
CocoJson = Annotated[bool, _flag("--json", help="Print results as one COCO JSON document on stdout.")]
Dtype = Annotated[
    Optional[str],
    _option("--dtype", metavar="DTYPE", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16 or float16."),
]
Revision = Annotated[
    Optional[str], _option("--revision", metavar="REV", help="Hub branch, tag or commit of the model.")
]
MaskThreshold = Annotated[
    Optional[float],
    _option("--mask-threshold", metavar="P", min=0.0, max=1.0, help="Mask probability cut-off (default 0.5)."),
]
MaxPixels = Annotated[
    Optional[int],
    _option("--max-pixels", metavar="N", min=1, help="Refuse images with more pixels (default 100000000)."),
]
Server = Annotated[
    Optional[str],
    _option("--server", metavar="URL", help="Segment on this s3seg server (env S3SEG_SERVER_URL) instead of locally."),
]
ApiKey = Annotated[Optional[str], _option("--api-key", metavar="KEY", help="The server's API key (env S3SEG_API_KEY).")]
Api = Annotated[
    Optional[str],
    _option(
        "--api",
        metavar="URL",
        help="Segment on this public s3seg API as the signed-in user (s3seg login; env S3SEG_API_URL); "
        "the results are kept there (s3seg results).",
    ),
]
Save = Annotated[
    bool,
    _flag(
        "--save",
        help="Keep each result: a task row (SQLite or Supabase) and the source, mask and overlay in storage "
        "(local folder or R2). See: s3seg results.",
    ),
]
SaveProject = Annotated[
    Optional[str], _option("--project", metavar="NAME", help="With --save: file the results under this project.")
]
Video = Annotated[
    bool, _flag("--video", help="Treat the input as a video (videos are recognised by content; GIF/WebP need this).")
]
Start = Annotated[
    Optional[str],
    _option("--start", metavar="TIME", help="Video: first frame, in seconds (2.5) or as a frame number (75f)."),
]
End = Annotated[
    Optional[str],
    _option("--end", metavar="TIME", help="Video: stop before this time (seconds) or frame number (NNf)."),
]
Every = Annotated[int, _option("--every", metavar="N", min=1, help="Video: process every Nth frame.")]
MaxObjects = Annotated[
    Optional[int],
    _option("--max-objects", metavar="N", min=1, help="Video: most objects tracked at once (default 16)."),
]
Mot = Annotated[bool, _flag("--mot", help="Video: print MOT-challenge lines frame,id,x,y,w,h,conf,-1,-1,-1.")]

# --- s3seg batch ----------------------------------------------------------------------------------------------
Source = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="A folder or glob (searched recursively), s3://bucket/prefix, or a .txt/.parquet manifest of paths.",
    ),
]
BatchOut = Annotated[
    str,
    _option(
        "--out",
        "-o",
        metavar="DIR|S3",
        help="A folder or s3://bucket/prefix. Rerun with the same --out to finish the rest.",
    ),
]
Coco = Annotated[bool, _flag("--coco", help="Also write each shard as one COCO JSON document.")]
Masks = Annotated[bool, _flag("--masks", help="Also write a label PNG per image under OUT/masks/.")]
Actors = Annotated[
    Optional[int],
    _option("--actors", metavar="N", min=1, help="SAM3 actors (default: one per GPU of the cluster, else 1)."),
]
BatchSize = Annotated[
    Optional[int],
    _option(
        "--batch-size", metavar="N", min=1, help="Images per actor call and backbone pass (default S3SEG_MAX_BATCH, 8)."
    ),
]
ShardSize = Annotated[int, _option("--shard-size", metavar="N", min=1, help="Images per Parquet shard (and commit).")]
Address = Annotated[
    Optional[str],
    _option(
        "--address",
        metavar="ADDRESS",
        help="Join this Ray cluster (env RAY_ADDRESS); default: Ray starts on this machine, on 127.0.0.1.",
    ),
]
CpusPerActor = Annotated[
    Optional[float],
    _option(
        "--cpus-per-actor",
        metavar="CPUS",
        min=0.01,
        help="CPUs each actor reserves (and its torch threads on CPU); default 1 with GPUs, else all shared out.",
    ),
]
NumCpus = Annotated[
    Optional[int], _option("--num-cpus", metavar="N", min=1, help="CPUs of the embedded Ray (default: all).")
]
Quiet = Annotated[bool, _flag("--quiet", "-q", help="No progress bars.")]

# --- s3seg serve ----------------------------------------------------------------------------------------------
Host = Annotated[
    Optional[str],
    _option("--host", metavar="HOST", help="Address to listen on (env S3SEG_HOST; default 127.0.0.1)."),
]
Port = Annotated[Optional[int], _option("--port", "-p", metavar="PORT", help="Port (env S3SEG_PORT; default 8000).")]
ServeApiKey = Annotated[
    Optional[str],
    _option(
        "--api-key", metavar="KEY", help="Require this X-API-Key on /api/v1 (env S3SEG_API_KEY; prefer the env var)."
    ),
]
AllowNoKey = Annotated[
    bool, _flag("--allow-no-key", help="Serve on a non-loopback address without an API key (not recommended).")
]
MaxBatch = Annotated[
    Optional[int], _option("--max-batch", metavar="N", min=1, help="Most images per device batch (default 8).")
]
BatchWaitMs = Annotated[
    Optional[float],
    _option(
        "--batch-wait-ms",
        min=0,
        metavar="MS",
        help="Wait up to this long to fill a batch (default 0: batches form from requests that queue while the "
        "device is busy).",
    ),
]
MaxQueue = Annotated[
    Optional[int], _option("--max-queue", metavar="N", min=1, help="Queued images before answering 503 (default 64).")
]
AllowPrivateUrls = Annotated[
    bool, _flag("--allow-private-urls", help="Let image_url reach loopback and private networks.")
]
Workers = Annotated[
    Optional[list[str]],
    _option(
        "--worker",
        metavar="URL",
        help="Gateway: a GPU worker URL (repeatable; env S3SEG_WORKERS); no model loads here.",
    ),
]
LogLevel = Annotated[str, _option("--log-level", metavar="LEVEL", help="uvicorn log level.")]

# --- s3seg login ----------------------------------------------------------------------------------------------
Email = Annotated[Optional[str], _option("--email", metavar="EMAIL", help="Account email (asked for when not given).")]
PasswordStdin = Annotated[bool, _flag("--password-stdin", help="Read the password from standard input (first line).")]

# --- s3seg upload, tasks, results -----------------------------------------------------------------------------
Files = Annotated[list[Path], typer.Argument(metavar="FILE", help="Image files to store.")]
Prefix = Annotated[str, _option("--prefix", metavar="PREFIX", help="Key prefix in the storage.")]
Expires = Annotated[int, _option("--expires", metavar="SECONDS", min=1, help="Lifetime of the printed URLs, seconds.")]
TaskId = Annotated[Optional[str], typer.Argument(metavar="ID", help="One task (or result) to show.")]
Watch = Annotated[bool, _flag("--watch", "-w", help="Follow the task(s) until they are done or failed.")]
RecentLimit = Annotated[int, _option("--limit", metavar="N", min=1, help="How many recent tasks.")]
Project = Annotated[Optional[str], _option("--project", metavar="NAME", help="Only this project.")]
Status = Annotated[
    Optional[str],
    _option("--status", metavar="STATUS", help="pending, processing, done or error (default: all)."),
]
PageLimit = Annotated[int, _option("--limit", metavar="N", min=1, max=1000, help="Page size.")]
Offset = Annotated[int, _option("--offset", metavar="N", min=0, help="Skip this many (newest first).")]
Download = Annotated[
    Optional[Path],
    _option("--download", metavar="DIR", help="With an ID: save its source, mask, overlay and COCO JSON here."),
]

# --- s3seg convert --------------------------------------------------------------------------------------------
Checkpoint = Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Meta's official checkpoint file (sam3.pt).")]
OutDir = Annotated[
    Path,
    typer.Argument(metavar="OUT_DIR", help="Folder to write (config, safetensors weights, processor, tokenizer)."),
]
Force = Annotated[bool, _flag("--force", "-f", help="Replace OUT_DIR if it exists and is not empty.")]
