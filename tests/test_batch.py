"""`s3seg batch` on Ray Data: embedded Ray bound to 127.0.0.1 (checked), the tiny model, a real S3 server
(SeaweedFS on loopback). 40 real-photo crops and a corrupt file under an S3 prefix → Parquet in S3 whose
RLEs equal `s3seg segment` on the same files; a rerun skips everything; a SAM3 actor killed mid-run → the
run completes and every image is there exactly once. Ray starts once for the module."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from _cli import run
from _s3server import S3Server
from s3seg import BatchItem, batch, from_coco, read_batch
from s3seg._batch import _commit_stream
from s3seg._batch._io import Filesystems, S3Spec, list_source
from s3seg._batch._shards import Dest, new_run_id
from s3seg.config import Settings
from s3seg.errors import DependencyError, ImageError, ModelError, StorageError, UsageError
from s3seg.render import mask_png
from s3seg.types import SegmentationResult

pytestmark = pytest.mark.integration

BUCKET = "batch-test"
PROMPTS = ("person", "tie")
N_PHOTOS = 40
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
SEGMENT_ARGS = ("-p", "person", "-p", "tie", "--threshold", "0", "--max-instances", "2", "--device", "cpu")


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def exact_heads() -> Iterator[None]:
    """Batched heads give results within float tolerance of each other that depend on which images share a
    batch (docs/fidelity.md); Ray's batches are not `s3seg segment`'s. The exact mode (each image–prompt pair
    alone) makes both paths comparable RLE for RLE, whatever the batches."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S3SEG_BATCH_HEADS", "0")
        yield


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """Embedded Ray on 2 CPUs, started the way `s3seg batch` starts it (bound to 127.0.0.1)."""
    from s3seg._batch._ray import connect, import_ray

    assert connect(None, num_cpus=2)
    yield
    import_ray().shutdown()


