"""A newcomer's first mistakes with `s3seg segment` (issue 12): user data printed as written, inputs
checked before the model loads, rows as images finish, an honest end line when everything failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import run
from s3seg.errors import ImageError, StoreError, UsageError


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load the model fails the test: the checks must come first."""
    from s3seg.engine import Sam3Engine

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(Sam3Engine, "from_config", refuse)


def test_brackets_in_a_missing_file_name_are_kept(capsys, tmp_path: Path, no_model_load: None) -> None:
    code, _, stderr = run(capsys, "segment", "../bad[red].jpg", "dog", "--model", str(tmp_path / "nowhere"))
    assert code == ImageError.exit_code, stderr
    assert "bad[red].jpg" in stderr and "bad.jpg" not in stderr


def test_brackets_in_file_names_and_prompts_are_printed_as_written(
    capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path
) -> None:
    (tmp_path / "bad[red].jpg").write_bytes(photo_path.read_bytes())
    (tmp_path / "x[bold].jpg").write_bytes(b"")
    code, stdout, stderr = run(
        capsys, "segment", "bad[red].jpg", "x[bold].jpg", "-p", "[dog]", "--model", str(tiny_model_dir), "-t", "0"
    )
    assert code == 1, stderr
    assert "bad[red].jpg" in stdout and "[dog] " in stdout
    assert "skipped x[bold].jpg" in stderr


@pytest.mark.parametrize(
    ("args", "message", "hint", "code"),
    [
        (["{tmp}/missing.jpg", "dog"], "no such file or directory: {tmp}/missing.jpg", "check the path", 3),
        (["shots/*.png", "-p", "dog"], "the glob shots/*.png matches no file", "quote it", 3),
        (["dog", "{photo}"], "no such file or directory: dog", "the image comes first", 3),
        (["dog", "photo.jpg"], "no such file or directory: dog", "s3seg segment photo.jpg dog", 3),
        (["{photo}", "--box", "5000,5000,6000,6000"], "lies outside", "pixels of the image", UsageError.exit_code),
        (["{photo}", "--box", "-50,-50,-1,-1"], "lies outside", "pixels of the image", UsageError.exit_code),
        (["{photo}", "--box", "neg:1,1,50,50"], "only negative boxes", "positive box", UsageError.exit_code),
    ],
)
def test_inputs_are_checked_before_the_model_loads(
    capsys, tmp_path: Path, photo_path: Path, no_model_load: None, args: list[str], message: str, hint: str, code: int
) -> None:
    args = [a.format(photo=photo_path, tmp=tmp_path) for a in args]
    got, _, stderr = run(capsys, "segment", *args, "--model", str(tmp_path / "nowhere"))
    assert got == code, stderr
    error, hint_line = stderr.strip().splitlines()[-2:]
    assert error.startswith("error: ") and message.format(tmp=tmp_path) in error
    assert hint_line.startswith("hint: ") and hint in hint_line
    assert "model" not in error and "loading model" not in stderr


def test_a_box_overlapping_the_image_is_accepted(
    capsys, tmp_path: Path, tiny_model_dir: Path, photo_path: Path
) -> None:
    code, _, stderr = run(
        capsys, "segment", str(photo_path), "--box", "-20,-20,100,100", "--model", str(tiny_model_dir), "--json"
    )
    assert code == 0, stderr


def test_status_line_while_the_model_loads(capsys, tiny_model_dir: Path, photo_path: Path) -> None:
    code, _, stderr = run(capsys, "segment", str(photo_path), "dog", "--model", str(tiny_model_dir), "--json")
    assert code == 0
    assert f"loading model {tiny_model_dir} …" in stderr


def test_a_row_is_printed_as_each_image_finishes(
    capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_dir: Path, photo_path: Path
) -> None:
    from s3seg import Client

    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(photo_path.read_bytes())
    monkeypatch.setenv("S3SEG_MAX_BATCH", "1")
    printed_before: list[str] = []
    real = Client.segment_loaded

    def spy(self: Client, images, request, **kwargs):  # type: ignore[no-untyped-def]
        printed_before.append(capsys.readouterr().out)
        return real(self, images, request, **kwargs)

    monkeypatch.setattr(Client, "segment_loaded", spy)
    code, stdout, _ = run(capsys, "segment", "a.jpg", "b.jpg", "-p", "person", "--model", str(tiny_model_dir))
    assert code == 0
    assert len(printed_before) == 2
    assert "a.jpg" not in printed_before[0]
    assert printed_before[1].startswith("a.jpg  ") and " ms" in printed_before[1]  # before b.jpg is segmented
    assert stdout.splitlines()[0].startswith("b.jpg  ")
    assert "instance(s) in 2 image(s) → s3seg-out/" in stdout


