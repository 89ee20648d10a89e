"""The web app in a real browser: Debian's Chromium driven by Playwright (pointed at /usr/bin/chromium;
it never downloads a browser of its own), against a real uvicorn server on loopback with the tiny model, local mode
(API key), the SQLite store and local files. Screenshots go to a temporary folder (or to
$S3SEG_WEB_SCREENSHOTS), the best of them to docs/images/ (web-<name>.png; web-gallery.png is gallery-video.png).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _server import LoopbackServer
from s3seg.config import Settings
from s3seg.engine import Sam3Engine
from s3seg.server import create_app
from s3seg.server._web import WEB_DIR
from s3seg.store import Store, store_from_settings

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
KEY = "secret"
XSS = "<img src=x onerror=alert(1)>"
Page = Any


# ------------------------------------------------------------------------------------------ services
@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(api_key=KEY, threshold=0.0, data_dir=tmp_path_factory.mktemp("web-data"))


@pytest.fixture(scope="module")
def server(engine: Sam3Engine, settings: Settings) -> Iterator[LoopbackServer]:
    s = LoopbackServer(create_app(engine, settings), headers={"X-API-Key": KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def store(settings: Settings, server: LoopbackServer) -> Iterator[Store]:
    """The server's own SQLite database, opened a second time: tasks made here are the local user's."""
    user = server.http.get("/api/v1/me").json()["data"]["user_id"]
    s = store_from_settings(settings)
    yield s.for_user(user)
    close = getattr(s, "close", None)
    if close is not None:
        close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("S3SEG_WEB_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Tab:
    """One browser tab with its own storage; JavaScript errors and dialogs are recorded."""

    def __init__(self, browser: Any, url: str, *, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page: Page = self.context.new_page()
        self.url = url
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, path: str = "/", key: str | None = KEY) -> Page:
        self.page.goto(self.url + path)
        if key is not None:
            self.page.fill("#api-key", key)
            self.page.click("#key-form button[type=submit]")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, server: LoopbackServer) -> Iterator[Tab]:
    t = Tab(browser, server.url)
    yield t
    assert not t.errors, t.errors
    assert not t.dialogs, t.dialogs
    t.close()


def canvas_hash(page: Page) -> str:
    data = page.eval_on_selector("canvas.overlay", "c => c.toDataURL()")
    return hashlib.sha256(data.encode()).hexdigest()


def run_segment(
    page: Page, image: Path, prompts: list[str], boxes: tuple[tuple[str, tuple[float, ...]], ...] = ()
) -> str:
    """Pick the image, draw exemplar boxes (``("pos" | "neg", (x0, y0, x1, y1))`` as fractions of the
    picture), enter the prompts, run with minimum score 0; answers the task id."""
    page.set_input_files("#image-file", str(image))
    for kind, (x0, y0, x1, y1) in boxes:
        page.check(f"#box-{kind}")
        r = page.locator("#box-canvas").bounding_box()
        page.mouse.move(r["x"] + x0 * r["width"], r["y"] + y0 * r["height"])
        page.mouse.down()
        page.mouse.move(r["x"] + x1 * r["width"], r["y"] + y1 * r["height"], steps=5)
        page.mouse.up()
    assert page.locator(".box-list li").count() == len(boxes)
    for i, prompt in enumerate(prompts):
        page.fill("#prompt-input", prompt)
        if i % 2:
            page.click("#add-prompt")
        else:
            page.press("#prompt-input", "Enter")
    page.fill("#threshold", "0")
    page.click("#run")
    page.wait_for_selector("#run-status a", timeout=90_000)
    href = page.get_attribute("#run-status a", "href") or ""
    found = re.fullmatch(r"/results/([0-9a-f-]{36})", href)
    assert found, href
    return found.group(1)


def coco_tracks(server: LoopbackServer, task_id: str, track_id: int) -> list[Any]:
    """One track's per-frame segmentations from a video task's stored tracks JSON (None where it is absent)."""
    doc = coco_of(server, task_id)
    segs: list[Any] = next(a for a in doc["annotations"] if a["track_id"] == track_id)["segmentations"]
    return segs


def coco_of(server: LoopbackServer, task_id: str) -> dict[str, Any]:
    task = server.http.get(f"/api/v1/results/{task_id}").json()["data"]
    doc: dict[str, Any] = server.http.get(task["files"]["result"]).json()
    return doc


def rest(page: Page) -> None:
    """Nothing hovered or focused (both highlight an instance)."""
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement?.blur()")


def set_slider(page: Page, value: float) -> None:
    page.eval_on_selector(
        "#score-threshold",
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        str(value),
    )


# --------------------------------------------------------------------------------------------- tests
def test_pages_files_and_headers(server: LoopbackServer) -> None:
    http = httpx.Client(base_url=server.url, timeout=30)  # no key: the page itself is public
    for path in ("/", "/gallery", "/profile", "/segment", "/results/0a1b2c"):
        page = http.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert '<script type="module" src="/app/main.js">' in page.text
    script = http.get("/app/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "unsafe-inline" not in script.headers["content-security-policy"]
    config = http.get("/app/config.json").json()
    assert config == {"auth": "api-key", "supabase_url": None, "supabase_anon_key": None}
    # API paths keep their own answers
    assert http.get("/api/v1/predict").json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert http.get("/api/v1/nope").json()["error"]["code"] == "NOT_FOUND"
    assert http.get("/app/nope.js").json()["error"]["code"] == "NOT_FOUND"
    assert http.get("/api/v1/me").status_code == 401
    docs = http.get("/docs")
    assert docs.status_code == 200 and "content-security-policy" not in docs.headers  # Swagger UI as before
    assert http.get("/health").json()["ok"] is True
    http.close()


def test_page_works_offline_and_has_no_inline_script() -> None:
    files = sorted(WEB_DIR.iterdir())
    assert {f.name for f in files} >= {"index.html", "style.css", "main.js", "api.js", "rle.js", "viewer.js"}
    for f in files:
        text = f.read_text()
        assert not re.search(r"\b(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I) or f.suffix == ".svg", (
            f"{f.name} loads something from the internet"
        )
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text, f.name
    html = (WEB_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and not re.search(r"\son[a-z]+\s*=", html)


def test_segment_two_prompts_view_filter_and_download(
    tab: Tab, server: LoopbackServer, photo_path: Path, shots: Path
) -> None:
    page = tab.open()
    page.wait_for_selector("#segment-form")
    task_id = run_segment(page, photo_path, ["person", "tie"])
    assert [c.strip("× \n") for c in page.locator("#prompt-chips .chip-text").all_inner_texts()] == ["person", "tie"]

    # the overlay and the list match the stored result
    coco = coco_of(server, task_id)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    expected = Counter(names[a["category_id"]] for a in coco["annotations"])
    n = len(coco["annotations"])
    assert n > 0 and set(expected) == {"person", "tie"}
    rows = page.locator(".instances li")
    assert rows.count() == n
    assert Counter(page.locator(".instances .prompt").all_inner_texts()) == expected
    count = page.locator(".count")
    assert count.get_attribute("data-shown") == str(n)
    assert page.inner_text("#run-status").startswith(f"Done: {n} instance")
    page.screenshot(path=str(shots / "segment.png"), full_page=True)

    # a click toggles one instance, hovering highlights one: both redraw the canvas
    shown = canvas_hash(page)
    first = page.locator(".instances li input[type=checkbox]").first
    first.click()
    rest(page)
    assert count.get_attribute("data-shown") == str(n - 1)
    assert canvas_hash(page) != shown
    first.click()
    rest(page)
    assert canvas_hash(page) == shown
    page.locator(".instances li").nth(1).hover()
    assert canvas_hash(page) != shown
    page.mouse.move(0, 0)
    assert canvas_hash(page) == shown

    # the slider filters live, without a new request
    scores = sorted({a["score"] for a in coco["annotations"]})
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2 if len(scores) > 1 else scores[0] + 1e-6
    above = sum(a["score"] >= cut for a in coco["annotations"])
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    set_slider(page, cut)
    assert count.get_attribute("data-shown") == str(above) and above < n
    assert page.locator(".instances li:not([hidden])").count() == above
    assert canvas_hash(page) != shown
    assert requests == []
    set_slider(page, 0)
    assert count.get_attribute("data-shown") == str(n)

    # downloads: the COCO document, the server's mask PNG, the overlay as shown
    import s3seg

    with page.expect_download() as got:
        page.click("text=COCO JSON")
    doc = json.loads(Path(got.value.path()).read_text())
    assert got.value.suggested_filename == "grace_hopper.json"
    [result] = s3seg.from_coco(doc)
    assert len(result) == n and result.masks.shape == (n, 600, 512)
    assert sorted(result.labels) == sorted(names[a["category_id"]] for a in coco["annotations"])
    # the page's RLE decoder (rle.js) gives exactly the masks s3seg decodes
    import numpy as np

    for i in (0, n // 2, n - 1):
        pixels = page.evaluate(
            "async (seg) => Array.from((await import('/app/rle.js')).maskPixels(seg))",
            doc["annotations"][i]["segmentation"],
        )
        assert sorted(pixels) == np.flatnonzero(result.masks[i]).tolist()
    from PIL import Image

    with page.expect_download() as got:
        page.click("text=Mask PNG")
    with Image.open(io.BytesIO(Path(got.value.path()).read_bytes())) as mask:
        assert mask.format == "PNG" and mask.size == (512, 600)
    with page.expect_download() as got:
        page.click("text=Overlay PNG")
    with Image.open(io.BytesIO(Path(got.value.path()).read_bytes())) as overlay:
        assert overlay.format == "PNG" and overlay.size == (512, 600)

    # the gallery lists it; its page opens by URL
    page.click("nav >> text=Gallery")
    card = page.locator(f'.card[data-task="{task_id}"]')
    card.locator("img").wait_for()
    assert card.get_attribute("data-status") == "done"
    assert card.locator(".prompts").inner_text() == "person, tie"
    page.screenshot(path=str(shots / "gallery.png"), full_page=True)
    page.goto(f"{server.url}/results/{task_id}")  # a fresh load: the key is still in this tab's session
    page.wait_for_selector(".instances li")
    assert page.locator(".instances li").count() == n
    assert page.locator("canvas.overlay").get_attribute("aria-label", timeout=5000)
    page.screenshot(path=str(shots / "detail.png"), full_page=True)
    page.click("nav >> text=Profile")
    page.wait_for_selector("#usage li a")
    assert "local user" in page.inner_text("#profile") and "not counted" in page.inner_text("#profile")
    page.screenshot(path=str(shots / "profile.png"))


def test_prompts_and_file_names_show_as_text(
    tab: Tab, server: LoopbackServer, photo_path: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "<b>bold.jpg"
    shutil.copy(photo_path, odd)
    page = tab.open()
    page.wait_for_selector("#segment-form")
    task_id = run_segment(page, odd, [XSS, "tie"], boxes=(("pos", (0.2, 0.1, 0.8, 0.7)), ("neg", (0.0, 0.8, 0.2, 1.0))))
    boxes = server.http.get(f"/api/v1/results/{task_id}").json()["data"]["metadata"]["boxes"]
    assert [b["positive"] for b in boxes] == [True, False]  # drawn on the picture, sent in image pixels
    assert boxes[0]["box"] == pytest.approx([0.2 * 512, 0.1 * 600, 0.8 * 512, 0.7 * 600], abs=4)
    assert page.locator("#prompt-chips .chip-text").first.inner_text() == XSS
    assert page.inner_text(".file-name") == odd.name
    assert XSS in page.locator(".instances .prompt").all_inner_texts()
    assert page.locator(".result .file").inner_text() == odd.name
    page.click("nav >> text=Gallery")
    page.locator(f'.card[data-task="{task_id}"] img').wait_for()
    assert page.locator(f'.card[data-task="{task_id}"] .prompts').inner_text() == f"{XSS}, tie"
    assert page.locator(f'.card[data-task="{task_id}"] .card-file').inner_text() == odd.name  # not its stored id
    page.goto(f"{server.url}/results/{task_id}")
    page.wait_for_selector(".instances li")
    assert XSS in page.inner_text("h1")
    assert page.locator(".result .file").inner_text() == odd.name  # a fresh load: the name the task keeps
    # nothing became markup: no <img src=x>, no <b> from the file name, no alert
    assert page.locator('img[src="x"]').count() == 0 and page.locator("main b").count() == 0
    assert tab.dialogs == []


# ---------------------------------------------------------------------------------------------- video
@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _video import make_clip

    return make_clip(tmp_path_factory.mktemp("clip") / "hopper clip.mp4", n=8)


def loaded_width(page: Page, selector: str, *, ready: int = 2) -> int:
    """The decoded width of the first <video> matching ``selector`` once it has a frame (``ready`` 4: once it
    can play through); -1: it cannot play it, -2: not ready after 20 s."""
    width: int = page.eval_on_selector(
        selector,
        """(v, ready) => new Promise((resolve) => {
            if (v.readyState >= ready) return resolve(v.videoWidth);
            v.addEventListener(ready >= 4 ? "canplaythrough" : "loadeddata", () => resolve(v.videoWidth));
            v.addEventListener("error", () => resolve(-1));
            setTimeout(() => resolve(-2), 20000);
        })""",
        ready,
    )
    return width


def test_video_progress_overlay_tracks_gallery_and_detail(
    tab: Tab, server: LoopbackServer, store: Store, clip: Path, shots: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3seg.server import _events

    monkeypatch.setattr(_events, "POLL_S", 0.05)  # the tiny model takes ~0.1 s a frame: look often
    page = tab.open()
    page.wait_for_selector("#segment-form")
    page.set_input_files("#image-file", str(clip))
    # a clip plays in the preview; the image's canvas and its exemplar boxes are gone
    page.locator("#video-preview").wait_for()
    assert page.locator("#box-canvas").is_hidden() and page.locator(".box-kind").is_hidden()
    assert page.inner_text(".file-name") == clip.name
    assert loaded_width(page, "#video-preview", ready=4) == 96  # Debian's Chromium decodes H.264
    page.fill("#prompt-input", "person")
    page.press("#prompt-input", "Enter")
    page.fill("#threshold", "0")
    # what the status line says while the task runs (8 frames of the tiny model go by faster than the
    # server writes progress, 4 times a second: frames moving are seen in the next test)
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                const bar = document.querySelector("#run-status .progress");
                if (bar) window.seen.push([bar.dataset.done, bar.dataset.total, bar.parentNode.textContent]);
            }).observe(document.getElementById("run-status"), {subtree: true, childList: true, attributes: true});
        }"""
    )
    page.click("#run")
    page.wait_for_selector("#run-status a", timeout=120_000)
    seen = page.evaluate("window.seen")
    assert seen and all(total == "8" for _, total, _ in seen), seen
    assert any(re.fullmatch(rf"(Queued|Tracking)… frame {done} of 8", text) for done, _, text in seen), seen
    href = page.get_attribute("#run-status a", "href") or ""
    found = re.fullmatch(r"/results/([0-9a-f-]{36})", href)
    assert found, href
    task_id = found.group(1)
    task = server.http.get(f"/api/v1/results/{task_id}").json()["data"]
    assert task["status"] == "done" and task["metadata"]["kind"] == "video"
    labels = sorted(task["labels"], key=lambda t: t["track_id"])
    n = len(labels)
    assert n > 0
    assert page.inner_text("#run-status").startswith(f"Done: {n} track{'s' if n != 1 else ''} through 8 frames")

    # the overlay MP4 plays in a <video>, fetched with the key (a blob: URL) from the files route
    video = page.locator("#result video.overlay-video")
    assert (video.get_attribute("src") or "").startswith("blob:")
    overlay = server.http.get(video.get_attribute("data-file") or "")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "video/mp4"
    assert loaded_width(page, "#result video.overlay-video", ready=4) == 96
    assert page.eval_on_selector("#result video.overlay-video", "v => v.duration") == pytest.approx(0.8, abs=0.15)

    # the tracks: id, prompt, score, frames present, as the task's labels say
    def rows() -> list[list[str]]:
        got: list[list[str]] = page.locator(".tracks tbody tr.track").evaluate_all(
            "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
        )
        return got

    expected = [[f"#{t['track_id']}", t["label"], f"{t['score']:.3f}", f"{t['frames']} of 8"] for t in labels]
    assert rows() == expected
    page.screenshot(path=str(shots / "video.png"), full_page=True)

    # a track's id shows the first frame it is in
    first = next(i for i, seg in enumerate(coco_tracks(server, task_id, labels[-1]["track_id"])) if seg)
    page.eval_on_selector(
        "#result video.overlay-video",
        """v => new Promise((resolve) => {
            v.addEventListener("seeked", resolve, {once: true});
            v.currentTime = v.duration;
        })""",
    )
    page.click(f'.tracks tr[data-track="{labels[-1]["track_id"]}"] .track-id button')
    at = page.eval_on_selector(  # (the tracks JSON is fetched on the first click: wait for the seek)
        "#result video.overlay-video",
        """v => new Promise((resolve) => {
            const check = () => v.currentTime < v.duration && resolve(v.currentTime);
            v.addEventListener("seeked", check);
            check();
        })""",
    )
    assert first * 0.1 <= at < (first + 1) * 0.1, (first, at)  # 10 frames a second

    # downloads: the tracks JSON and the overlay
    with page.expect_download() as got:
        page.click("text=Tracks JSON")
    assert got.value.suggested_filename == "hopper clip.tracks.json"
    doc = json.loads(Path(got.value.path()).read_text())
    assert doc["videos"][0]["length"] == 8
    assert sorted(a["track_id"] for a in doc["annotations"]) == [t["track_id"] for t in labels]
    with page.expect_download() as got:
        page.click("text=Overlay MP4")
    assert got.value.suggested_filename == "hopper clip.overlay.mp4"
    assert Path(got.value.path()).read_bytes() == overlay.content

    # a video task done before posters were kept (its overlay, no poster): the gallery plays its MP4 as before
    old = store.create_task(
        ["person"], project="old-video", metadata={"kind": "video", "video": task["metadata"]["video"]}
    )
    store.start(old.id)
    overlay_key = f"results/{task_id}/overlay.mp4"
    store.finish(old.id, source=overlay_key, mask=None, overlay=overlay_key, labels=[], metadata={})

    # the gallery shows it by its poster (a JPEG with a play mark, no image that could not load), next to the
    # image results; its MP4 is fetched only once the card is hovered, and then plays
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.click("nav >> text=Gallery")
    card = page.locator(f'.card[data-task="{task_id}"]')
    poster = card.locator("img.poster")
    poster.wait_for()
    assert card.get_attribute("data-kind") == "video" and card.locator(".badge.video").inner_text() == "video"
    assert card.locator(".play-mark").count() == 1 and card.locator("video").count() == 0
    assert poster.evaluate("i => i.decode().then(() => i.naturalWidth)") == 96  # smaller than 480: as it is
    page.locator(f'.card[data-task="{old.id}"] video').wait_for()  # the old task: its MP4 straight away
    assert loaded_width(page, f'.card[data-task="{old.id}"] video') == 96
    broken = page.locator(".gallery img").evaluate_all("imgs => imgs.filter(i => i.complete && !i.naturalWidth).length")
    assert broken == 0
    assert [u for u in asked if u.endswith(f"/{task_id}/files/poster")], asked
    assert not [u for u in asked if u.endswith(f"/{task_id}/files/overlay")], asked
    page.screenshot(path=str(shots / "gallery-video.png"), full_page=True)
    card.hover()
    card.locator("video").wait_for()
    assert [u for u in asked if u.endswith(f"/{task_id}/files/overlay")], asked
    assert loaded_width(page, f'.card[data-task="{task_id}"] video') == 96
    assert page.eval_on_selector(f'.card[data-task="{task_id}"] video', "v => v.muted && !v.controls")
    playing = page.eval_on_selector(
        f'.card[data-task="{task_id}"] video',
        """v => new Promise((resolve) => {
            if (!v.paused && v.currentTime > 0) return resolve(true);
            v.addEventListener("timeupdate", () => v.currentTime > 0 && resolve(!v.paused));
            setTimeout(() => resolve(false), 10000);
        })""",
    )
    assert playing
    page.mouse.move(0, 0)
    assert page.eval_on_selector(f'.card[data-task="{task_id}"] video', "v => v.paused")

    # its own page: the overlay, the tracks
    page.goto(f"{server.url}/results/{task_id}")
    page.wait_for_selector(".tracks tbody tr.track")
    assert rows() == expected
    assert page.inner_text("h1") == "Video result: person"
    assert page.locator("#result .file").inner_text() == clip.name  # the uploaded name, not the stored id
    assert loaded_width(page, "#result video.overlay-video", ready=4) == 96
    page.screenshot(path=str(shots / "video-detail.png"), full_page=True)


