// The result viewer: the image with one colour per instance, the instance list (hover highlights,
// click toggles), a score slider that filters live, and downloads. Used by the segment page and
// the result page (/results/<id>).

import { fileBlob } from "./api.js";
import { h, saveBlob, showError } from "./dom.js";
import { maskPixels } from "./rle.js";

const GOLDEN = 137.508; // degrees: neighbouring instances get far-apart hues

function colour(i) {
  const hue = (i * GOLDEN) % 360;
  const f = (n) => {
    const k = (n + hue / 30) % 12;
    return Math.round(255 * (0.5 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

export function stem(name) {
  const base = String(name || "result").split(/[\\/]/).pop();
  return base.replace(/\.[^.]*$/, "") || "result";
}

/** A button that downloads one of the result's files (`path`, a files.* route) as `name`. */
export function fileButton(text, path, name, error) {
  return h("button", {
    type: "button",
    onclick: async () => {
      try {
        saveBlob(await fileBlob(path), name);
      } catch (e) {
        showError(error, e);
      }
    },
  }, text);
}

/**
 * Show a finished task in `container`. `image` is the source as a Blob (or it is downloaded), `name`
 * the file name to show;
 * answers the viewer's state (for tests and the segment page).
 */
export async function showResult(container, task, { image, name: displayName, signal } = {}) {
  const error = h("div", { class: "error", role: "alert" });
  container.replaceChildren(h("p", { class: "muted", role: "status" }, "Loading the result…"), error);
  const [coco, source] = await Promise.all([
    fileBlob(task.files.result, signal).then(async (blob) => JSON.parse(await blob.text())),
    image ? Promise.resolve(image) : fileBlob(task.files.source, signal),
  ]);
  const bitmap = await createImageBitmap(source);
  const info = coco.images?.[0] || {};
  const names = new Map((coco.categories || []).map((c) => [c.id, c.name]));
  const instances = (coco.annotations || []).map((ann, i) => ({
    index: i,
    prompt: names.get(ann.category_id) ?? String(ann.category_id),
    score: Number(ann.score),
    pixels: maskPixels(ann.segmentation),
    colour: colour(i),
    on: true,
  }));
  const runThreshold = Number(task.metadata?.options?.threshold ?? 0);
  const fileName = displayName || task.file_name || info.file_name || task.metadata?.image || "image";

  // ----- canvas: the source, then the visible masks blended over it
  const canvas = h("canvas", { width: bitmap.width, height: bitmap.height, class: "overlay", role: "img" });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const base = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  let threshold = runThreshold;
  let hovered = null;

  const visible = (inst) => inst.on && inst.score >= threshold;

  function draw() {
    const out = new ImageData(new Uint8ClampedArray(base.data), base.width, base.height);
    const px = out.data;
    for (const inst of instances) {
      if (!visible(inst)) continue;
      const alpha = hovered === null ? 0.5 : hovered === inst.index ? 0.8 : 0.2;
      const [r, g, b] = inst.colour;
      for (const p of inst.pixels) {
        const o = p * 4;
        px[o] += (r - px[o]) * alpha;
        px[o + 1] += (g - px[o + 1]) * alpha;
        px[o + 2] += (b - px[o + 2]) * alpha;
      }
    }
    ctx.putImageData(out, 0, 0);
  }

  // ----- the instance list
  const count = h("p", { class: "count", role: "status", "aria-live": "polite" });
  const rows = instances.map((inst) => {
    const box = h("input", {
      type: "checkbox",
      checked: true,
      id: `inst-${inst.index}`,
      onchange: (e) => {
        inst.on = e.target.checked;
        update();
      },
    });
    const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.backgroundColor = `rgb(${inst.colour.join(",")})`;
    const row = h(
      "li",
      { class: "instance", "data-index": String(inst.index) },
      box,
      h("label", { for: `inst-${inst.index}` }, swatch, h("span", { class: "prompt", text: inst.prompt }),
        h("span", { class: "score", text: inst.score.toFixed(3) })),
    );
    const highlight = (on) => () => {
      hovered = on ? inst.index : null;
      row.classList.toggle("hover", on);
      draw();
    };
    row.addEventListener("mouseenter", highlight(true));
    row.addEventListener("mouseleave", highlight(false));
    box.addEventListener("focus", highlight(true));
    box.addEventListener("blur", highlight(false));
    return row;
  });
  const list = h("ul", { class: "instances", "aria-label": "Instances" }, rows);

  // ----- the score slider (filters what was returned; nothing re-runs)
  const minScore = Math.min(runThreshold, ...instances.map((i) => i.score));
  const slider = h("input", {
    type: "range",
    id: "score-threshold",
    min: String(Math.max(0, Math.floor(minScore * 1000) / 1000)),
    max: "1",
    step: "any",
    value: String(runThreshold),
    oninput: (e) => {
      threshold = Number(e.target.value);
      update();
    },
  });
  const sliderValue = h("output", { for: "score-threshold" });

  function update() {
    let shown = 0;
    for (const inst of instances) {
      const above = inst.score >= threshold;
      rows[inst.index].hidden = !above;
      if (visible(inst)) shown += 1;
    }
    const above = instances.filter((i) => i.score >= threshold).length;
    sliderValue.textContent = threshold.toFixed(3);
    count.textContent = `${shown} of ${instances.length} instances shown (${above} at or above the threshold)`;
    count.dataset.shown = String(shown);
    count.dataset.above = String(above);
    canvas.setAttribute(
      "aria-label",
      `${fileName} with ${shown} segmented instance${shown === 1 ? "" : "s"} coloured over it`,
    );
    draw();
  }

  // ----- downloads
  const name = stem(fileName);
  const downloads = h(
    "div",
    { class: "downloads", role: "group", "aria-label": "Downloads" },
    h("button", {
      type: "button",
      onclick: () => saveBlob(new Blob([JSON.stringify(coco)], { type: "application/json" }), `${name}.json`),
    }, "COCO JSON"),
    fileButton("Mask PNG", task.files.mask, `${name}.mask.png`, error),
    h("button", {
      type: "button",
      onclick: () => canvas.toBlob((blob) => saveBlob(blob, `${name}.overlay.png`), "image/png"),
    }, "Overlay PNG"),
  );

  const prompts = (task.metadata?.prompts || []).join(", ");
  container.replaceChildren(
    h("div", { class: "result" },
      h("div", { class: "stage" }, canvas),
      h("div", { class: "side" },
        h("p", { class: "meta" }, h("span", { class: "file", text: fileName }), " · ",
          h("span", { class: "prompts", text: prompts })),
        h("div", { class: "field" }, h("label", { for: "score-threshold" }, "Score threshold "), slider, " ", sliderValue),
        count, list, downloads, error)),
  );
  update();
  return { canvas, instances, update };
}