def test_everything_failed_says_so_and_exits_non_zero(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"not a picture")
    code, stdout, stderr = run(capsys, "segment", "a.jpg", "b.jpg", "-p", "dog", "--model", str(tiny_model_dir))
    assert code == ImageError.exit_code
    assert "instance(s)" not in stdout and "0 image" not in stdout + stderr
    assert "skipped a.jpg" in stderr and "skipped b.jpg" in stderr
    assert "error: no image was segmented: 2 images failed" in stderr


def test_a_model_file_that_is_not_a_checkpoint(capsys, tmp_path: Path, photo_path: Path) -> None:
    (tmp_path / "notimg.jpg").write_text("hello")
    code, _, stderr = run(capsys, "segment", str(photo_path), "dog", "--model", "notimg.jpg")
    assert code == 4, stderr
    assert "error: notimg.jpg is not a SAM3 checkpoint" in stderr and "sam3.pt" in stderr
    assert "pop from" not in stderr and "Traceback" not in stderr


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("S3SEG_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


def test_model_errors_are_phrased_for_python(empty_hub_cache: None, photo_path: Path) -> None:
    import s3seg
    from s3seg.errors import ModelError

    with pytest.raises(ModelError) as e:
        s3seg.Client("someone/not-cached").segment(photo_path, "dog")
    assert 'model="/path/to/not-cached"' in (e.value.hint or "") and "--model" not in (e.value.hint or "")


def test_model_errors_are_phrased_for_flags_on_the_command_line(
    capsys, empty_hub_cache: None, photo_path: Path
) -> None:
    code, _, stderr = run(capsys, "segment", str(photo_path), "dog", "--model", "someone/not-cached")
    assert code == 4
    assert "hint:" in stderr and "--model /path/to/not-cached" in stderr and "model=" not in stderr


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("S3SEG_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _store():  # type: ignore[no-untyped-def]
    from s3seg.config import load_settings
    from s3seg.store import store_from_settings

    return store_from_settings(load_settings())


def test_a_unique_id_prefix_names_a_task(capsys, data_dir: Path) -> None:
    store = _store()
    task = store.create_task(["dog"], metadata={})
    store.create_task(["cat"], metadata={})
    store.close()
    for command in ("results", "tasks"):
        code, stdout, stderr = run(capsys, command, task.id[:8], "--json")
        assert code == 0, stderr
        assert json.loads(stdout)["id"] == task.id


def test_an_ambiguous_id_prefix_is_a_clear_error(capsys, data_dir: Path) -> None:
    store = _store()
    firsts: dict[str, str] = {}
    while True:  # at most 17 tasks before two ids share their first character
        task = store.create_task(["dog"], metadata={})
        if task.id[0] in firsts:
            break
        firsts[task.id[0]] = task.id
    store.close()
    code, _, stderr = run(capsys, "results", task.id[0])
    assert code == UsageError.exit_code
    assert f"error: {task.id[0]} is ambiguous" in stderr and task.id in stderr and firsts[task.id[0]] in stderr
    assert "hint: type more of the id" in stderr
    code, _, stderr = run(capsys, "results", "zzzz")
    assert code == StoreError.exit_code and "no task zzzz" in stderr


def test_upload_refuses_a_file_that_is_not_an_image(capsys, tmp_path: Path, data_dir: Path, photo_path: Path) -> None:
    (tmp_path / "notimg.jpg").write_text("hello")
    code, _, stderr = run(capsys, "upload", str(photo_path), "notimg.jpg")
    assert code == ImageError.exit_code
    assert "error: notimg.jpg is not an image" in stderr
    assert not [p for p in data_dir.rglob("*") if p.is_file() and p.suffix == ".jpg"]  # nothing half-stored


def test_save_records_a_bad_file_as_an_error_task(capsys, tmp_path: Path, data_dir: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    code, _, stderr = run(capsys, "segment", "broken.jpg", "dog", "--save", "--model", str(tiny_model_dir))
    assert code == ImageError.exit_code
    store = _store()
    [task] = store.list()
    store.close()
    assert task.status == "error" and "broken.jpg" in (task.error or "")
    assert f"recorded as task {task.id}" in stderr