def test_a_running_video_task_shows_its_frames_live(tab: Tab, store: Store) -> None:
    meta = {"kind": "video", "video": "0" * 32 + ".mp4"}
    live = store.create_task(["person"], project="live-video", metadata=meta, frames_total=8)
    store.start(live.id)
    store.heartbeat(live.id, done=2)
    page = tab.open(f"/results/{live.id}")
    page.wait_for_selector('#view .status .progress[data-done="2"][data-total="8"]')
    assert page.text_content("#view .status") == "Tracking… frame 2 of 8"
    store.heartbeat(live.id, done=5)
    page.wait_for_selector('#view .status .progress[data-done="5"]', timeout=10_000)
    assert page.text_content("#view .status") == "Tracking… frame 5 of 8"

    page.click("nav >> text=Gallery")
    page.fill("#filter-project", "live-video")
    page.click(".filters button[type=submit]")
    card = page.locator(f'.card[data-task="{live.id}"]')
    card.locator(".placeholder", has_text="working… 5/8").wait_for()
    store.heartbeat(live.id, done=6)
    card.locator(".placeholder", has_text="working… 6/8").wait_for(timeout=10_000)

    # without the event stream (a proxy that drops it): the long-poll brings the frames, every 5 s
    page.route("**/events", lambda route: route.abort())
    page.goto(f"{tab.url}/results/{live.id}")
    page.wait_for_selector('#view .status .progress[data-done="6"][data-total="8"]')
    store.heartbeat(live.id, done=7)
    page.wait_for_selector('#view .status .progress[data-done="7"]', timeout=15_000)
    store.fail(live.id, "stopped by the test")
    page.locator("#view .error", has_text="This task failed: stopped by the test").wait_for(timeout=15_000)


