"""``s3seg batch``: a dataset (folder, glob, s3:// prefix or manifest) × prompts → sharded Parquet on Ray Data."""

from __future__ import annotations

import typer

from s3seg.cli import _options as opt
from s3seg.cli._console import console, err_console


def batch_command(
    source: opt.Source,
    out: opt.BatchOut,
    shard_size: opt.ShardSize = 1000,
    prompt: opt.Prompts = None,
    box: opt.Boxes = None,
    coco: opt.Coco = False,
    masks: opt.Masks = False,
    actors: opt.Actors = None,
    batch_size: opt.BatchSize = None,
    address: opt.Address = None,
    num_cpus: opt.NumCpus = None,
    cpus_per_actor: opt.CpusPerActor = None,
    model: opt.Model = None,
    device: opt.Device = None,
    threshold: opt.Threshold = None,
    max_instances: opt.MaxInstances = None,
    nms: opt.Nms = None,
    quiet: opt.Quiet = False,
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