@pytest.fixture(scope="module")
def photos(photo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 crops of a real photograph (JPEG and PNG, colour and grey, one in a subfolder) and a corrupt file."""
    from PIL import Image, ImageOps

    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    with Image.open(photo_path) as im:
        im.load()
        for i in range(N_PHOTOS):
            w, h = 120 + 9 * i, 140 + 7 * (i % 11)
            x, y = (17 * i) % (im.width - w), (23 * i) % (im.height - h)
            crop = im.crop((x, y, x + w, y + h))
            if i % 5 == 1:
                crop = ImageOps.mirror(crop)
            if i % 7 == 3:
                crop = crop.convert("L")
            name = f"sub/p{i:02d}.png" if i % 10 == 9 else f"p{i:02d}.{'png' if i % 4 == 2 else 'jpg'}"
            crop.save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def s3(s3_server: S3Server, photos: Path) -> Iterator[Any]:
    """A boto3 client, the bucket, and the photos uploaded under photos/."""
    client = s3_server.client()
    s3_server.create_bucket(BUCKET)
    for f in sorted(photos.rglob("*")):
        if f.is_file():
            client.put_object(Bucket=BUCKET, Key=f"photos/{f.relative_to(photos).as_posix()}", Body=f.read_bytes())
    yield client
    client.close()


@pytest.fixture(scope="module")
def settings(s3_server: S3Server, tiny_model_dir: Path) -> Settings:
    return Settings(
        model=str(tiny_model_dir),
        device="cpu",
        threshold=0.0,
        max_instances=2,
        r2_endpoint=s3_server.endpoint_url,
        r2_access_key_id=s3_server.access_key,
        r2_secret_access_key=s3_server.secret_key,
    )


@pytest.fixture(scope="module")
def expected(photos: Path, tiny_model_dir: Path) -> dict[str, Any]:
    """`s3seg segment` (the real CLI, in-process) on the same files: {relative name: result or error}."""
    from contextlib import redirect_stderr, redirect_stdout

    import torch

    from s3seg.cli import main

    out, err = io.StringIO(), io.StringIO()
    sys.argv = [
        "s3seg",
        "segment",
        str(photos),
        str(photos / "sub"),
        *SEGMENT_ARGS,
        "--json",
        "-m",
        str(tiny_model_dir),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor runs it; also far faster than 2 threads on 2 busy cores
    try:
        with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as ended:
            main()
    finally:
        torch.set_num_threads(threads)
    assert ended.value.code == 1, "the corrupt file is reported and the rest segmented"
    doc = json.loads(out.getvalue())
    answers: dict[str, Any] = {Path(r.image or "").relative_to(photos).as_posix(): r for r in from_coco(doc)}
    for e in doc["errors"]:
        answers[Path(e["image"]).relative_to(photos).as_posix()] = e["message"].replace(str(photos), "<src>")
    assert len(answers) == N_PHOTOS + 1
    return answers


def _rel(ident: str, prefix: str) -> str:
    assert ident.startswith(prefix), ident
    return ident[len(prefix) :]


def _check_results(items: list[BatchItem], expected: dict[str, Any], prefix: str) -> None:
    """Each image exactly once, results equal to `s3seg segment`'s (RLE for RLE), errors the same."""
    names = [_rel(i.path, prefix) for i in items]
    assert sorted(names) == sorted(expected) and len(set(names)) == len(names)
    for item, name in zip(items, names, strict=True):
        want = expected[name]
        if isinstance(want, str):
            assert item.result is None and item.error == want.replace("<src>", prefix.rstrip("/"))
            continue
        got = item.result
        assert isinstance(got, SegmentationResult) and item.error is None
        assert (got.width, got.height, got.prompts) == (want.width, want.height, want.prompts)
        assert [i.prompt for i in got.instances] == [i.prompt for i in want.instances]
        assert [i.score for i in got.instances] == [i.score for i in want.instances]
        assert [i.box for i in got.instances] == [i.box for i in want.instances]
        assert [_counts(i.mask) for i in got.instances] == [_counts(i.mask) for i in want.instances]


def _counts(mask: np.ndarray) -> str:
    from s3seg import _rle

    return str(_rle.encode(mask)[0]["counts"])


def _keys(s3: Any, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _assert_loopback_only() -> None:
    """Every socket of this process's children (Ray's GCS, raylet, workers, actors; SeaweedFS) is bound to
    and connected to loopback only."""
    import psutil

    seen = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            seen += 1
            assert c.laddr.ip in LOOPBACK, (proc.name(), c)
            if c.raddr:
                assert c.raddr.ip in LOOPBACK, (proc.name(), c)
    assert seen > 0


# --- Ray on loopback ------------------------------------------------------------------------------------


def test_embedded_ray_registers_and_binds_127_0_0_1(ray_local: None) -> None:
    import ray

    from s3seg._batch._ray import node_addresses

    assert node_addresses() == ["127.0.0.1"]
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    _assert_loopback_only()


# --- the whole path on S3 -------------------------------------------------------------------------------


def test_s3_prefix_to_parquet_in_s3_equals_segment_with_an_actor_killed_mid_run(
    ray_local: None,
    s3: Any,
    s3_server: S3Server,
    settings: Settings,
    tiny_model_dir: Path,
    expected: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`s3seg batch s3://…/photos --out s3://…` with --coco --masks. Once the first shard is committed, the
    SAM3 actor process is SIGKILLed: Ray restarts it and retries its batches, the driver drops any row it
    already has. The run completes; every image is there exactly once, RLE for RLE what `s3seg segment`
    found; a rerun skips everything."""
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, value in {
        "S3SEG_R2_ENDPOINT": s3_server.endpoint_url,
        "S3SEG_R2_ACCESS_KEY_ID": s3_server.access_key,
        "S3SEG_R2_SECRET_ACCESS_KEY": s3_server.secret_key,
    }.items():
        monkeypatch.setenv(name, value)
    out = f"s3://{BUCKET}/runs/one"
    killed: dict[str, Any] = {}

    def kill_the_actor() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not _keys(s3, "runs/one/_s3seg/done/"):
            time.sleep(0.05)
        for proc in psutil.Process().children(recursive=True):
            try:
                if "Segmenter" in " ".join(proc.cmdline()):
                    killed["committed"] = len(_keys(s3, "runs/one/_s3seg/done/"))
                    proc.send_signal(signal.SIGKILL)
                    killed["pid"] = proc.pid
                    return
            except psutil.NoSuchProcess:
                continue

    watcher = threading.Thread(target=kill_the_actor, daemon=True)
    watcher.start()
    code, stdout, stderr = run(
        capsys, "batch", f"s3://{BUCKET}/photos", *SEGMENT_ARGS, "-m", str(tiny_model_dir), "--out", out,
        "--coco", "--masks", "--batch-size", "2", "--shard-size", "4", "--cpus-per-actor", "1", "--quiet",
    )  # fmt: skip
    watcher.join(5)
    assert "pid" in killed, "no actor process was found to kill"
    assert killed["committed"] < (N_PHOTOS + 1) / 4 - 2, "the kill came at the end of the run"
    assert code == 1 and f"{N_PHOTOS} done, 1 failed, 0 skipped" in stdout, stderr
    assert "images/s" in stdout and "failed images are rows with their error" in stderr
    items = list(read_batch(out, settings=settings))
    _check_results(items, expected, f"s3://{BUCKET}/photos/")

    # The files themselves: exactly one row per image in the Parquet shards (not only in what the reader
    # returns), the documented schema, a COCO document and a manifest per shard, a label PNG per image.
    keys = _keys(s3, "runs/one/")
    parquet = [k for k in keys if k.startswith("runs/one/parquet/")]
    manifests = [k for k in keys if k.startswith("runs/one/_s3seg/done/")]
    assert len(parquet) == len(manifests) >= (N_PHOTOS + 1) / 4
    table = pa.concat_tables(
        [pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in parquet]
    )
    assert table.num_rows == N_PHOTOS + 1 and len(set(table.column("path").to_pylist())) == N_PHOTOS + 1
    assert table.schema.names == ["path", "width", "height", "prompts", "instances", "mask_png", "error"]
    assert table.schema.field("instances").type.value_type.names == ["prompt", "score", "box", "rle", "area"]
    from_shards = []
    for key in (k for k in keys if k.startswith("runs/one/coco/")):
        from_shards += from_coco(json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
    by_path = {i.path: i.result for i in items if i.result is not None}
    assert len(from_shards) == N_PHOTOS and all(r == by_path[r.image] for r in from_shards)
    some = by_path[f"s3://{BUCKET}/photos/sub/p09.png"]
    assert some is not None
    assert s3.get_object(Bucket=BUCKET, Key="runs/one/masks/sub/p09.png.png")["Body"].read() == mask_png(some)
    assert len([k for k in keys if k.startswith("runs/one/masks/")]) == N_PHOTOS

    # A rerun with the same DEST skips everything and writes nothing.
    again = batch(f"s3://{BUCKET}/photos", PROMPTS, out=out, coco=True, masks=True, settings=settings)
    assert (again.done, again.failed, again.skipped, again.shards) == (0, 0, N_PHOTOS + 1, ())
    assert _keys(s3, "runs/one/") == keys
    # Another question for the same DEST is refused rather than mixed in.
    with pytest.raises(UsageError, match="another job"):
        batch(f"s3://{BUCKET}/photos", ["dog"], out=out, coco=True, masks=True, settings=settings)
    _assert_loopback_only()


# --- commit protocol, sources and errors (no Ray) -----------------------------------------------------


def _row(path: str, error: str | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "width": 4,
        "height": 3,
        "prompts": ["dog"],
        "instances": [] if error else [{"prompt": "dog", "score": 0.5, "box": [0, 0, 2, 2], "rle": "04N3", "area": 4}],
        "mask_png": None,
        "error": error,
    }


def test_crash_mid_stream_commits_what_it_has_and_rerun_finishes_exactly_once(tmp_path: Path) -> None:
    dest = Dest(str(tmp_path / "out"), Filesystems(S3Spec(None, "auto", None, None, True)))
    dest.check_job({"prompts": ["dog"]})

    def crashing() -> Iterator[dict[str, Any]]:
        yield from (_row(f"/d/{i}.jpg") for i in range(5))
        yield _row("/d/1.jpg")  # a retried batch handing a row over again
        raise RuntimeError("the pipeline died")

    with pytest.raises(RuntimeError, match="pipeline died"):
        _commit_stream(crashing(), dest, new_run_id(), 2, set(), with_coco=True, model=None)
    first = dest.committed()
    assert first.done == {f"/d/{i}.jpg" for i in range(5)} and len(first.shards) == 3
    # A crash between a shard's files and its manifest leaves an orphan: removed at the next start.
    orphan = tmp_path / "out" / "parquet" / "part-20261202T000000Z-abcdef-00000.parquet"
    orphan.write_bytes(b"half")
    assert dest.remove_orphans(first) == [str(orphan)] and not orphan.exists()
    rows = (_row(f"/d/{i}.jpg", error="bad" if i == 7 else None) for i in range(8))
    todo = [r for r in rows if r["path"] not in first.done]
    done, failed, shards = _commit_stream(iter(todo), dest, new_run_id(), 2, first.done, with_coco=False, model=None)
    assert (done, failed, len(shards)) == (2, 1, 2)
    read = list(dest.read())
    assert [r["path"] for r in read] == [f"/d/{i}.jpg" for i in range(8)]
    assert read[7]["error"] == "bad"
    with pytest.raises(UsageError, match="another job"):
        dest.check_job({"prompts": ["cat"]})


def test_sources_folder_glob_and_manifests(photos: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fss = Filesystems(S3Spec(None, "auto", None, None, True))
    everything = list_source(str(photos), fss)
    assert len(everything) == N_PHOTOS + 1 and str(photos / "sub" / "p09.png") in everything
    assert list_source(str(photos / "*.png"), fss) == sorted(str(p) for p in photos.glob("*.png"))
    (photos.parent / "list.txt").write_text(f"# two images\n{photos.name}/p00.jpg\n\n{photos / 'p01.jpg'}\n")
    assert list_source(str(photos.parent / "list.txt"), fss) == [str(photos / "p00.jpg"), str(photos / "p01.jpg")]
    pq.write_table(pa.table({"path": ["s3://b/x.jpg", "s3://b/x.jpg", "s3://b/a.png"]}), tmp_path / "m.parquet")
    assert list_source(str(tmp_path / "m.parquet"), fss) == ["s3://b/a.png", "s3://b/x.jpg"]
    pq.write_table(pa.table({"file": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(UsageError, match="no 'path' column"):
        list_source(str(tmp_path / "bad.parquet"), fss)
    with pytest.raises(ImageError, match="no such file or folder"):
        list_source(str(tmp_path / "nothing-here"), fss)
    with pytest.raises(ImageError, match="no image files in folder"):
        list_source(str(tmp_path), fss)


def test_bad_credentials_and_bad_sources_are_one_line_errors(
    s3: Any, settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    wrong = settings.model_copy(update={"r2_secret_access_key": SecretStr("wrong")})
    with pytest.raises(StorageError, match="access denied") as e:
        batch(f"s3://{BUCKET}/photos", ["dog"], out=str(tmp_path / "o"), settings=wrong)
    assert "S3SEG_R2_SECRET_ACCESS_KEY" in (e.value.hint or "")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        batch("s3://no-such-bucket/x", ["dog"], out=str(tmp_path / "o"), settings=settings)
    with pytest.raises(ImageError, match="no image files under"):
        batch(f"s3://{BUCKET}/nothing", ["dog"], out=str(tmp_path / "o"), settings=settings)
    with pytest.raises(UsageError, match="nothing to segment"):
        batch(f"s3://{BUCKET}/photos", [], out=str(tmp_path / "o"), settings=settings)
    missing = settings.model_copy(update={"model": str(tmp_path / "no-such-model")})
    with pytest.raises(ModelError, match="model path not found"):
        batch(f"s3://{BUCKET}/photos", ["dog"], out=str(tmp_path / "m"), settings=missing)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists(), "a run that cannot start writes nothing"

    monkeypatch.setenv("S3SEG_R2_ENDPOINT", settings.r2_endpoint or "")
    monkeypatch.setenv("S3SEG_R2_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("S3SEG_R2_SECRET_ACCESS_KEY", "wrong")
    code, out, err = run(capsys, "batch", f"s3://{BUCKET}/photos", "-p", "dog", "--out", str(tmp_path / "o"))
    assert code == StorageError.exit_code and out == ""
    assert err.startswith("error: cannot list s3://batch-test/photos: access denied") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the message and its hint


def test_missing_ray_extra_is_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from s3seg._batch._ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DependencyError, match="needs Ray Data") as e:
        import_ray()
    assert e.value.hint == "pip install 's3seg[ray]'"
