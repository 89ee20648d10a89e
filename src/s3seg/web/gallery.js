// The gallery: the user's results as thumbnails, newest first, a page at a time, filtered by project
// and status; pending and processing ones follow their task events and update in place (a video's frames
// too). A video's thumbnail is its poster (a JPEG of one overlay frame) with a play mark; its overlay MP4 is
// fetched only when the card is first hovered or focused, then plays muted while hovered or focused. A video
// task done before posters were kept shows its overlay MP4 straight away.

import { api, fileBlob, waitForTask } from "./api.js";
import { h, showError, when } from "./dom.js";
import { isVideo } from "./tracks.js";

const PAGE = 12;
const LIVE = 3;

export async function galleryPage(view, { signal }) {
  const query = new URLSearchParams(location.search);
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const project = h("input", { type: "text", id: "filter-project", name: "project", value: query.get("project") || "" });
  const status = h(
    "select",
    { id: "filter-status", name: "status" },
    ["", "pending", "processing", "done", "error"].map((s) => h("option", { value: s, selected: s === (query.get("status") || "") }, s || "any")),
  );
  const filters = h(
    "form",
    { class: "filters", role: "search" },
    h("div", { class: "field" }, h("label", { for: "filter-project" }, "Project"), project),
    h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), status),
    h("button", { type: "submit" }, "Filter"),
  );
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    go({ project: project.value.trim(), status: status.value, offset: 0 });
  });
  const grid = h("ul", { class: "gallery", id: "gallery", "aria-label": "Results" });
  const error = h("div", { class: "error", role: "alert" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  view.replaceChildren(h("h1", {}, "Gallery"), filters, error, grid, pager);

  const urls = [];
  // Browsers open about six connections per server: follow at most LIVE unfinished tasks at once, so
  // that thumbnails and other requests still get through; the others wait their turn.
  const waiting = [];
  let live = 0;
  const watch = (start) => {
    waiting.push(start);
    pump();
  };
  const pump = () => {
    while (live < LIVE && waiting.length) {
      live += 1;
      waiting.shift()().finally(() => {
        live -= 1;
        pump();
      });
    }
  };
  signal.addEventListener("abort", () => urls.forEach((u) => URL.revokeObjectURL(u)));

  function go(next) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(next)) if (v) params.set(k, String(v));
    history.pushState(null, "", `/gallery${params.size ? `?${params}` : ""}`);
    window.dispatchEvent(new PopStateEvent("popstate"));
  }

  const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  if (query.get("project")) params.set("project", query.get("project"));
  if (query.get("status")) params.set("status", query.get("status"));
  let page;
  try {
    page = await api(`/api/v1/results?${params}`, { signal });
  } catch (e) {
    if (!signal.aborted) showError(error, e);
    return;
  }
  if (!page.items.length) grid.replaceChildren(h("li", { class: "muted" }, "No results yet: segment an image first."));
  else grid.replaceChildren(...page.items.map(card));

  const current = Object.fromEntries(query);
  pager.replaceChildren(
    h("button", { type: "button", disabled: offset === 0, onclick: () => go({ ...current, offset: Math.max(0, offset - PAGE) }) }, "← Newer"),
    h("span", { class: "muted" }, ` page ${Math.floor(offset / PAGE) + 1} `),
    h("button", { type: "button", disabled: page.next_offset === null, onclick: () => go({ ...current, offset: page.next_offset }) }, "Older →"),
  );

  function card(task) {
    const badge = h("span", { class: `badge ${task.status}`, text: task.status });
    const thumb = h("div", { class: "thumb" });
    const prompts = (task.metadata?.prompts || [task.text_prompt]).join(", ");
    const video = isVideo(task);
    const file = task.file_name || (video ? task.metadata?.video : task.metadata?.image) || "";
    const item = h(
      "li",
      { class: "card", "data-task": task.task_id, "data-status": task.status, "data-kind": video ? "video" : "image" },
      h("a", { href: `/results/${task.task_id}`, "data-nav": true },
        thumb,
        h("span", { class: "card-text" },
          h("span", { class: "prompts", text: prompts }),
          file ? h("span", { class: "card-file muted small", text: file }) : null,
          h("span", { class: "muted small" }, badge, " ", video ? h("span", { class: "badge video", text: "video" }) : null,
            " ", task.project ? h("span", { text: task.project }) : null,
            " ", when(task.created_at)))),
    );
    const fill = (t) => {
      item.dataset.status = t.status;
      badge.className = `badge ${t.status}`;
      badge.textContent = t.status;
      if (t.status === "done" && video && t.files?.poster && t.files?.overlay) {
        blobUrl(t.files.poster).then((url) => thumb.replaceChildren(...still(url, t.files.overlay))).catch(() => {});
      } else if (t.status === "done" && t.files?.overlay) {
        blobUrl(t.files.overlay).then((url) => {
          if (!video) return thumb.replaceChildren(h("img", { src: url, alt: `${prompts} in ${file}`, loading: "lazy" }));
          const player = clip(url);
          thumb.replaceChildren(player);
          hover((on) => (on ? player.play().catch(() => {}) : player.pause()));
        }).catch(() => {});
      } else {
        const frames = video && t.frames_total ? ` ${t.frames_done}/${t.frames_total}` : "";
        thumb.replaceChildren(h("span", { class: "placeholder", text: t.status === "error" ? "failed" : `working…${frames}` }));
      }
    };
    const blobUrl = (path) =>
      fileBlob(path, signal).then((blob) => {
        const url = URL.createObjectURL(blob);
        urls.push(url);
        return url;
      });
    const clip = (url, poster) =>
      h("video", { src: url, poster, muted: true, defaultMuted: true, loop: true, playsinline: true,
        preload: "metadata", "aria-label": `${prompts} tracked through ${file}` });
    // toggle(true) while the card is hovered or focused, toggle(false) when it no longer is
    const hover = (toggle) => {
      for (const [name, on] of [["mouseenter", true], ["mouseleave", false], ["focusin", true], ["focusout", false]]) {
        item.addEventListener(name, () => toggle(on));
      }
    };
    // the poster, and the overlay MP4 fetched the first time the card is hovered or focused
    const still = (poster, overlay) => {
      let player = null;
      let loading = null;
      let wanted = false;
      hover((on) => {
        wanted = on;
        if (player) return on ? player.play().catch(() => {}) : player.pause();
        if (!on || loading) return;
        loading = blobUrl(overlay).then((url) => {
          player = clip(url, poster);
          thumb.replaceChildren(player, mark());
          if (wanted) player.play().catch(() => {});
        }, () => { loading = null; });
      });
      return [h("img", { class: "poster", src: poster, alt: `${prompts} tracked through ${file}` }), mark()];
    };
    const mark = () => h("span", { class: "play-mark", "aria-hidden": "true", text: "▶" });
    fill(task);
    if (task.status === "pending" || task.status === "processing") {
      let now = task;
      watch(() =>
        waitForTask(task.task_id, (kind, data) => {
          if (kind === "status") now = { ...now, status: data.status };
          if (kind === "progress") now = { ...now, status: "processing", frames_done: data.done, frames_total: data.total };
          fill(now);
        }, signal).then(fill, () => {}),
      );
    }
    return item;
  }
}
