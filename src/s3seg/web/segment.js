// The segment page: an image or a video (picked or dropped), prompts as chips, optional exemplar boxes
// drawn on an image (positive or negative), a minimum score; run → upload, task, live events → the
// viewer (an image) or the overlay video and its tracks (a video, with its frames' progress on the way).

import { api, waitForTask } from "./api.js";
import { h, showError } from "./dom.js";
import { followIn, showTracks } from "./tracks.js";
import { showResult } from "./viewer.js";

// A file the browser gives no type for is taken as a video by its name; the server decides by its content.
const VIDEO_NAME = /\.(mp4|m4v|mov|webm|mkv|avi|ogv|ogg|ts|mpe?g)$/i;

export function segmentPage(view, { signal }) {
  const state = { file: null, bitmap: null, video: false, preview: null, prompts: [], boxes: [], drawing: null };

  // ----- image or video: pick or drop
  const fileInput = h("input", { type: "file", id: "image-file", accept: "image/*,video/*", class: "visually-hidden" });
  const fileName = h("span", { class: "file-name" });
  const drop = h(
    "div",
    { class: "drop", id: "drop-zone" },
    h("label", { for: "image-file", class: "button" }, "Choose an image or a video"),
    h("span", { class: "muted" }, " or drop one here "),
    fileName,
    fileInput,
  );
  const canvas = h("canvas", { class: "boxes", id: "box-canvas", role: "img", "aria-label": "No image chosen yet" });
  const ctx = canvas.getContext("2d");
  const preview = h("video", { id: "video-preview", class: "preview", controls: true, muted: true, playsinline: true,
    preload: "auto", hidden: true }); // (a local file: nothing to spare)
  const previewNote = h("p", { class: "muted small", id: "preview-note" });
  // an animated GIF/WebP is an image unless asked: then it is tracked through its frames like a clip
  const animated = h("img", { id: "anim-preview", class: "preview", alt: "", hidden: true });
  const asVideo = h("input", { type: "checkbox", id: "as-video" });
  const asVideoLabel = h("label", { for: "as-video" });
  const asVideoField = h("div", { class: "check", id: "as-video-field", hidden: true }, asVideo, asVideoLabel);
  signal.addEventListener("abort", () => state.preview && URL.revokeObjectURL(state.preview));

  // ----- exemplar boxes
  const positive = h("input", { type: "radio", name: "box-kind", id: "box-pos", value: "pos", checked: true });
  const negative = h("input", { type: "radio", name: "box-kind", id: "box-neg", value: "neg" });
  const boxList = h("ul", { class: "box-list", "aria-label": "Exemplar boxes" });
  const boxes = h(
    "fieldset",
    { class: "box-kind" },
    h("legend", {}, "Exemplar boxes (optional): drag on the image"),
    positive, h("label", { for: "box-pos" }, "positive"),
    negative, h("label", { for: "box-neg" }, "negative"),
    boxList,
  );

  // ----- prompts as chips
  const promptInput = h("input", { type: "text", id: "prompt-input", autocomplete: "off", maxlength: "200",
    placeholder: "e.g. person, dog, red car" });
  const chips = h("ul", { class: "chips", id: "prompt-chips", "aria-label": "Prompts" });
  const addPrompt = () => {
    const text = promptInput.value.trim();
    if (text && !state.prompts.includes(text)) state.prompts.push(text);
    promptInput.value = "";
    renderChips();
  };
  promptInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      addPrompt();
    }
  });
  const project = h("input", { type: "text", id: "project", autocomplete: "off", maxlength: "200" });
  const threshold = h("input", { type: "number", id: "threshold", min: "0", max: "1", step: "0.01", value: "0.3" });
  const run = h("button", { type: "submit", class: "primary", id: "run" }, "Segment");
  const status = h("p", { class: "status", id: "run-status", role: "status", "aria-live": "polite" });
  const error = h("div", { class: "error", id: "run-error", role: "alert" });
  const result = h("section", { class: "viewer", id: "result", "aria-label": "Result" });

  const form = h(
    "form",
    { class: "segment", id: "segment-form", novalidate: true },
    drop,
    h("div", { class: "stage" }, canvas, preview, animated, previewNote),
    h("div", { class: "controls" },
      h("div", { class: "field" },
        h("label", { for: "prompt-input" }, "Prompts"),
        h("div", { class: "row" }, promptInput, h("button", { type: "button", id: "add-prompt", onclick: addPrompt }, "Add")),
        chips),
      asVideoField,
      boxes,
      h("div", { class: "field" }, h("label", { for: "project" }, "Project (optional)"), project),
      h("div", { class: "field" }, h("label", { for: "threshold" }, "Minimum score (0–1)"), threshold),
      run, status, error),
  );
  view.replaceChildren(h("h1", {}, "Segment an image or a video"), form, result);

  function renderChips() {
    chips.replaceChildren(
      ...state.prompts.map((p, i) =>
        h("li", { class: "chip" }, h("span", { class: "chip-text", text: p }),
          h("button", { type: "button", "aria-label": `Remove prompt ${p}`, onclick: () => {
            state.prompts.splice(i, 1);
            renderChips();
          } }, "×")),
      ),
    );
  }

  function renderBoxes() {
    if (!state.bitmap) return;
    ctx.drawImage(state.bitmap, 0, 0);
    const all = state.drawing ? [...state.boxes, state.drawing] : state.boxes;
    ctx.lineWidth = Math.max(2, canvas.width / 300);
    for (const b of all) {
      ctx.setLineDash(b.positive ? [] : [8, 6]);
      ctx.strokeStyle = b.positive ? "#16a34a" : "#dc2626";
      ctx.strokeRect(b.box[0], b.box[1], b.box[2] - b.box[0], b.box[3] - b.box[1]);
    }
    boxList.replaceChildren(
      ...state.boxes.map((b, i) =>
        h("li", {}, `${b.positive ? "positive" : "negative"} ${b.box.map(Math.round).join(", ")} `,
          h("button", { type: "button", "aria-label": `Remove box ${i + 1}`, onclick: () => {
            state.boxes.splice(i, 1);
            renderBoxes();
          } }, "×")),
      ),
    );
  }

  // an image shows on the canvas (boxes are drawn there); a video plays in the preview (no boxes: a video is
  // tracked by its prompts)
  function showKind(video) {
    state.video = video;
    canvas.hidden = video;
    boxes.hidden = video;
    preview.hidden = !video;
    previewNote.textContent = "";
    if (state.preview) URL.revokeObjectURL(state.preview);
    state.preview = null;
    preview.removeAttribute("src");
    animated.removeAttribute("src");
    animated.hidden = true;
    asVideo.checked = false;
    asVideoField.hidden = true;
  }

  asVideo.addEventListener("change", () => {
    const on = asVideo.checked;
    state.video = on;
    canvas.hidden = on;
    boxes.hidden = on;
    animated.hidden = !on;
    if (on && !state.preview) state.preview = URL.createObjectURL(state.file);
    if (on) animated.src = state.preview;
    animated.alt = `${state.file.name}, animated`;
  });

  function chooseVideo(file) {
    showKind(true);
    state.file = file;
    state.bitmap = null;
    state.boxes = [];
    boxList.replaceChildren();
    fileName.textContent = file.name;
    state.preview = URL.createObjectURL(file);
    preview.src = state.preview;
    preview.setAttribute("aria-label", `${file.name}: the clip to track the prompts through`);
  }
  preview.addEventListener("error", () => {
    if (state.video && state.preview) {
      previewNote.textContent = "This browser cannot play this clip; the server reads it anyway (MP4, WebM/MKV, AVI, …).";
    }
  });

  async function choose(file) {
    if (!file) return;
    showError(error, null);
    if (file.type.startsWith("video/") || (!file.type.startsWith("image/") && VIDEO_NAME.test(file.name))) {
      return chooseVideo(file);
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      showError(error, { message: `${file.name} is not an image or a video this browser can read`,
        hint: "use JPEG, PNG or WebP, or an MP4 or WebM clip" });
      return;
    }
    showKind(false);
    state.bitmap = bitmap;
    state.file = file;
    frameCount(file).then((n) => {
      if (state.file !== file || n < 2) return;
      asVideoLabel.textContent = `Track the prompts through its ${n} frames, as a video`;
      asVideoField.hidden = false;
    });
    state.boxes = [];
    fileName.textContent = file.name;
    canvas.width = state.bitmap.width;
    canvas.height = state.bitmap.height;
    canvas.setAttribute("aria-label", `${file.name}: drag to draw exemplar boxes`);
    renderBoxes();
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    fileInput.value = ""; // picking the same file again starts over too
    choose(file);
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });

  // ----- drawing boxes (pointer events: mouse, pen and touch)
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * canvas.width, ((e.clientY - r.top) / r.height) * canvas.height];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.bitmap) return;
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = at(e);
    state.drawing = { start: [x, y], box: [x, y, x, y], positive: positive.checked };
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const [x, y] = at(e);
    const [x0, y0] = state.drawing.start;
    state.drawing.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    renderBoxes();
  });
  canvas.addEventListener("pointerup", () => {
    const drawn = state.drawing;
    state.drawing = null;
    if (drawn && drawn.box[2] - drawn.box[0] >= 4 && drawn.box[3] - drawn.box[1] >= 4) {
      state.boxes.push({ box: drawn.box.map((v) => Math.round(v * 10) / 10), positive: drawn.positive });
    }
    renderBoxes();
  });

  // ----- run
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (promptInput.value.trim()) addPrompt();
    showError(error, null);
    if (!state.file) return showError(error, { message: "choose an image or a video first" });
    if (state.video && !state.prompts.length) {
      return showError(error, { message: "add a prompt (a noun phrase such as “person”): a video is tracked by its prompts" });
    }
    if (!state.prompts.length && !state.boxes.length) {
      return showError(error, { message: "add a prompt (a noun phrase such as “dog”) or draw a box" });
    }
    const minScore = Number(threshold.value);
    if (!(minScore >= 0 && minScore <= 1)) return showError(error, { message: "the minimum score is a number from 0 to 1" });
    run.disabled = true;
    result.replaceChildren();
    try {
      status.textContent = `Uploading ${state.file.name}…`;
      const form = new FormData();
      form.append("file", state.file, state.file.name);
      if (asVideo.checked) form.append("kind", "video");
      const upload = await api("/api/v1/upload", { method: "POST", form, signal });
      const clip = upload.kind === "video"; // the server tells by the content
      const source = clip
        ? { video_id: upload.video_id }
        : { image_id: upload.image_id, boxes: state.boxes.map(({ box, positive: pos }) => ({ box, positive: pos })) };
      const started = await api("/api/v1/segment", {
        method: "POST",
        signal,
        json: { ...source, text_prompts: state.prompts, threshold: minScore, project: project.value.trim() || null },
      });
      const words = (now) => (now === "processing" ? "Segmenting…" : "Queued…");
      const task = await waitForTask(started.task_id, followIn(status, started, words), signal);
      if (task.status !== "done") throw { message: `the task failed: ${task.error || task.status}` };
      const link = h("a", { href: `/results/${task.task_id}`, "data-nav": true }, "Open the result page");
      const n = task.labels.length;
      if (clip) {
        await showTracks(result, task, { name: state.file.name, signal });
        const frames = task.metadata?.frames ?? task.frames_total;
        status.replaceChildren(`Done: ${n} track${n === 1 ? "" : "s"} through ${frames} frame${frames === 1 ? "" : "s"}. `, link);
      } else {
        await showResult(result, task, { image: state.file, name: state.file.name, signal });
        status.replaceChildren(`Done: ${n} instance${n === 1 ? "" : "s"}. `, link);
      }
    } catch (err) {
      if (signal.aborted) return;
      status.textContent = "";
      showError(error, err);
    } finally {
      run.disabled = false;
    }
  });
}

/** How many frames an animated GIF/WebP has (0: a still image, or this browser cannot tell). */
async function frameCount(file) {
  if (!/^image\/(gif|webp)$/.test(file.type) || typeof ImageDecoder === "undefined") return 0;
  let decoder;
  try {
    decoder = new ImageDecoder({ data: await file.arrayBuffer(), type: file.type });
    await decoder.tracks.ready;
    await decoder.completed; // (the frame count is final once all the data is read)
    const track = decoder.tracks.selectedTrack;
    return track?.animated ? track.frameCount : 0;
  } catch {
    return 0;
  } finally {
    decoder?.close();
  }
}
