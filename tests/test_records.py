"""The no-account workflow: `segment --save`, then `tasks` and `results`, on a local folder and SQLite;
and the same commands against the real S3 server (SeaweedFS) for storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _cli import run
from s3seg.config import Settings
from s3seg.images import load_image
from s3seg.records import Recorder
from s3seg.render import label_map
from s3seg.storage import LocalStorage
from s3seg.store import StoreError
from s3seg.store._sqlite import SQLiteStore
from s3seg.types import SegmentationResult, from_coco


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("S3SEG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("S3SEG_MODEL", str(tiny_model_dir))
    for name in ("R2_BUCKET", "S3SEG_R2_BUCKET", "SUPABASE_URL", "S3SEG_SUPABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_save_then_tasks_and_results(capsys: pytest.CaptureFixture[str], tmp_path: Path, photo_path: Path) -> None:
    code, out, err = run(
        capsys, "segment", str(photo_path), "person", "tie", "-t", "0.2", "--save", "--project", "portraits", "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    [saved] = doc["tasks"]
    task_id = saved["task_id"]

    code, out, _ = run(capsys, "tasks", "--json")
    [task] = json.loads(out)
    assert task["id"] == task_id and task["status"] == "done" and task["project"] == "portraits"
    assert task["metadata"]["counts"] == {"person": 20, "tie": 20} and len(task["labels"]) == 40

    code, out, _ = run(capsys, "results", "--project", "portraits", "--status", "done", "--json")
    assert code == 0 and [t["id"] for t in json.loads(out)] == [task_id]
    code, out, _ = run(capsys, "results")
    assert code == 0 and "done" in out and "results 1–1" in out
    code, out, _ = run(capsys, "results", "--project", "elsewhere", "--json")
    assert json.loads(out) == []

    code, out, _ = run(capsys, "results", task_id, "--download", str(tmp_path / "dl"), "--json")
    assert code == 0
    shown = json.loads(out)
    assert set(shown["urls"]) == {"source", "mask", "overlay", "result"}
    assert all(u.startswith("file://") for u in shown["urls"].values())
    files = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert files == ["mask.png", "overlay.jpg", "result.json", "source.jpg"]
    assert (tmp_path / "dl" / "source.jpg").read_bytes() == photo_path.read_bytes()
    [result] = from_coco(json.loads((tmp_path / "dl" / "result.json").read_text()))
    with Image.open(tmp_path / "dl" / "mask.png") as png:
        assert np.array_equal(np.array(png), label_map(result))

    code, out, _ = run(capsys, "tasks", task_id)
    assert code == 0 and "person 20" in out


def test_failed_segmentation_is_recorded_as_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, photo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3seg.engine import Sam3Engine
    from s3seg.errors import DeviceError

    def out_of_memory(self: Sam3Engine, *args: Any, **kwargs: Any) -> Any:
        raise DeviceError("the device ran out of memory for this request")

    monkeypatch.setattr(Sam3Engine, "segment", out_of_memory)
    code, _, err = run(capsys, "segment", str(photo_path), "person", "--save")
    assert code != 0 and "out of memory" in err
    code, out, _ = run(capsys, "tasks", "--json")
    [task] = json.loads(out)
    assert task["status"] == "error" and "out of memory" in task["error"]
    assert task["source_image_url"] is None  # nothing half-written claims success


def test_storage_failure_leaves_an_error_row_and_no_objects(tmp_path: Path, engine: Any, photo_path: Path) -> None:
    class BrokenStorage(LocalStorage):
        def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
            if key.endswith("overlay.jpg"):
                raise OSError("disk full")
            return super().put(key, data, content_type)

    storage = BrokenStorage(tmp_path / "objects")
    store = SQLiteStore(tmp_path / "r.db")
    recorder = Recorder(storage, store)
    image = load_image(photo_path)
    [result] = engine.segment([image.array], ["person"], names=[image.name])
    task = recorder.begin(["person"], image=image.name)
    with pytest.raises(OSError, match="disk full"):
        recorder.complete(task, image, result)
    failed = store.get(task.id)
    assert failed.status == "error" and "disk full" in (failed.error or "")
    assert storage.list() == []  # what was uploaded before the failure is removed


def test_upload_and_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, photo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "upload", str(photo_path), "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["key"].startswith("uploads/") and row["key"].endswith("/grace_hopper.jpg")
    assert Path(row["url"].removeprefix("file://")).read_bytes() == photo_path.read_bytes()
    code, _, err = run(capsys, "upload", str(tmp_path / "missing.jpg"))
    assert code == 3 and "not a file" in err

    monkeypatch.setenv("SUPABASE_SERVICE_KEY", "super-secret-service-key")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "r2-secret")
    code, out, _ = run(capsys, "config", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["backends"]["results"] == "sqlite" and shown["backends"]["inference"] == "local"
    assert shown["backends"]["storage"].startswith("misconfigured:")  # a secret without a bucket is refused
    monkeypatch.delenv("R2_SECRET_ACCESS_KEY")
    code, out, _ = run(capsys, "config", "--json")
    assert json.loads(out)["backends"]["storage"] == "local"
    assert "super-secret-service-key" not in out
    assert json.loads(out)["settings"]["supabase_service_key"] == "**********"


def test_unknown_task_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "results", "no-such-id")
    assert code == StoreError.exit_code and "no task no-such-id" in err
    code, _, err = run(capsys, "results", "--status", "finished")
    assert code == 2 and "unknown status" in err
    code, _, err = run(capsys, "segment", "x.jpg", "dog", "--project", "p")
    assert code == 2 and "--project needs --save" in err


@pytest.fixture
def s3_bucket(s3_server: Any) -> tuple[str, str, str, str]:
    return s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, s3_server.create_bucket("records")


@pytest.mark.integration
def test_save_to_a_real_s3_server(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    photo_path: Path,
    s3_bucket: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, access_key, secret_key, bucket = s3_bucket
    for name, value in {
        "R2_ENDPOINT": endpoint,
        "R2_ACCESS_KEY_ID": access_key,
        "R2_SECRET_ACCESS_KEY": secret_key,
        "R2_BUCKET": bucket,
        "S3SEG_R2_PREFIX": "cli-test/",
    }.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "segment", str(photo_path), "person", "-t", "0.2", "--save", "--json")
    assert code == 0, err
    task_id = json.loads(out)["tasks"][0]["task_id"]
    code, out, _ = run(capsys, "results", task_id, "--json")
    urls = json.loads(out)["urls"]
    import httpx

    assert httpx.get(urls["source"]).content == photo_path.read_bytes()  # a presigned URL, fetched for real
    coco = httpx.get(urls["result"]).json()
    assert isinstance(from_coco(coco)[0], SegmentationResult)
    code, out, _ = run(capsys, "config", "--json")
    assert json.loads(out)["backends"]["storage"] != "local"
    assert Settings().r2_prefix == "cli-test/"


def test_closing_the_recorder_closes_its_store_and_storage(tmp_path: Path) -> None:
    from s3seg.store._supabase import SupabaseStore

    # A store holding connections (its own HTTP client; nothing is sent) behind a real local storage.
    store = SupabaseStore("http://127.0.0.1:9", "service-key", user_id="11111111-2222-3333-4444-555555555555")
    with Recorder(LocalStorage(tmp_path / "files"), store):
        assert not store._http.is_closed
    assert store._http.is_closed


def test_tasks_watch_follows_a_local_task(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`s3seg tasks ID --watch` on this machine's store: it reads the task until it ends (another process,
    here a thread, moves it) and prints it then."""
    import threading
    import time

    from s3seg.config import load_settings
    from s3seg.store import store_from_settings

    store = store_from_settings(load_settings())
    task = store.create_task(["cat"], frames_total=2)

    def work() -> None:
        store.start(task.id)
        time.sleep(0.6)
        store.heartbeat(task.id, done=1)
        time.sleep(0.6)
        store.heartbeat(task.id, done=2)
        store.finish(task.id, source="s", mask=None, overlay="o", labels=[], metadata={})

    worker = threading.Timer(0.3, work)
    worker.start()
    code, out, err = run(capsys, "tasks", task.id[:8], "--watch", "--json")
    worker.join()
    store.close()
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["status"], shown["frames_done"], shown["frames_total"]) == ("done", 2, 2), shown
