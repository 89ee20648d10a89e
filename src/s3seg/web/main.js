// The page's router: one view at a time in <main>, chosen by the path; links marked data-nav change
// the view without reloading. Before any view, local mode asks for the API key and Supabase mode for
// a sign-in; a 401 from any route brings the form back.

import { loadConfig, mode, signedIn, forgetApiKey, signOut } from "./api.js";
import { h } from "./dom.js";
import { detailPage } from "./detail.js";
import { galleryPage } from "./gallery.js";
import { keyForm, profilePage, signInForm, explain } from "./profile.js";
import { segmentPage } from "./segment.js";

const ROUTES = [
  [/^\/(?:segment)?$/, "segment", segmentPage],
  [/^\/gallery$/, "gallery", galleryPage],
  [/^\/profile$/, "profile", profilePage],
  [/^\/results\/([^/]+)$/, "result", detailPage],
];

const view = document.getElementById("view");
let running = null;

function door(message) {
  const done = () => render();
  if (mode() === "api-key") keyForm(view, { message, done });
  else signInForm(view, { message, done });
}

async function render() {
  running?.abort();
  running = new AbortController();
  const path = location.pathname;
  const route = ROUTES.find(([re]) => re.test(path));
  document.querySelectorAll("nav a[data-page]").forEach((a) => {
    if (a.dataset.page === route?.[1]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  document.getElementById("nav-profile").textContent = mode() === "supabase" && !signedIn() ? "Sign in" : "Profile";
  if (!signedIn()) return door();
  if (!route) {
    view.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/", "data-nav": true }, "Segment an image")));
    return;
  }
  const [re, , page] = route;
  const params = re.exec(path).slice(1).map(decodeURIComponent);
  await page(view, { params, signal: running.signal, leave: () => navigate("/") });
}

export function navigate(url) {
  history.pushState(null, "", url);
  render();
  view.focus({ preventScroll: true });
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => render());
window.addEventListener("s3seg:unauthorized", (e) => {
  // the key or session stopped working (changed key, expired session): ask again
  if (mode() === "api-key") forgetApiKey();
  else if (mode() === "supabase") signOut();
  running?.abort();
  door(explain(e.detail));
});

loadConfig().then(render, () => {
  view.replaceChildren(h("p", { class: "error", role: "alert" }, "Cannot reach the s3seg server."));
});
