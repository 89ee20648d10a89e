// A stored result by URL: /results/<id>. Waits (live events) if the task is still running.

import { api, waitForTask } from "./api.js";
import { h, showError, when } from "./dom.js";
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
    heading.replaceChildren("Result: ", h("span", { text: (task.metadata?.prompts || [task.text_prompt]).join(", ") }));
    if (task.status === "pending" || task.status === "processing") {
      status.textContent = `This task is ${task.status}; it will show here when it is done.`;
      task = await waitForTask(task.task_id, (kind, data) => {
        if (kind === "status") status.textContent = `This task is ${data.status}…`;
      }, signal);
    }
    if (task.status === "error") {
      status.textContent = "";
      return showError(error, { message: `This task failed: ${task.error || "unknown error"}` });
    }
    status.replaceChildren(
      h("span", { text: task.project ? `Project ${task.project} · ` : "" }),
      `${task.labels.length} instances · ${when(task.created_at)}`,
    );
    await showResult(body, task, { signal });
  } catch (e) {
    if (!signal.aborted) showError(error, e);
  }
}
