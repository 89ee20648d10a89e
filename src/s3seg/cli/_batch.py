"""``s3seg batch``: a dataset (folder, glob, s3:// prefix or manifest) × prompts → sharded Parquet on Ray Data."""

from __future__ import annotations

from typing import Optional

import typer

from s3seg.cli._console import console, err_console


def batch_command(
    source: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="A folder or glob (searched recursively), s3://bucket/prefix, or a .txt/.parquet manifest of paths.",
        show_default=False,
    ),
    prompt: Optional[list[str]] = typer.Option(  # noqa: UP045  (typer needs Optional here)
        None, "--prompt", "-p", help="A text prompt (repeatable).", show_default=False
    ),
    box: Optional[list[str]] = typer.Option(  # noqa: UP045
        None,
        "--box",
        "-b",
        metavar="X0,Y0,X1,Y1",
        help="An exemplar box in pixels for every image (repeatable; prefix 'neg:' for a negative one).",
        show_default=False,
    ),
    out: str = typer.Option(
        ..., "--out", "-o", help="A folder or s3://bucket/prefix. Rerun with the same --out to finish the rest."
    ),
    coco: bool = typer.Option(False, "--coco", help="Also write each shard as one COCO JSON document."),
    masks: bool = typer.Option(False, "--masks", help="Also write a label PNG per image under OUT/masks/."),
    actors: Optional[int] = typer.Option(  # noqa: UP045
        None, "--actors", min=1, help="SAM3 actors (default: one per GPU of the cluster, else 1).", show_default=False
    ),
    batch_size: Optional[int] = typer.Option(  # noqa: UP045
        None,
        "--batch-size",
        min=1,
        help="Images per actor call and backbone pass (default S3SEG_MAX_BATCH, 8).",
        show_default=False,
    ),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per Parquet shard (and commit)."),
    address: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--address",
        help="Join this Ray cluster (env RAY_ADDRESS); default: Ray starts on this machine, on 127.0.0.1.",
        show_default=False,
    ),
    num_cpus: Optional[int] = typer.Option(  # noqa: UP045
        None, "--num-cpus", min=1, help="CPUs of the embedded Ray (default: all).", show_default=False
    ),
    cpus_per_actor: Optional[float] = typer.Option(  # noqa: UP045
        None,
        "--cpus-per-actor",
        min=0.01,
        help="CPUs each actor reserves (and its torch threads on CPU); default 1 with GPUs, else all shared out.",
        show_default=False,
    ),
    model: Optional[str] = typer.Option(  # noqa: UP045
        None, "--model", "-m", help="Hub id, save_pretrained folder or sam3.pt (env S3SEG_MODEL).", show_default=False
    ),
    device: Optional[str] = typer.Option(  # noqa: UP045
        None, "--device", "-d", help="auto, cpu or cuda (env S3SEG_DEVICE).", show_default=False
    ),
    threshold: Optional[float] = typer.Option(  # noqa: UP045
        None, "--threshold", "-t", min=0.0, max=1.0, help="Minimum instance score (default 0.5).", show_default=False
    ),
    max_instances: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-instances", min=1, help="Keep at most N instances per prompt.", show_default=False
    ),
    nms: Optional[float] = typer.Option(  # noqa: UP045
        None, "--nms", min=0.0, max=1.0, help="Mask-IoU NMS threshold per prompt.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Segment a whole dataset on Ray Data: resumable, each image written exactly once.

    Writes OUT/parquet/part-*.parquet (one row per image: path, width, height, prompts, instances with
    COCO RLE, scores and boxes, error), with --coco OUT/coco/part-*.json and with --masks OUT/masks/.

    Examples:  s3seg batch photos/ -p dog --out results/
     ·  s3seg batch s3://bucket/images -p dog -p cat --out s3://bucket/sam3 --actors 8 --coco
    """
    from s3seg import batch
    from s3seg.config import load_settings
    from s3seg.types import box_from_string

    boxes = [box_from_string(b) for b in box or []]
    settings = load_settings(model=model, device=device)
    summary = batch(
        source,
        prompt or [],
        out=out,
        boxes=boxes,
        coco=coco,
        masks=masks,
        actors=actors,
        batch_size=batch_size,
        shard_size=shard_size,
        address=address,
        num_cpus=num_cpus,
        cpus_per_actor=cpus_per_actor,
        settings=settings,
        threshold=threshold,
        max_instances=max_instances,
        nms_iou=nms,
        progress=not quiet,
    )
    rate = f", {summary.images_per_s:.2f} images/s" if summary.seconds else ""
    console.print(
        f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped (already in {summary.out})"
        f"{rate} → {len(summary.shards)} shard(s)",
        highlight=False,
    )
    if summary.failed:
        err_console.print(
            "failed images are rows with their error: s3seg.read_batch(OUT) or the Parquet 'error' column",
            highlight=False,
        )
        raise typer.Exit(1)