def test_an_animated_gif_is_tracked_when_asked(tab: Tab, server: LoopbackServer, tmp_path: Path) -> None:
    from _video import make_animation

    gif = make_animation(tmp_path / "pan.gif", [100] * 6)
    page = tab.open()
    page.wait_for_selector("#segment-form")
    page.set_input_files("#image-file", str(gif))
    field = page.locator("#as-video-field")
    field.wait_for()  # an image with boxes until asked
    assert field.inner_text() == "Track the prompts through its 6 frames, as a video"
    assert page.locator("#box-canvas").is_visible() and page.locator(".box-kind").is_visible()
    page.check("#as-video")
    assert page.locator(".box-kind").is_hidden() and page.locator("#box-canvas").is_hidden()
    assert page.eval_on_selector("#anim-preview", "i => i.naturalWidth") == 96
    page.fill("#prompt-input", "person")
    page.press("#prompt-input", "Enter")
    page.fill("#threshold", "0")
    page.click("#run")
    page.wait_for_selector("#run-status a", timeout=120_000)
    task_id = (page.get_attribute("#run-status a", "href") or "").rsplit("/", 1)[-1]
    task = server.http.get(f"/api/v1/results/{task_id}").json()["data"]
    assert task["metadata"]["kind"] == "video" and task["metadata"]["video"].endswith(".anim.gif")
    assert page.locator(".tracks tbody tr.track").count() == len(task["labels"]) > 0
    assert "through 6 frames" in page.inner_text("#run-status")
    assert loaded_width(page, "#result video.overlay-video") == 96
    # the same file left alone is an image
    page.set_input_files("#image-file", str(tmp_path / "pan.gif"))
    field.wait_for()
    assert not page.is_checked("#as-video") and page.locator("#box-canvas").is_visible()


