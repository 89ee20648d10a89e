"""`POST /api/v1/predict/video` on a real uvicorn server (loopback) with the tiny checkpoint: the whole answer
and the NDJSON stream equal a local run; the remote CLI and SDK (also without torch or PyAV) equal it too;
bad and oversized clips are refused with their codes and leave no temporary file; an image request
completes while a long video runs; a client that goes away stops the work."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import s3seg
from _cli import run as run_cli
from _server import LoopbackServer
from _video import make_animation, make_clip
from s3seg._http import HTTP, Hints
from s3seg._remote import _frames
from s3seg.config import Settings, load_settings
from s3seg.engine import Sam3Engine
from s3seg.engine._video import Sam3VideoEngine
from s3seg.errors import ServerError
from s3seg.server import create_app
from s3seg.server._batcher import Turns
from s3seg.server._video import tracks_summary
from s3seg.video import open_video

KEY = "video-key"
ROOT = Path(__file__).resolve().parent.parent
NDJSON = {"Accept": "application/x-ndjson"}


class Server(LoopbackServer):
    def __init__(self, engine: Sam3Engine, video_engine: Sam3VideoEngine, **settings: Any) -> None:
        self.settings = Settings(**{"api_key": KEY, "threshold": 0.0, **settings})
        super().__init__(create_app(engine, self.settings, video_engine=video_engine), headers={"X-API-Key": KEY})

    @property
    def turns(self) -> Turns:
        """The device's turns taken so far (image batches and video frames): a server-side work counter."""
        batcher = self.app.state.server.batcher
        assert batcher is not None
        return batcher.turns  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers (threads of this process) put their uploads in this test's own temporary folder, so what
    is left behind is this test's, whatever else runs on the machine."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("long") / "long.mp4", n=120)


@pytest.fixture
def serve(engine: Sam3Engine, video_engine: Sam3VideoEngine) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(**settings: Any) -> Server:
        servers.append(Server(engine, video_engine, **settings))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


@pytest.fixture(scope="module")
def local(video_engine: Sam3VideoEngine, clip: Path) -> dict[str, Any]:
    """The tracks document of a local run (threshold 0: random weights find something to track)."""
    doc = open_video(clip, ["person"], video_engine, load_settings(threshold=0.0)).run().to_tracks()
    assert doc["annotations"] and doc["videos"][0]["length"] == 8
    return doc


