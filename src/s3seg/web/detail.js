// A stored result by URL: /results/<id>. Waits (live events) if the task is still running; a video task
// shows its frames' progress on the way, then its overlay video and tracks.

import { api, waitForTask } from "./api.js";
import { h, showError, when } from "./dom.js";
import { followIn, isVideo, showTracks } from "./tracks.js";
import { showResult } from "./viewer.js";

export async function detailPage(view, { params, signal }) {
  const [id] = params;
  const heading = h("h1", {}, "Result");
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const error = h("div", { class: "error", role: "alert" });
  const body = h("section", { class: "viewer", id: "result", "aria-label": "Result" });
  view.replaceChildren(heading, status, error, body);
  try {
    let task = await api(`/api/v1/results/${encodeURIComponent(id)}`, { signal });
    const video = isVideo(task);
    heading.replaceChildren(video ? "Video result: " : "Result: ",
      h("span", { text: (task.metadata?.prompts || [task.text_prompt]).join(", ") }));
    if (task.status === "pending" || task.status === "processing") {
      const words = (now) => `This task is ${now}; it will show here when it is done.`;
      task = await waitForTask(task.task_id, followIn(status, task, words), signal);
    }
    if (task.status === "error") {
      status.textContent = "";
      return showError(error, { message: `This task failed: ${task.error || "unknown error"}` });
    }
    const n = task.labels.length;
    const what = video
      ? `${n} track${n === 1 ? "" : "s"} · ${task.metadata?.frames ?? task.frames_total} frames`
      : `${n} instances`;
    status.replaceChildren(h("span", { text: task.project ? `Project ${task.project} · ` : "" }), `${what} · ${when(task.created_at)}`);
    if (video) await showTracks(body, task, { signal });
    else await showResult(body, task, { signal });
  } catch (e) {
    if (!signal.aborted) showError(error, e);
  }
}
