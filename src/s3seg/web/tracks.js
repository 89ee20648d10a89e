// A video task: its progress while it runs (frames done of the total, from the task events) and, when it
// is done, the server's overlay MP4 in a <video>, the tracks (id, prompt, score, frames present) and
// downloads. Used by the segment page, the result page and the gallery.
//
// The files routes want the page's credentials (a header), which a <video src> cannot send: the overlay
// is fetched with them and played from a blob: URL (the CSP allows media from blob:).

import { fileBlob } from "./api.js";
import { h, saveBlob, showError } from "./dom.js";
import { fileButton, stem } from "./viewer.js";

export const isVideo = (task) => task?.metadata?.kind === "video";

const shown = new WeakMap(); // container → the blob: URL it plays (revoked when replaced)

/** A blob: URL for `blob`, revoked when `signal` aborts. */
export function blobUrl(blob, signal) {
  const url = URL.createObjectURL(blob);
  signal?.addEventListener("abort", () => URL.revokeObjectURL(url));
  return url;
}

/** A progress bar with its words; `update({done, total})` moves it. */
export function frameProgress() {
  const bar = h("progress", { class: "frames", max: "1", value: "0", "aria-label": "Frames tracked" });
  const text = h("span", { class: "frames-text" });
  const el = h("span", { class: "progress" }, bar, text); // (the gap between them is CSS)
  return {
    el,
    update({ done, total }) {
      bar.max = Math.max(1, total);
      bar.value = Math.min(done, total);
      text.textContent = total ? `frame ${done} of ${total}` : "starting…";
      el.dataset.done = String(done);
      el.dataset.total = String(total);
    },
  };
}

/**
 * Keep `line` (a status line) telling how a running task goes: `words(status)` for an image; for a video,
 * "Queued…" or "Tracking…" and a bar of its frames. Answers the onUpdate for waitForTask.
 */
export function followIn(line, task, words) {
  const progress = frameProgress();
  let now = task.status;
  const show = () => {
    if (isVideo(task)) line.replaceChildren(now === "pending" ? "Queued… " : "Tracking… ", progress.el);
    else line.textContent = words(now);
  };
  progress.update({ done: task.frames_done, total: task.frames_total });
  show();
  return (kind, data) => {
    if (kind === "status") now = data.status;
    if (kind === "progress") {
      now = "processing";
      progress.update(data);
    }
    show();
  };
}

/**
 * Show a finished video task in `container`: the overlay MP4, the tracks, the downloads. `name` is the
 * clip's file name to show (default: the uploaded file's name, else its stored id). Answers {video, rows}.
 */
export async function showTracks(container, task, { name: displayName, signal } = {}) {
  const error = h("div", { class: "error", role: "alert" });
  container.replaceChildren(h("p", { class: "muted", role: "status" }, "Loading the result…"), error);
  const overlay = await fileBlob(task.files.overlay, signal);
  const previous = shown.get(container);
  if (previous) URL.revokeObjectURL(previous);
  const url = blobUrl(overlay, signal);
  shown.set(container, url);

  const meta = task.metadata || {};
  const fileName = displayName || task.file_name || meta.video || "video";
  const name = stem(fileName);
  const frames = Number(meta.frames) || 0;
  const tracks = [...(task.labels || [])].sort((a, b) => a.track_id - b.track_id);
  const words = `${tracks.length} track${tracks.length === 1 ? "" : "s"}`;
  const video = h("video", {
    class: "overlay-video",
    src: url,
    controls: true,
    playsinline: true,
    preload: "auto", // (already in memory)
    "data-file": task.files.overlay,
    "aria-label": `${fileName} with ${words} coloured over it`,
  });

  // a track's id is a button: the player jumps to the first frame it is in (the tracks JSON says which,
  // fetched on the first click)
  let doc = null;
  const firstFrame = async (trackId) => {
    doc ??= fileBlob(task.files.result, signal).then(async (blob) => JSON.parse(await blob.text()));
    const found = (await doc).annotations?.find((a) => a.track_id === trackId);
    return Math.max(0, found?.segmentations?.findIndex((s) => s !== null) ?? 0);
  };
  const seek = (trackId) => async () => {
    try {
      const first = await firstFrame(trackId);
      video.pause();
      const count = frames || 1; // the overlay has one frame per processed frame: aim at its middle
      video.currentTime = ((first + 0.5) * video.duration) / count;
    } catch (e) {
      if (!signal?.aborted) showError(error, e);
    }
  };
  const rows = tracks.map((t) =>
    h("tr", { class: "track", "data-track": String(t.track_id) },
      h("td", { class: "track-id" }, h("button", { type: "button", class: "link", title: "Show its first frame",
        onclick: seek(t.track_id) }, `#${t.track_id}`)),
      h("td", { class: "prompt", text: t.label }),
      h("td", { class: "score", text: Number(t.score).toFixed(3) }),
      h("td", { class: "present", text: frames ? `${t.frames} of ${frames}` : String(t.frames) })),
  );
  const table = h("table", { class: "tracks", "aria-label": "Tracks" },
    h("caption", { class: "count", "data-tracks": String(tracks.length) },
      `${words} through ${frames} frame${frames === 1 ? "" : "s"}`),
    h("thead", {}, h("tr", {}, ["Track", "Prompt", "Score", "Frames"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "4", class: "muted" },
      "No tracks: nothing matched the prompts above the minimum score."))),
  );

  const size = meta.width && meta.height ? ` · ${meta.width}×${meta.height}` : "";
  const rate = meta.fps ? ` · ${Number(meta.fps).toFixed(3).replace(/\.?0+$/, "")} fps` : "";
  const downloads = h(
    "div",
    { class: "downloads", role: "group", "aria-label": "Downloads" },
    fileButton("Tracks JSON", task.files.result, `${name}.tracks.json`, error),
    h("button", { type: "button", onclick: () => saveBlob(overlay, `${name}.overlay.mp4`) }, "Overlay MP4"),
  );
  container.replaceChildren(
    h("div", { class: "result video-result" },
      h("div", { class: "stage" }, video),
      h("div", { class: "side" },
        h("p", { class: "meta" }, h("span", { class: "file", text: fileName }), " · ",
          h("span", { class: "prompts", text: (meta.prompts || []).join(", ") }), `${size}${rate}`),
        table, downloads, error)),
  );
  return { video, rows };
}
