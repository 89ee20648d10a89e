// Building DOM nodes. Text always goes in as text (a text node or textContent), never as HTML:
// prompts, file names and server messages can contain anything, "<img src=x onerror=…>" included.

/**
 * h("button", {class: "primary", onclick: run}, "Run") → <button class="primary">Run</button>
 * Attributes: "class", "text" (textContent), "on<event>" (listener), DOM properties given as
 * non-strings (checked, disabled, value), anything else as an attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = String(value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (typeof value !== "string" && name in el) el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
  return el;
}

/** Show a message in an alert region (role="alert"), or clear it with null. */
export function showError(region, error) {
  region.replaceChildren();
  if (!error) return;
  region.append(h("strong", {}, error.message || String(error)));
  if (error.hint) region.append(h("span", { class: "hint" }, " " + error.hint));
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}

/** Save a Blob under a file name (a temporary object URL and an <a download>). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, class: "hidden" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}
