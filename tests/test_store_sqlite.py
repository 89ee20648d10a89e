"""What only the SQLite store has (the shared behaviour is in test_store.py): several threads and processes
writing one file at once, files written by older versions, unwritable locations, uncounted credits."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from s3seg.store import Account, StoreError
from s3seg.store._sqlite import SQLiteStore


def test_concurrent_writers_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                t = store.create_task([f"t{n}-{i}"], project=f"proj{n % 3}")
                store.start(t.id)
                store.finish(t.id, source="s", mask="m", overlay="o", labels=[], metadata={"n": n})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.list(limit=1000, status="done")) == 80
    assert len({t.project for t in store.list(limit=1000)}) == 3  # projects created once, not per writer


def _writer_process(path: str, n: int) -> None:
    store = SQLiteStore(Path(path))
    for i in range(10):
        t = store.create_task([f"p{n}-{i}"], project="shared")
        store.fail(t.id, f"error {n}")


def test_concurrent_writers_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path / "r.db"), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tasks = SQLiteStore(tmp_path / "r.db").list(limit=1000)
    assert len(tasks) == 40 and all(t.status == "error" for t in tasks)


def test_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open the results database"):
        SQLiteStore(tmp_path / "file" / "r.db")


def test_local_account_has_no_credit_count(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    assert store.account() == Account("local", tier="enterprise", credits=None)
    assert store.for_user("bob").account() == Account("bob", tier="enterprise", credits=None)


def _backdate(path: Path, task_id: str, seconds: float = 3600) -> None:
    """Pretend the task's worker last touched it ``seconds`` ago."""
    then = (datetime.now(timezone.utc) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")
    with sqlite3.connect(path) as db:
        db.execute("update segmentation_results set updated_at = ? where id = ?", (then, task_id))
    db.close()


def test_concurrent_requeue_takes_each_task_once(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SQLiteStore(path)
    ids = [store.create_task([f"t{i}"], queue=True).id for i in range(20)]
    for i in ids:
        store.start(i)
        _backdate(path, i)
    barrier = threading.Barrier(8)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            barrier.wait()
            results.append([t.id for t in SQLiteStore(path).requeue_stale(older_than_s=60, max_attempts=2)])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=sweep) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    taken = [i for r in results for i in r]
    assert sorted(taken) == sorted(ids)  # every task requeued exactly once, by one of the sweepers
    assert all(store.get(i).status == "pending" and store.get(i).metadata["attempts"] == 1 for i in ids)


def test_files_from_before_queued_tasks_are_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with sqlite3.connect(path) as db:  # the schema as it was: no queued column
        db.executescript("""
            create table projects (id text primary key, user_id text not null, name text not null,
                description text, created_at text not null, updated_at text not null, unique (user_id, name));
            create table segmentation_results (id text primary key, project_id text references projects(id)
                on delete set null, user_id text not null, source_image_url text, mask_image_url text,
                overlay_image_url text, text_prompt text not null, labels text not null default '[]',
                metadata text not null default '{}', status text not null default 'pending', error text,
                created_at text not null, updated_at text not null);
            insert into segmentation_results (id, user_id, text_prompt, metadata, status, created_at, updated_at)
                values ('old', 'local', 'dog', '{"prompts": ["dog"]}', 'pending', '2026-01-01T00:00:00+00:00',
                        '2026-01-01T00:00:00+00:00');
        """)
    db.close()
    store = SQLiteStore(path)
    assert store.get("old").status == "pending" and store.runnable() == []  # an old row is a plain one
    assert store.start("old").metadata["attempts"] == 1  # counted from 0 when the row has no count
    queued = store.create_task(["cat"], queue=True)
    assert [t.id for t in SQLiteStore(path).runnable()] == [queued.id]  # opening it again changes nothing