def test_a_clip_the_browser_cannot_play_is_still_sent(tab: Tab, tmp_path: Path) -> None:
    from _video import make_clip

    avi = make_clip(tmp_path / "old.avi", n=3, codec="mpeg4", container="avi")
    page = tab.open()
    page.wait_for_selector("#segment-form")
    page.set_input_files("#image-file", str(avi))
    page.locator("#preview-note", has_text="This browser cannot play this clip").wait_for()
    assert page.locator(".box-kind").is_hidden() and page.inner_text(".file-name") == "old.avi"
    page.click("#run")  # no prompt yet: a video is tracked by its prompts
    assert "add a prompt" in page.inner_text("#run-error")


def test_a_wrong_key_is_refused_clearly(tab: Tab, shots: Path) -> None:
    page = tab.open(key="not-the-key")
    alert = page.locator("#key-error")
    alert.wait_for()
    assert "The server refused this API key (missing or wrong API key)" in alert.inner_text()
    assert "S3SEG_API_KEY" in alert.inner_text()
    assert page.locator("#segment-form").count() == 0
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0  # a refused key is not kept
    assert "not-the-key" not in page.url
    page.screenshot(path=str(shots / "key.png"))
    page.fill("#api-key", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#segment-form")


def test_gallery_updates_pending_tasks_live(tab: Tab, store: Store) -> None:
    live = store.create_task(["cat"], project="live")
    page = tab.open("/gallery?project=live")
    card = page.locator(f'.card[data-task="{live.id}"]')
    card.wait_for()
    assert card.get_attribute("data-status") == "pending"
    store.start(live.id)
    page.wait_for_selector(f'.card[data-task="{live.id}"][data-status="processing"]', timeout=10_000)
    store.fail(live.id, "stopped by the test")
    page.wait_for_selector(f'.card[data-task="{live.id}"][data-status="error"]', timeout=10_000)

    # without the event stream (a proxy that drops it): the long-poll still brings the change
    page.route("**/events", lambda route: route.abort())
    polled = store.create_task(["dog"], project="live")
    page.reload()
    page.locator(f'.card[data-task="{polled.id}"][data-status="pending"]').wait_for()
    store.fail(polled.id, "stopped by the test")
    page.wait_for_selector(f'.card[data-task="{polled.id}"][data-status="error"]', timeout=15_000)


def test_gallery_pages_and_filters(tab: Tab, store: Store) -> None:
    from playwright.sync_api import expect

    made = []
    for i in range(13):
        task = store.create_task([f"thing {i}"], project="paged")
        store.fail(task.id, "made by the test")
        made.append(task.id)
    page = tab.open("/gallery")
    page.fill("#filter-project", "paged")
    page.select_option("#filter-status", "error")
    page.click(".filters button[type=submit]")
    page.wait_for_url("**/gallery?project=paged&status=error")
    page.locator(".card").first.wait_for()
    first_page = page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.task)")
    assert first_page == made[::-1][:12]  # newest first
    page.click("text=Older →")
    page.wait_for_url("**offset=12")
    expect(page.locator(".card")).to_have_count(1)  # (the page's CSP forbids wait_for_function's eval)
    assert page.locator(".card").get_attribute("data-task") == made[0]
    page.go_back()
    expect(page.locator(".card")).to_have_count(12)