def same_tracks(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal documents, RLE for RLE; only the model's name differs (the server shows no local path)."""
    assert got["s3seg"]["model"] == Path(want["s3seg"]["model"]).name
    assert {**got, "s3seg": None} == {**want, "s3seg": None}


def post(server: Server, path: Path, *fields: tuple[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
    files = {"video": (path.name, path.read_bytes(), "video/mp4")}
    data: dict[str, Any] = {}
    for name, value in fields or (("prompts", "person"),):
        data.setdefault(name, []).append(value)
    return server.http.post("/api/v1/predict/video", files=files, data=data, headers=headers or {})


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("s3seg-predict-video-*")}


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["ok"] is False and body["error"]["message"]
    return response.status_code, body["error"]["code"]


# ------------------------------------------------------------------------------------------ results
def test_whole_answer_and_stream_equal_the_local_run(server: Server, clip: Path, local: dict[str, Any]) -> None:
    before = leftovers()
    whole = post(server, clip)
    assert whole.status_code == 200, whole.text
    same_tracks(whole.json()["data"], local)

    streamed = post(server, clip, headers=NDJSON)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    # an 8-frame clip is shorter than the tracker's hold-back (15 frames): its frames come out at the end,
    # after a progress line for each frame the model took in
    assert [line["type"] for line in lines] == ["start"] + ["progress"] * 8 + ["frame"] * 8 + ["done"]
    assert [line["frames_done"] for line in lines[1:9]] == list(range(1, 9))
    start, frames, done = lines[0], lines[9:-1], lines[-1]
    assert start["name"] == "clip.mp4" and start["prompts"] == ["person"] and start["frames_total"] == 8
    same_tracks(done["tracks"], tracks_summary(local))  # the document less what the frame lines carried
    video = local["videos"][0]
    assert [f["frame"] for f in frames] == video["frame_indices"] and [f["position"] for f in frames] == list(range(8))
    for f in frames:  # each frame line holds that frame's masks, as in the tracks document
        by_track = {a["track_id"]: a["segmentations"][f["position"]] for a in local["annotations"]}
        assert {i["track_id"]: i["segmentation"] for i in f["instances"]} == {
            t: rle for t, rle in by_track.items() if rle is not None
        }
    assert leftovers() <= before  # the uploads' folders are gone


def test_the_stream_sends_each_mask_once(server: Server, clip: Path, local: dict[str, Any]) -> None:
    """The done line repeats none of the frame lines' masks, boxes or areas (it used to carry the whole
    document: every RLE a second time, and a last line as large as the answer for a client to hold)."""
    streamed = post(server, clip, headers=NDJSON)
    assert streamed.status_code == 200, streamed.text
    raw = streamed.content.splitlines(keepends=True)
    frame_bytes = sum(len(line) for line in raw if json.loads(line)["type"] == "frame")
    done = json.loads(raw[-1])
    assert done["type"] == "done" and len(done["tracks"]["annotations"]) == len(local["annotations"]) > 0
    assert b"segmentation" not in raw[-1] and b"counts" not in raw[-1], raw[-1][:200]
    assert all(set(a) == {"id", "video_id", "track_id", "category_id", "score"} for a in done["tracks"]["annotations"])
    whole = json.dumps(local, separators=(",", ":")).encode()
    assert len(whole) > frame_bytes // 2  # the masks are most of both: a done line with them would fail below
    # start, progress and done lines are small: the whole stream is well under twice its frame lines (it used to
    # be over twice: the done line repeated every frame line's RLE)
    assert len(streamed.content) < 1.5 * frame_bytes, (len(streamed.content), frame_bytes, len(raw[-1]))


def test_the_remote_reader_checks_the_frames_against_the_done_line(server: Server, clip: Path) -> None:
    """The reader rebuilds the document from the frame lines and checks it against the done line: a stream
    that lost a frame line, or whose done line names other tracks, is an error, not a different result
    (the server's real lines, one of them left out or changed)."""
    lines = [json.loads(line) for line in post(server, clip, headers=NDJSON).text.splitlines()]
    hints = Hints(timeout="-", unreachable="-")
    http = HTTP(server.url, where="the test server", hints=hints, timeout_s=10)

    def read(kept: list[dict[str, Any]]) -> int:
        return sum(1 for _ in _frames(http, iter(kept[1:]), ("person",), None, None))

    assert read(lines) == 8
    frames = [i for i, line in enumerate(lines) if line["type"] == "frame"]
    with pytest.raises(ServerError, match=r"sent 7 frame\(s\)"):
        read([line for i, line in enumerate(lines) if i != frames[3]])
    done = lines[-1]
    fewer = {**done, "tracks": {**done["tracks"], "annotations": done["tracks"]["annotations"][1:]}}
    with pytest.raises(ServerError, match="its done line says 8"):
        read([*lines[:-1], fewer])
    with pytest.raises(ServerError, match="malformed done line"):
        read([*lines[:-1], {"type": "done"}])
    http.close()


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_an_animated_gif_or_webp_is_a_video_here(
    server: Server, video_engine: Sam3VideoEngine, tmp_path: Path, suffix: str
) -> None:
    """The client says it sends a video: an animated GIF (FFmpeg) or WebP (Pillow) is tracked as one, with
    the same tracks as a local run."""
    path = make_animation(tmp_path / f"anim{suffix}", [100, 100, 200, 100])
    answer = post(server, path)
    assert answer.status_code == 200, answer.text
    doc = answer.json()["data"]
    assert doc["videos"][0]["length"] == 4 and doc["videos"][0]["timestamps"] == pytest.approx([0, 0.1, 0.2, 0.4])
    same_tracks(doc, open_video(path, ["person"], video_engine, load_settings(threshold=0.0)).run().to_tracks())


def test_video_options_are_those_of_the_cli(server: Server, clip: Path, video_engine: Sam3VideoEngine) -> None:
    options = {"start": "2f", "end": "7f", "every": 2, "max_objects": 1, "threshold": 0.0}
    want = open_video(clip, ["person", "face"], video_engine, load_settings(), **options).run().to_tracks()  # type: ignore[arg-type]
    fields = [("prompts", "person"), ("prompts", "face"), *((k, str(v)) for k, v in options.items())]
    got = post(server, clip, *fields)
    assert got.status_code == 200, got.text
    same_tracks(got.json()["data"], want)
    assert got.json()["data"]["videos"][0]["frame_indices"] == [2, 4, 6]


def test_sdk_and_cli_on_a_server_equal_the_local_run(
    capsys: pytest.CaptureFixture[str], server: Server, clip: Path, local: dict[str, Any]
) -> None:
    with s3seg.Client(server_url=server.url, api_key=KEY) as client:
        taken: list[int] = []  # the server's progress lines, as they arrive
        video = client.segment_video(clip, "person", on_frame=taken.append)  # the server's threshold (0) applies
        assert video.expected_frames == 8
        frames = list(video)  # as the server sends them
        assert taken == list(range(1, 9))
        assert len(frames) == 8 and frames[0].result.masks.shape[1:] == (72, 96)
        same_tracks(video.to_tracks(), local)
    code, out, err = run_cli(capsys, "segment", str(clip), "person", "--server", server.url, "--api-key", KEY, "--json")
    assert code == 0, err
    same_tracks(json.loads(out), local)


def test_the_light_client_needs_neither_torch_nor_pyav(server: Server, clip: Path, local: dict[str, Any]) -> None:
    """The remote SDK in a fresh interpreter where importing torch, transformers or av fails."""
    script = f"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "av"):
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
import s3seg
with s3seg.Client(server_url={server.url!r}, api_key={KEY!r}) as client:
    print(json.dumps(client.segment_video({str(clip)!r}, "person").run().to_tracks()))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    same_tracks(json.loads(done.stdout), local)


# ------------------------------------------------------------------------------------------ refusals
def test_bad_and_oversized_videos_are_refused_and_leave_nothing(
    serve: Callable[..., Server], clip: Path, tmp_path: Path
) -> None:
    before = leftovers()
    size = clip.stat().st_size
    server = serve(max_video_mb=size * 2 / 1024 / 1024)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    assert error_of(post(server, corrupt)) == (415, "UNSUPPORTED_VIDEO")
    big = tmp_path / "big.mp4"
    big.write_bytes(clip.read_bytes() + b"\x00" * (size * 2))
    assert error_of(post(server, big)) == (413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        boundary = b"--b\r\nContent-Disposition: form-data; name=video; filename=big.mp4\r\n\r\n"
        yield boundary
        for _ in range(size * 3 // 1024):
            yield b"\x00" * 1024

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    streamed = server.http.post("/api/v1/predict/video", content=chunks(), headers=headers)
    assert error_of(streamed) == (413, "PAYLOAD_TOO_LARGE")
    assert error_of(post(server, clip, ("prompts", "person"), ("every", "0"))) == (422, "VALIDATION_ERROR")
    assert error_of(post(server, clip, ("prompts", "person"), ("start", "soon"))) == (422, "BAD_RANGE")
    assert error_of(post(server, clip, ("threshold", "0.5"))) == (422, "VALIDATION_ERROR")  # no prompt
    assert error_of(post(server, clip, ("prompts", "x"), ("colour", "red"))) == (422, "INVALID_REQUEST")
    no_file = server.http.post("/api/v1/predict/video", data={"prompts": "person"}, files={"other": ("a", b"x")})
    assert error_of(no_file) == (422, "INVALID_REQUEST")
    assert error_of(server.http.post("/api/v1/predict/video", json={"prompts": ["x"]})) == (422, "INVALID_REQUEST")
    assert error_of(httpx.post(server.url + "/api/v1/predict/video")) == (401, "UNAUTHORIZED")
    for limits, what in [
        ({"max_video_frames": 5}, "8 frames"),
        ({"max_video_pixels": 96 * 72 - 1}, "96×72"),
        ({"max_video_seconds": 0.5}, "over the limit of 0.5 s"),
    ]:
        limited = serve(**limits)
        refused = post(limited, clip)
        assert error_of(refused) == (413, "VIDEO_TOO_LARGE") and what in refused.json()["error"]["message"]
    assert leftovers() <= before


def test_a_limit_met_mid_stream_ends_it_with_an_error_line(serve: Callable[..., Server], clip: Path) -> None:
    """--start makes the header's frame count useless: the frames are counted as they come."""
    server = serve(max_video_frames=3)
    lines = [
        json.loads(x)
        for x in post(server, clip, ("prompts", "person"), ("start", "1f"), headers=NDJSON).text.splitlines()
    ]
    assert lines[0]["type"] == "start" and lines[-1]["type"] == "error"
    assert lines[-1]["status"] == 413 and lines[-1]["error"]["code"] == "VIDEO_TOO_LARGE"
    assert error_of(post(server, clip, ("prompts", "person"), ("start", "1f"))) == (413, "VIDEO_TOO_LARGE")
    with s3seg.Client(server_url=server.url, api_key=KEY) as client:
        video = client.segment_video(clip, "person", start="1f")
        with pytest.raises(s3seg.errors.VideoTooLarge, match="over the limit of 3"):
            video.run()


# ---------------------------------------------------------------------------------------- scheduling
def test_turns_are_first_come_first_served() -> None:
    turns, order = Turns(), []
    turns.__enter__()  # held: the others queue up in the order they ask
    threads = []
    for name in "abc":
        thread = threading.Thread(target=lambda n=name: (turns.__enter__(), order.append(n), turns.__exit__()))
        thread.start()
        threads.append(thread)
        time.sleep(0.2)  # a asks before b, b before c
    turns.__exit__()
    for thread in threads:
        thread.join(5)
    assert order == ["a", "b", "c"] and turns.served == 4


def test_an_image_request_completes_while_a_long_video_runs(server: Server, long_clip: Path, photo_path: Path) -> None:
    lines: list[dict[str, Any]] = []
    first = threading.Event()

    def stream() -> None:
        files = {"video": (long_clip.name, long_clip.read_bytes(), "video/mp4")}
        with server.http.stream(
            "POST", "/api/v1/predict/video", files=files, data={"prompts": "person"}, headers=NDJSON
        ) as r:
            for text in r.iter_lines():
                lines.append(json.loads(text))
                if lines[-1]["type"] == "frame":
                    first.set()

    video = threading.Thread(target=stream)
    video.start()
    assert first.wait(120)
    image = server.http.post("/api/v1/predict", files={"image": photo_path.read_bytes()}, data={"prompts": "person"})
    frames_when_answered = sum(line["type"] == "frame" for line in lines)
    video.join(300)
    assert image.status_code == 200 and image.json()["data"]["annotations"]
    assert lines[-1]["type"] == "done" and sum(line["type"] == "frame" for line in lines) == 120
    progress = [line["frames_done"] for line in lines if line["type"] == "progress"]
    assert progress == list(range(1, 121))
    first_frame = next(k for k, line in enumerate(lines) if line["type"] == "frame")
    # the tracker's hold-back: the first frame comes out as the 15th is taken in (reported as the 16th is asked)
    assert sum(line["type"] == "progress" for line in lines[:first_frame]) >= 14
    assert frames_when_answered < 120 - 10, "the image waited for the video to end"


def test_a_client_that_goes_away_stops_the_work(
    server: Server, long_clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="s3seg.server")
    folders = leftovers()
    files = {"video": (long_clip.name, long_clip.read_bytes(), "video/mp4")}
    # streamed: the client closes the answer after the first frame line
    with server.http.stream(
        "POST", "/api/v1/predict/video", files=files, data={"prompts": "person"}, headers=NDJSON
    ) as r:
        for text in r.iter_lines():
            if json.loads(text)["type"] == "frame":
                break
    stopped = settle(server)
    assert stopped < 60, f"{stopped} frames: the video went on after its client left"
    # whole answer: the client gives up waiting
    before = server.turns.served
    with pytest.raises(httpx.ReadTimeout):
        server.http.post("/api/v1/predict/video", files=files, data={"prompts": "person"}, timeout=0.5)
    assert settle(server) - before < 60
    assert re.search(r"long\.mp4: the client went away; stopped after \d+ frame", caplog.text)
    assert leftovers() <= folders


def test_videos_at_once_are_limited(serve: Callable[..., Server], long_clip: Path, clip: Path) -> None:
    server = serve(max_videos=1)
    files = {"video": (long_clip.name, long_clip.read_bytes(), "video/mp4")}
    with server.http.stream(
        "POST", "/api/v1/predict/video", files=files, data={"prompts": "person"}, headers=NDJSON
    ) as r:
        lines = r.iter_lines()  # kept: dropping a half-read iterator closes the connection
        assert json.loads(next(lines))["type"] == "start" and json.loads(next(lines))["type"] == "progress"
        busy = post(server, clip)
        assert error_of(busy) == (503, "BUSY") and busy.headers["retry-after"] == "1"
        assert "S3SEG_MAX_VIDEOS" in busy.json()["error"]["hint"]
    deadline = time.monotonic() + 30  # its client went away: the slot is free again
    while (answer := post(server, clip)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answer.status_code == 200 and server.app.state.server.videos_running == 0


def test_a_video_holds_its_working_set_in_the_memory_budget(
    serve: Callable[..., Server], clip: Path, long_clip: Path
) -> None:
    """96×72 frames, 16 tracks: 18 held frames × 3 bytes + 16 masks × 1 byte a pixel = 483,840 bytes. A 0.3 MB
    budget can never take it (413); with 0.6 MB a video holds most of it while it is tracked, so a 200×200 RGB
    image (280,000 bytes to decode) and a second video find no room (503 BUSY, no wait) until it is done."""
    before = leftovers()
    small = serve(memory_budget_mb=0.3)
    refused = post(small, clip)
    assert error_of(refused) == (413, "VIDEO_TOO_LARGE"), refused.text
    assert "S3SEG_MEMORY_BUDGET_MB" in refused.json()["error"]["hint"] and "clip.mp4" in refused.text
    assert small.app.state.server.budget.used == 0 and small.app.state.server.videos_running == 0

    server = serve(memory_budget_mb=0.6, memory_wait_s=0)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (120, 80, 40)).save(buffer, format="PNG")
    image = {"image": ("photo.png", buffer.getvalue(), "image/png")}
    files = {"video": (long_clip.name, long_clip.read_bytes(), "video/mp4")}
    with server.http.stream(
        "POST", "/api/v1/predict/video", files=files, data={"prompts": "person"}, headers=NDJSON
    ) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["type"] == "start"  # reserved before the answer starts
        assert server.app.state.server.budget.used == 483_840
        busy = server.http.post("/api/v1/predict", files=image, data={"prompts": "person"})
        assert error_of(busy) == (503, "BUSY") and busy.headers["retry-after"] == "1"
        assert "memory budget" in busy.json()["error"]["message"]
        assert error_of(post(server, clip)) == (503, "BUSY")
        done = [json.loads(line) for line in lines]
    assert done[-1]["type"] == "done"
    assert server.app.state.server.budget.used == 0
    answer = server.http.post("/api/v1/predict", files=image, data={"prompts": "person"})
    assert answer.status_code == 200, answer.text
    assert post(server, clip).status_code == 200 and server.app.state.server.budget.used == 0
    assert leftovers() <= before


def settle(server: Server) -> int:
    """The device's turns once they stop increasing (work stopped) for a second."""
    last = -1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = server.turns.served
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError("the device never went idle")


# ----------------------------------------------------------------------------------------------- docs
def test_the_docs_curl_example_runs(server: Server, clip: Path, tmp_path: Path) -> None:
    """docs/server.md's video block, run as written (bash, curl, jq); it prints what the doc says."""
    text = (ROOT / "docs" / "server.md").read_text()
    found = re.search(r"<!-- video-curl -->\s*```bash\n(.*?)```\s*printed\s*```\n(.*?)```", text, re.S)
    assert found, "docs/server.md lost its video curl example"
    env = {**os.environ, "U": server.url, "S3SEG_API_KEY": KEY, "CLIP": str(clip)}
    script = found.group(1)
    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == found.group(2), done.stdout
