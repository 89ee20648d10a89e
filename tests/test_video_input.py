"""Bad and unusual video input: a clear one-line error, exit code 3 and no files for what cannot be used;
the right frames for what is unusual but valid (rotation, variable frame rate, 10-bit, truncated)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from _cli import run
from _video import crops, make_animation, make_audio_only, make_clip
from s3seg import _videoio
from s3seg.errors import VideoError


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _empty_mkv(path: Path) -> Path:
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    return path


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return path


def _truncated(path: Path) -> Path:
    data = make_clip(path.with_name("whole.mp4"), n=8).read_bytes()  # index (moov) at the end
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "env", "args", "message"),
    [
        (_corrupt, {}, [], "not a video or corrupt"),
        (make_audio_only, {}, [], "has no video stream (only audio streams)"),
        (_empty_mkv, {}, [], "the video is empty"),
        (_truncated, {}, [], "not a video or corrupt"),
        (make_clip, {"S3SEG_MAX_VIDEO_PIXELS": "5000"}, [], "96×72 is over the limit of 5000 pixels"),
        (make_clip, {"S3SEG_MAX_VIDEO_SECONDS": "0.5"}, [], "0.8 s is over the limit of 0.5 s"),
        (make_clip, {}, ["--start", "5"], "no video frames between --start and --end"),
        (make_clip, {}, ["--start", "1.5x"], "not a time or frame number"),
    ],
    ids=[
        "corrupt",
        "audio-only",
        "zero-frames",
        "truncated-index",
        "resolution",
        "duration",
        "empty-range",
        "bad-time",
    ],
)
def test_unusable_video_is_one_clear_line_and_no_output(
    capsys, monkeypatch, tmp_path: Path, tiny_model_dir: Path, make, env, args, message
) -> None:  # type: ignore[no-untyped-def]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    clip = make(tmp_path / "clip.mp4")
    code, _out, err = run(capsys, "segment", str(clip), "person", "--model", str(tiny_model_dir), "--out", "out", *args)
    assert code in (VideoError.exit_code, 2), err
    assert message in err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) <= 2  # message + hint
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_write_leaves_nothing_half_written(capsys, monkeypatch, tmp_path: Path, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from s3seg.video import VideoResult

    def disk_full(self, path):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VideoResult, "write_tracks", disk_full)
    clip = make_clip(tmp_path / "clip.mp4", n=3)
    code, _, err = run(capsys, "segment", str(clip), "person", "--model", str(tiny_model_dir), "--out", "out")
    assert code != 0 and "No space left" in err
    assert list((tmp_path / "out").iterdir()) == []  # the finished overlay was removed too, no temp files


def test_truncated_file_with_index_first_is_read_to_its_last_good_frame(
    capsys, tmp_path: Path, tiny_model_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    whole = make_clip(tmp_path / "whole.mp4", n=30)
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(whole)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    code, out, err = run(capsys, "segment", str(cut), "person", "--model", str(tiny_model_dir), "--json")
    assert code == 0, err
    assert "warning" in err and "only" in err and "processed up to the last good frame" in err
    length = json.loads(out)["videos"][0]["length"]
    assert 0 < length < 30


def test_rotated_phone_video_is_turned_upright(tmp_path: Path) -> None:
    """A display matrix of -90° (a phone held upright) is applied, as EXIF orientation is for photos."""
    clip = make_clip(tmp_path / "rotated.mp4", n=2, width=96, height=64, rotation=-90)
    _, frames = _videoio.read(clip, max_pixels=10**8, max_seconds=60)
    first = next(iter(frames)).array
    assert first.shape == (96, 64, 3)
    upright = np.rot90(crops(2, 96, 64)[0], k=-1)  # turned clockwise
    assert np.abs(first.astype(int) - upright).mean() < 12  # H.264 loss only
    assert np.abs(first.astype(int) - np.rot90(crops(2, 96, 64)[0], k=1)).mean() > 30


def test_variable_frame_rate_keeps_each_timestamp(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.3, 0.9, 1.0, 1.6]  # irregular steps (the encoder keeps 1/10 s units)
    clip = make_clip(tmp_path / "vfr.mkv", n=6, times=times, container="matroska")
    _, frames = _videoio.read(clip, max_pixels=10**8, max_seconds=60)
    got = [f.time for f in frames]
    assert got == pytest.approx(times, abs=0.002)


def test_ten_bit_video_decodes_to_8_bit_rgb(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "ten.mp4", n=3, pix_fmt="yuv420p10le")
    _info, frames = _videoio.read(clip, max_pixels=10**8, max_seconds=60)
    arrays = [f.array for f in frames]
    assert len(arrays) == 3 and arrays[0].dtype == np.uint8 and arrays[0].shape == (72, 96, 3)
    assert np.abs(arrays[0].astype(int) - crops(3, 96, 72)[0]).mean() < 6


def test_videos_are_recognised_by_content(tmp_path: Path, photo_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.bin", n=2, container="mp4")  # no video extension
    assert _videoio.looks_like_video(clip)
    assert not _videoio.looks_like_video(photo_path)
    mkv = make_clip(tmp_path / "clip.dat", n=2, container="matroska")  # WebM's container
    assert _videoio.looks_like_video(mkv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _videoio.Position.parse("75f").frames and _videoio.Position.parse("2.5").value == 2.5


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animated_gif_and_webp_are_read_frame_by_frame_with_their_times(tmp_path: Path, suffix: str) -> None:
    """FFmpeg decodes GIF; an animated WebP (FFmpeg reads only still WebP) is decoded by Pillow."""
    durations = [100, 100, 300, 100, 200]
    path = make_animation(tmp_path / f"anim{suffix}", durations)
    assert _videoio.looks_like_video(path, animated=True) and not _videoio.looks_like_video(path)
    info, frames = _videoio.read(path, max_pixels=10**8, max_seconds=60)
    assert (info.width, info.height, info.frames) == (96, 72, 5)
    got = list(frames)
    assert [f.index for f in got] == [0, 1, 2, 3, 4]
    assert [f.time for f in got] == pytest.approx([0.0, 0.1, 0.2, 0.5, 0.6], abs=1e-6)
    for f, want in zip(got, crops(5, 96, 72), strict=True):
        assert f.array.shape == (72, 96, 3) and f.array.dtype == np.uint8
        assert np.abs(f.array.astype(int) - want).mean() < 12  # GIF's 256-colour palette
    assert np.abs(got[0].array.astype(int) - got[4].array).mean() > 10  # really the frames, not the first again


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_animated_input_tracks_with_video_and_is_an_image_without(
    capsys, tmp_path: Path, tiny_model_dir: Path, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    path = make_animation(tmp_path / f"anim{suffix}", [100, 100, 100])
    args = ["--model", str(tiny_model_dir), "-t", "0", "--json"]
    code, out, err = run(capsys, "segment", str(path), "person", "--video", *args)
    assert code == 0, err
    video = json.loads(out)["videos"][0]
    assert (video["width"], video["height"], video["length"]) == (96, 72, 3)
    assert video["timestamps"] == pytest.approx([0.0, 0.1, 0.2])
    code, out, err = run(capsys, "segment", str(path), "person", *args)
    assert code == 0, err
    assert "videos" not in json.loads(out)  # one image (its first frame), as before


def test_a_corrupt_webp_given_as_video_is_one_clear_line(capsys, tmp_path: Path, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.webp"
    path.write_bytes(b"RIFF\x20\x00\x00\x00WEBPVP8X" + bytes(40))
    code, _out, err = run(capsys, "segment", str(path), "person", "--video", "--model", str(tiny_model_dir))
    assert code == VideoError.exit_code
    assert "bad.webp: not an animated WebP or corrupt" in err and "Traceback" not in err