def test_phone_width(browser: Any, server: LoopbackServer, shots: Path) -> None:
    t = Tab(browser, server.url, width=390, height=844)
    try:
        page = t.open()
        page.wait_for_selector("#segment-form")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        for field in ("#prompt-input", "#threshold", "#project", "#image-file"):
            label = page.locator(f'label[for="{field[1:]}"]')
            assert label.count() == 1 and label.inner_text().strip(), field
        page.screenshot(path=str(shots / "phone.png"), full_page=True)
        assert not t.errors
    finally:
        t.close()


# ------------------------------------------------------------------- Supabase mode: sign-in and profile
class FakeSupabaseAuth:
    """Supabase Auth's password grant on loopback (GoTrue itself cannot run here): checks the email and
    password, answers a session whose access token is signed by the test's key (served as the JWKS the
    server checks tokens against), with CORS as Supabase sends it. A stand-in, and said so."""

    def __init__(self, keys: Any, accounts: dict[str, tuple[str, Any, str]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.grants: list[str] = []
        auth = self

        class Handler(BaseHTTPRequestHandler):
            def cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
                self.send_header("Access-Control-Allow-Headers", "apikey, content-type, authorization")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self.cors()
                self.end_headers()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                grant = self.path.partition("grant_type=")[2]
                auth.grants.append(grant)
                account = accounts.get(body.get("email", ""))
                if self.headers.get("apikey") != "anon-key":
                    status, answer = 401, {"message": "Invalid API key"}
                elif grant != "password" or account is None or account[0] != body.get("password"):
                    status, answer = 400, {"error": "invalid_grant", "error_description": "Invalid login credentials"}
                else:
                    _, user, tier = account
                    token = keys.token(user, tier=tier, email=body["email"])
                    answer = {
                        "access_token": token,
                        "token_type": "bearer",
                        "expires_in": 3600,
                        "refresh_token": "refresh-" + str(user)[:8],
                        "user": {"id": str(user), "email": body["email"]},
                    }
                    status = 200
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_sign_in_and_profile_with_supabase(
    browser: Any, engine: Sam3Engine, pg: Any, pg_admin: Any, photo_path: Path, tmp_path: Path, shots: Path
) -> None:
    from s3seg.server._auth import TokenVerifier
    from s3seg.store._postgres import PostgresStore
    from test_api import ISSUER, Keys, new_user

    keys = Keys()
    user = new_user(pg_admin, credits=5, tier="pro")
    auth = FakeSupabaseAuth(keys, {"ada@example.com": ("correct horse", user, "pro")})
    settings = Settings(
        jwks_url=keys.url,
        jwt_issuer=ISSUER,
        supabase_url=auth.url,
        supabase_anon_key="anon-key",
        threshold=0.0,
        data_dir=tmp_path / "data",
    )
    store = PostgresStore(pg.dsn("postgres"))
    server = LoopbackServer(create_app(engine, settings, store=store, verifier=TokenVerifier.from_settings(settings)))
    tab = Tab(browser, server.url)
    try:
        csp = httpx.get(server.url + "/", timeout=10).headers["content-security-policy"]
        assert f"connect-src 'self' {auth.url}" in csp  # the page may talk to Supabase Auth, nothing else
        page = tab.page
        page.goto(server.url + "/")
        page.wait_for_selector("#sign-in-form")
        assert page.inner_text("#nav-profile") == "Sign in"
        page.fill("#email", "ada@example.com")
        page.fill("#password", "wrong")
        page.click("#sign-in-form button[type=submit]")
        page.locator("#sign-in-error", has_text="Invalid login credentials").wait_for()
        page.screenshot(path=str(shots / "sign-in.png"))
        page.fill("#password", "correct horse")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#segment-form")

        task_id = run_segment(page, photo_path, ["person"])
        page.click("nav >> text=Profile")
        page.locator("#usage li a").first.wait_for()
        facts = page.inner_text("#profile")
        assert "ada@example.com" in facts and "pro" in facts and "100 requests per minute" in facts
        assert re.search(r"Credits\s+4\b", facts), facts  # 5, one segmentation charged
        usage = page.locator("#usage li").first
        assert usage.locator("a").get_attribute("href") == f"/results/{task_id}" and "1 credit" in usage.inner_text()
        page.screenshot(path=str(shots / "profile-supabase.png"))
        assert "access_token" not in page.url and auth.grants == ["password", "password"]

        page.click("#sign-out")
        page.wait_for_selector("#sign-in-form")
        assert page.evaluate("localStorage.getItem('s3seg.session')") is None
        assert not tab.errors and not tab.dialogs
    finally:
        tab.close()
        server.stop()
        store.close()
        auth.close()
        keys.close()
